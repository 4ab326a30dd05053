"""Predict many scenes with one loaded model: a CSV of inputs in, one folder of outputs and one summary table out.

The CSV has one column per date of the task (`before`, `after` for change detection; `image` for segmentation)
and an optional `name` (default: the first raster's file stem). Relative paths are read from the CSV's folder.
Each scene `<name>` gives `<out_dir>/<name>.tif` (the class map) plus, when asked, `<name>.gpkg`/`.geojson`
(polygons) and `<name>.probs.tif`, then `<name>.json`: the record of what was predicted, written last, so it is
the mark of a complete scene. A re-run skips every scene whose record is there, made with the same checkpoint,
the same inputs (path, size, modification time) and the same options: an interrupted batch resumes where it
stopped. A record that differs in any of these makes the scene a failure: it is never silently skipped nor
overwritten.

A scene that fails (an unreadable file, grids that differ, a write error) is reported and the rest goes on; the
summary (`summary.csv`, and `summary.geojson` with each scene's footprint in WGS 84) lists every scene with its
status, its changed (or per-class) area and, for a failure, the reason.

Under `torchrun --nproc-per-node N` (one or several machines sharing the output folder) rank r predicts the
scenes r, r + N, r + 2N, ... of the list; each scene is predicted exactly as one process would, so the rasters
are byte-identical to a one-process run. Each rank leaves its rows in `.rows-<rank>.json` when done and rank 0
writes the summary from them, waiting as long as the slowest rank takes (no collective timeout).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegError, one_line
from semiseg.io import write_text_atomic

SUMMARY_CSV = "summary.csv"
SUMMARY_GEOJSON = "summary.geojson"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESERVED_NAMES = ("summary",)  # summary.csv and summary.geojson are the batch's own files


@dataclass(frozen=True)
class Job:
    """One scene of a batch: its output name and its rasters (one per date, in the task's order)."""

    name: str
    rasters: tuple[str, ...]


def read_jobs(path: str | os.PathLike, columns: Sequence[str]) -> list[Job]:
    """The scenes of a CSV with the given raster `columns` and an optional `name` column."""
    path = Path(path)
    if not path.is_file():
        raise SemisegError(f"CSV {path} does not exist: give a file with the columns {', '.join(columns)}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
        header = [h.strip() for h in (rows[0].keys() if rows else [])]
    missing = [c for c in columns if c not in header]
    if not rows or missing:
        raise SemisegError(
            f"{path} needs a header with the columns {', '.join(columns)} (and optionally name) and one row per "
            f"scene; {'it has no rows' if not rows else 'missing: ' + ', '.join(missing)}"
        )
    jobs, seen = [], {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        rasters = tuple(str(_resolve(path.parent, row[c])) for c in columns if row[c])
        if len(rasters) != len(columns):
            raise SemisegError(f"{path} line {line}: every scene needs {', '.join(columns)}")
        name = row.get("name") or Path(rasters[0]).stem
        if not SAFE_NAME.match(name):
            raise SemisegError(
                f"{path} line {line}: name {name!r} must be a plain file name (letters, digits, . _ -)"
            )
        if name.lower().endswith(".probs") or name.lower() in RESERVED_NAMES:
            raise SemisegError(
                f"{path} line {line}: name {name!r} would overwrite another output (<name>.probs.tif, "
                "summary.csv/.geojson): no name may end in .probs or be 'summary'; give another (a `name` column)"
            )
        key = name.lower()  # case-insensitive file systems (macOS, Windows) would merge X.tif and x.tif
        if key in seen:
            raise SemisegError(
                f"{path} line {line}: name {name!r} is also on line {seen[key]} (names are compared ignoring case); "
                "give each scene its own name (a `name` column)"
            )
        seen[key] = line
        jobs.append(Job(name, rasters))
    return jobs


def _resolve(folder: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


@dataclass(frozen=True)
class BatchOutputs:
    """What each scene writes besides its class map."""

    polygons: str | None = "gpkg"  # gpkg, geojson or None
    probs: bool = False

    def paths(self, out_dir: Path, name: str) -> dict[str, Path | None]:
        return {
            "out": out_dir / f"{name}.tif",
            "probs_path": out_dir / f"{name}.probs.tif" if self.probs else None,
            "polygons_path": out_dir / f"{name}.{self.polygons}" if self.polygons else None,
        }


def record_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def predict_jobs(
    predict: Callable[..., dict[str, Any]],
    jobs: Sequence[Job],
    out_dir: str | os.PathLike,
    checkpoint_sha256: str,
    outputs: BatchOutputs = BatchOutputs(),
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Predict this rank's share of `jobs` into `out_dir`; returns one row per scene of that share.

    `predict(*rasters, out=..., probs_path=..., polygons_path=...)` predicts one scene and returns its summary
    (`semiseg.api.predict` with the model and options bound). `options` are those that shape the outputs
    (threshold, window, bands, stretch...): they are recorded with the checkpoint and each input's resolved path,
    size and modification time. A scene whose record shows it complete with the same checkpoint, inputs and options
    is skipped; one whose record differs in any of them is a failure (never silently skipped nor overwritten).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = json.loads(json.dumps(options or {}, default=str))  # as a record reads back (lists, strings)
    mine = [(i, job) for i, job in enumerate(jobs) if i % world_size == rank]
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    rows = []
    for index, job in tqdm(mine, desc="scenes", unit="scene", disable=not show):
        start = time.perf_counter()
        paths = outputs.paths(out_dir, job.name)
        row: dict[str, Any] = {"index": index, "name": job.name, "rasters": list(job.rasters)}
        try:
            inputs = input_identity(job.rasters)
            record = _complete_record(out_dir, job, paths, checkpoint_sha256, inputs, options)
            if record is not None:
                row.update(status="skipped", summary=record["summary"], footprint=record["footprint"])
            else:
                summary = predict(*job.rasters, out=paths["out"], probs_path=paths["probs_path"],
                                  polygons_path=paths["polygons_path"])  # fmt: skip
                footprint = footprint_wgs84(paths["out"])
                record = {"name": job.name, "rasters": list(job.rasters), "checkpoint_sha256": checkpoint_sha256,
                          "inputs": inputs, "options": options, "rank": rank, "summary": summary,
                          "footprint": footprint}  # fmt: skip
                write_text_atomic(record_path(out_dir, job.name), json.dumps(record, indent=2, default=str))
                row.update(status="done", summary=summary, footprint=footprint)
        except SemisegError as err:
            if getattr(
                err, "exit_code", None
            ):  # a clean stop on a signal: stop the batch, not only this scene
                raise
            row.update(status="failed", error=one_line(err))
        except Exception as err:  # noqa: BLE001 - one bad scene must not stop the batch; its reason is reported
            row.update(status="failed", error=f"{type(err).__name__}: {one_line(err)}")
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows


def input_identity(rasters: Sequence[str]) -> list[dict[str, Any]]:
    """Each input's resolved path, size and modification time: what tells a changed input from the one predicted
    (a missing input is left to the prediction to report)."""
    identity = []
    for raster in rasters:
        path = Path(raster).resolve()
        try:
            st = path.stat()
            identity.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            identity.append({"path": str(path), "size": None, "mtime_ns": None})
    return identity


def recorded_options(options: dict) -> dict:
    """A record's options in today's names: records written before `--precision` say `amp` (none = fp32), and a
    scene predicted then in the same arithmetic is the same scene, not one made "with other options"."""
    if "amp" not in options:
        return options
    options = dict(options)
    amp = options.pop("amp")
    options.setdefault("precision", "fp32" if amp in (None, "none") else amp)
    return options


def _complete_record(
    out_dir: Path, job: Job, paths: dict, checkpoint_sha256: str, inputs: list[dict], options: dict
) -> dict | None:
    """The record of a scene already predicted completely with this checkpoint, inputs and options, else None
    (nothing there yet); a record that differs in any of them is an error."""
    path = record_path(out_dir, job.name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: predict again
    if record.get("checkpoint_sha256") != checkpoint_sha256:
        raise SemisegError(
            f"{path} was made with another checkpoint; delete {job.name}.* or choose another --out-dir"
        )
    if record.get("inputs") != inputs:
        changed = [
            Path(now["path"]).name
            for now, then in itertools.zip_longest(inputs, record.get("inputs") or [], fillvalue={})
            if now != then
        ]
        raise SemisegError(
            f"{path} was made from other inputs ({', '.join(n for n in changed if n) or 'not recorded'}: another "
            f"file, size or modification time); delete {job.name}.* or choose another --out-dir"
        )
    then = recorded_options(record.get("options") or {})
    if then != options:
        changed = sorted(k for k in {*options, *then} if options.get(k) != then.get(k))
        raise SemisegError(
            f"{path} was made with other options ({', '.join(f'{k} {then.get(k)!r} now {options.get(k)!r}' for k in changed)}); "
            f"delete {job.name}.* or choose another --out-dir"
        )
    if any(p is not None and not Path(p).is_file() for p in paths.values()):
        return None  # an output asked for now is not there: predict again
    return record


def footprint_wgs84(raster: str | os.PathLike) -> dict | None:
    """The raster's outline as a GeoJSON polygon in WGS 84 (None without a CRS)."""
    import rasterio
    from rasterio.warp import transform_geom

    with rasterio.open(raster) as src:
        if src.crs is None:
            return None
        left, bottom, right, top = src.bounds
        crs = src.crs
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    geom = {"type": "Polygon", "coordinates": [ring]}
    return transform_geom(crs, "EPSG:4326", geom, antimeridian_cutting=True, precision=7)


SUMMARY_FIELDS = (
    "name", "status", "rasters", "out", "valid_pixels", "changed_pixels", "changed_area_m2", "changed_percent",
    "area_m2_per_class", "seconds", "error",
)  # fmt: skip


def summary_row(row: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One flat row of the summary table."""
    s = row.get("summary") or {}
    flat = {
        "name": row["name"],
        "status": row["status"],
        "rasters": " ".join(row["rasters"]),
        "out": str(out_dir / f"{row['name']}.tif") if row["status"] != "failed" else "",
        "valid_pixels": s.get("valid_pixels", ""),
        "changed_pixels": s.get("changed_pixels", ""),
        "changed_area_m2": s.get("changed_area_m2", ""),
        "changed_percent": s.get("changed_percent", ""),
        "area_m2_per_class": json.dumps(s["area_m2_per_class"]) if "area_m2_per_class" in s else "",
        "seconds": round(row.get("seconds", 0.0), 3),
        "error": row.get("error", ""),
    }
    return {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in flat.items()}


def write_summary(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`summary.csv` and `summary.geojson` (footprints in WGS 84, the table's columns as properties)."""
    import io

    out_dir = Path(out_dir)
    rows = sorted(rows, key=lambda r: r["index"])
    flat = [summary_row(r, out_dir) for r in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    csv_path = write_text_atomic(out_dir / SUMMARY_CSV, text.getvalue())
    features = [
        {"type": "Feature", "geometry": r.get("footprint"), "properties": f} for r, f in zip(rows, flat)
    ]
    collection = {"type": "FeatureCollection", "features": features}
    geojson_path = write_text_atomic(out_dir / SUMMARY_GEOJSON, json.dumps(collection, indent=1))
    return csv_path, geojson_path


def run_token(world_size: int) -> str:
    """One token shared by every rank of this run (rank 0's, broadcast once at the start while every rank is
    there), marking this run's row files apart from a previous run's."""
    import uuid

    token = [uuid.uuid4().hex]
    if world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(token, src=0)
    return token[0]


def rows_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f".rows-{rank}.json"


def collect_rows(
    rows: list[dict[str, Any]], out_dir: str | os.PathLike, rank: int, world_size: int, token: str,
    poll_s: float = 0.5,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """Every rank's rows on rank 0 (None on the others; `rows` as they are in one process).

    No collective call: each rank writes its rows to `<out_dir>/.rows-<rank>.json` (atomically, tagged with the
    run's `token`) when it is done, and rank 0 waits for every rank's file, however long the others take (a
    collective would time out after the process group's 10 or 30 minutes when shares take unequal times, e.g. a
    resume where one rank only skips). A rank that dies stops the run through torchrun, not through this wait.
    """
    if world_size == 1:
        return rows
    out_dir = Path(out_dir)
    write_text_atomic(rows_path(out_dir, rank), json.dumps({"token": token, "rows": rows}, default=str))
    if rank != 0:
        return None
    parts: dict[int, list] = {}
    told = False
    while len(parts) < world_size:
        for r in range(world_size):
            if r not in parts:
                try:
                    part = json.loads(rows_path(out_dir, r).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # not written yet (written atomically: never half)
                if part.get("token") == token:
                    parts[r] = part["rows"]
        if len(parts) < world_size:
            if not told:
                waiting = ", ".join(str(r) for r in range(world_size) if r not in parts)
                print(f"rank 0: waiting for rank(s) {waiting} to finish their scenes", file=sys.stderr)
                told = True
            time.sleep(poll_s)
    for r in range(world_size):
        rows_path(out_dir, r).unlink(missing_ok=True)
    return [row for r in range(world_size) for row in parts[r]]


def batch_result(rows: Sequence[dict[str, Any]], csv_path: Path, geojson_path: Path) -> dict[str, Any]:
    """The one-screen result of a batch: counts, the summary files, and each failure in one line."""
    statuses = [r["status"] for r in rows]
    return {
        "scenes": len(rows),
        "done": statuses.count("done"),
        "skipped": statuses.count("skipped"),
        "failed": statuses.count("failed"),
        "summary_csv": str(csv_path),
        "summary_geojson": str(geojson_path),
        "failures": {
            r["name"]: r["error"] for r in sorted(rows, key=lambda r: r["index"]) if r["status"] == "failed"
        },
    }
