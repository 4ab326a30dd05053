"""Tile-and-predict throughput and memory on synthetic GeoTIFF scenes, beside the pure model time.

For each scene size a child process (fresh peak RSS) writes a synthetic before/after pair (tiled, deflate), runs
`semiseg.geo.predict.predict_raster` end to end (reading in DataLoader workers, blending, streaming the class map and
probabilities to disk), then times the model alone on the same number of windows of random data, batch by batch.
The difference is what reading, blending and writing add beyond the model: `outside_model_fraction` = (end to end
- model) / end to end, 0 when they are fully hidden behind the model (it can come out slightly negative: the two
runs are timed apart, on a shared machine). `cpu_utilisation` is the CPU time of the process and its reader
workers (`os.times`, children included once they are joined) over the wall time and the usable cores: how much of
the machine the pipeline keeps busy. `--sync` blends and writes in the main thread (`writer_thread=False`), the
pipeline before the writer thread, for a before/after comparison. Prints one JSON line per size.

    python tools/bench_predict.py --sizes 2048 8192 --encoder small --device cpu [--precision bf16] [--sync]

Many-pairs mode (`--pairs N`): N synthetic pairs of `--sizes` px predicted as one batch (`semiseg.batch`, the code
of `semicd predict --pairs`: one model load, then per pair open, check, predict, write the COG map and its polygons,
record), after one warm-up pair timed apart (`first_pair_s`: first kernels, lazy imports), against the model alone
on the same windows; the per-pair overhead is the difference divided by N. With
`--ranks R` the same batch also runs as `semicd predict --pairs` in one process and under
`torchrun --nproc-per-node R`, end to end (start-up and model load included), for the speed-up.

    python tools/bench_predict.py --pairs 4 --sizes 1024 --encoder small --workers 0 --ranks 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import environment, peak_rss_mb, resolve_device, rss_mb, run_workers, sync  # noqa: E402


def write_scene(path: Path, size: int, seed: int, width: int | None = None) -> None:
    """A random RGB scene `size` rows high and `width` (default `size`) wide, written in 512-row strips (never
    whole in memory)."""
    width = width or size
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=width, height=size, count=3, dtype="uint8", crs="EPSG:32631",
                   transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 512):
            h = min(512, size - row)
            ds.write(rng.integers(0, 256, (3, h, width), dtype=np.uint8), window=Window(0, row, width, h))


def bench_one(args: argparse.Namespace) -> dict:
    from semicd.task import TASK
    from semiseg.geo.pair import open_scene
    from semiseg.geo.predict import predict_raster
    from semiseg.geo.windows import make_grid
    from semiseg.models.segmentor import build_model
    from semiseg.predict import make_predictor

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = build_model(args.encoder, TASK.nclass, TASK.fusion)
    predictor = make_predictor(model, device, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        width = args.width or args.size
        write_scene(tmp / "a.tif", args.size, 0, width)
        write_scene(tmp / "b.tif", args.size, 1, width)
        base_rss = rss_mb()
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        summary = predict_raster(
            open_scene([tmp / "a.tif", tmp / "b.tif"]), predictor, tmp / "change.tif", window=args.window,
            overlap=args.overlap, batch_size=args.batch_size, num_workers=args.workers,
            probs_path=tmp / "probs.tif", progress=False, writer_thread=not args.sync,
        )  # fmt: skip
        total = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_before
        peak = peak_rss_mb()
    n_windows = len(make_grid(args.size, width, args.window, args.overlap, model.patch_size).tiles)
    model_s = model_only_seconds(predictor, n_windows, args.window, args.batch_size, device)
    mp = args.size * width / 1e6
    cores = usable_cores()
    return {
        "bench": "predict", "size": args.size, "width": width, "encoder": args.encoder, "window": args.window,
        "overlap": args.overlap, "batch_size": args.batch_size, "workers": args.workers,
        "precision": predictor.precision, "writer_thread": not args.sync, "windows": n_windows,
        "total_s": round(total, 3), "model_s": round(model_s, 3),
        "outside_model_fraction": round((total - model_s) / total, 3), "megapixels": round(mp, 2),
        "mpx_per_s": round(mp / total, 3), "peak_rss_mb": round(peak, 1),
        "rss_before_predict_mb": round(base_rss, 1), "cpu_s": round(cpu, 3), "cores": cores,
        "cpu_utilisation": round(cpu / total / cores, 3), "summary_mp_per_s": summary.get("megapixels_per_second"),
        **environment(device),
    }  # fmt: skip


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have been waited for (DataLoader
    workers are, when the predict call shuts them down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity, e.g. a Slurm allocation), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def write_pairs(folder: Path, n: int, size: int) -> Path:
    """`n` before/after pairs and their pairs.csv."""
    lines = []
    for i in range(n):
        write_scene(folder / f"a{i}.tif", size, 2 * i)
        write_scene(folder / f"b{i}.tif", size, 2 * i + 1)
        lines.append(f"a{i}.tif,b{i}.tif,pair{i}\n")
    (folder / "pairs.csv").write_text("before,after,name\n" + "".join(lines))
    return folder / "pairs.csv"


def model_only_seconds(predictor, n_windows: int, window: int, batch_size: int, device) -> float:
    """The model alone on `n_windows` windows of random data, batch by batch (after one warm-up batch)."""
    batch = tuple(torch.randint(0, 256, (batch_size, 3, window, window), dtype=torch.uint8) for _ in range(2))
    predictor(batch)
    sync(device)
    t0 = time.perf_counter()
    for done in range(0, n_windows, batch_size):
        predictor(tuple(x[: min(batch_size, n_windows - done)] for x in batch))
    sync(device)
    return time.perf_counter() - t0


def bench_pairs(args: argparse.Namespace) -> dict:
    """One batch of `args.pairs` pairs in this process, against the model alone on the same windows."""
    from functools import partial

    from semicd.task import TASK
    from semiseg.api import predict
    from semiseg.batch import BatchOutputs, predict_jobs, read_jobs
    from semiseg.geo.windows import make_grid
    from semiseg.models.checkpoints import export_model, load_model
    from semiseg.models.segmentor import build_model
    from semiseg.predict import make_predictor

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = read_jobs(write_pairs(tmp, args.pairs + 1, args.size), ("before", "after"))
        checkpoint = export_model(
            build_model(args.encoder, TASK.nclass, TASK.fusion), tmp / "model", {"task": TASK.name}
        )
        model = load_model(checkpoint)
        one = partial(predict, model, progress=False, device=device, precision=args.precision, window=args.window,
                      overlap=args.overlap, batch_size=args.batch_size, num_workers=args.workers)  # fmt: skip
        # The first pair pays one-off costs (first forward of each kernel, lazy imports of the vector stack):
        # timed apart, so the per-pair figure is what every further pair of an archive costs.
        start = time.perf_counter()
        rows = predict_jobs(
            one, jobs[:1], tmp / "out", model.meta["source_sha256"], BatchOutputs("gpkg"), progress=False
        )
        first = time.perf_counter() - start
        start = time.perf_counter()
        rows += predict_jobs(
            one, jobs[1:], tmp / "out", model.meta["source_sha256"], BatchOutputs("gpkg"), progress=False
        )
        total = time.perf_counter() - start
        failed = [r["error"] for r in rows if r["status"] != "done"]
        if failed:
            raise SystemExit(f"the batch failed: {failed[0]}")
    n_windows = args.pairs * len(
        make_grid(args.size, args.size, args.window, args.overlap, model.patch_size).tiles
    )
    model_s = model_only_seconds(
        make_predictor(model, device, args.precision), n_windows, args.window, args.batch_size, device
    )
    return {
        "bench": "predict_pairs", "pairs": args.pairs, "size": args.size, "encoder": args.encoder,
        "window": args.window, "overlap": args.overlap, "batch_size": args.batch_size, "workers": args.workers,
        "windows": n_windows, "total_s": round(total, 2), "model_only_s": round(model_s, 2),
        "overhead_s_per_pair": round((total - model_s) / args.pairs, 3), "first_pair_s": round(first, 2),
        "overhead_percent": round(100 * (total - model_s) / model_s, 1), **environment(device),
    }  # fmt: skip


def bench_ranks(args: argparse.Namespace) -> dict:
    """`semicd predict --pairs` end to end in one process and under torchrun with `args.ranks` processes."""
    import subprocess

    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = write_pairs(tmp, args.pairs, args.size)
        checkpoint = export_model(
            build_model(args.encoder, 2, "absdiff"), tmp / "model", {"task": "change_detection"}
        )
        command = ["-m", "semicd", "predict", "--pairs", str(pairs), "--checkpoint", str(checkpoint),
                   "--window", str(args.window), "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers), "--device", args.device]  # fmt: skip
        launchers = {
            "one_process_s": [sys.executable],
            f"torchrun_{args.ranks}_s": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node", str(args.ranks)],
        }  # fmt: skip
        seconds = {}
        for key, launcher in launchers.items():
            start = time.perf_counter()
            run = subprocess.run([*launcher, *command, "--out-dir", str(tmp / key)], env=env, capture_output=True,
                                 text=True)  # fmt: skip
            seconds[key] = round(time.perf_counter() - start, 2)
            if run.returncode != 0:
                raise SystemExit(f"{key} failed: {run.stderr.strip().splitlines()[-1:]}")
    one, many = seconds.values()
    return {"bench": "predict_ranks", "pairs": args.pairs, "size": args.size, "encoder": args.encoder,
            "ranks": args.ranks, **seconds, "speedup": round(one / many, 2), "cpus": os.cpu_count()}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[2048, 8192],
        help="scene sides in px (scene heights with --width)",
    )  # fmt: skip
    p.add_argument(
        "--width", type=int, default=None,
        help="one scene width for every size: the sizes are then heights, which shows whether memory follows "
        "the height (it should not: only the window strip, as wide as the scene, is held)",
    )  # fmt: skip
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--encoder", default="small")
    p.add_argument("--window", type=int, default=504)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="the model's arithmetic"
    )
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="alias of --precision (none = fp32)")
    p.add_argument(
        "--sync", action="store_true", help="blend and write in the main thread (no writer thread)"
    )
    p.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    p.add_argument("--pairs", type=int, default=0, help="many-pairs mode: this many pairs of each size")
    p.add_argument(
        "--ranks", type=int, default=0, help="many-pairs mode: also time torchrun with this many ranks"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.amp is not None:
        args.precision = "fp32" if args.amp == "none" else args.amp
    if args.worker:
        print(json.dumps(bench_pairs(args) if args.pairs else bench_one(args)))
        return
    if args.pairs and args.ranks:
        for size in args.sizes:
            args.size = size
            print(json.dumps(bench_ranks(args)))
    common = ["--pairs", str(args.pairs), "--encoder", args.encoder, "--window", str(args.window), "--overlap", str(args.overlap),
              "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
              "--precision", args.precision, "--threads", str(args.threads)] + (["--sync"] if args.sync else []) \
        + (["--width", str(args.width)] if args.width else [])  # fmt: skip
    for result in run_workers(Path(__file__), [["--size", str(s)] for s in args.sizes], common):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
