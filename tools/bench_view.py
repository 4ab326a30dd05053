"""Time `semicd view` on the demo scene and measure the folder it writes; prints one JSON object.

Two ways to get the scene: `--demo DIR` takes the outputs of `semicd demo --out DIR` (before, after, truth and the
model's change map and polygons); without it the demo's synthetic scene is written at `--size` and its truth stands
in for the change map (written and vectorised by the same code as `predict`), so no training is needed. The view is
built `--repeat` times as the user runs it (`python -m semicd view ...` in a new process, Python start-up and
imports included) and once more in-process for the build alone (`build_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio


def stand_in_outputs(folder: Path, size: int, seed: int) -> dict[str, Path]:
    """The demo scene, with its truth written as a change map (COG) and polygons, the way `predict` writes them."""
    from semicd.demo.scene import write_scene
    from semiseg.geo.vectorize import vectorize_classes
    from semiseg.geo.writer import StreamingGeoTiff, class_colormap

    scene = write_scene(folder, size=size, seed=seed)
    with rasterio.open(scene.truth) as ds:
        truth, geo = ds.read(1), dict(width=ds.width, height=ds.height, crs=ds.crs, transform=ds.transform)
    change = folder / "change.tif"
    with StreamingGeoTiff(
        change, tags={"classes": "unchanged,changed", "checkpoint": "truth (stand-in)"}, **geo
    ) as out:
        out.write_rows(0, (truth > 0).astype(np.uint8))
        out.finish(class_colormap(2))
        out.publish()
    polygons = folder / "change.gpkg"
    vectorize_classes(change, polygons, driver="GPKG", layer="change", class_names=["unchanged", "changed"])
    return {
        "before": scene.before,
        "after": scene.after,
        "truth": scene.truth,
        "change": change,
        "polygons": polygons,
    }


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--demo", type=Path, help="a `semicd demo --out` folder (default: a stand-in, see above)"
    )
    parser.add_argument(
        "--size", type=int, default=2048, help="stand-in scene side in px (the demo's default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="stand-in scene seed")
    parser.add_argument("--repeat", type=int, default=3, help="command runs to time (the median is reported)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-view-"))
    try:
        if args.demo:
            d = args.demo
            paths = {k: d / f"{k}.tif" for k in ("before", "after", "truth", "change")} | {
                "polygons": d / "change.gpkg"
            }
            source = f"semicd demo outputs in {d}"
        else:
            paths = stand_in_outputs(work, args.size, args.seed)
            source = f"demo scene {args.size} px, seed {args.seed}; its truth as the change map"
        command = [
            sys.executable, "-m", "semicd", "view", "--before", str(paths["before"]), "--after", str(paths["after"]),
            "--change", str(paths["change"]), "--polygons", str(paths["polygons"]), "--truth", str(paths["truth"]),
            "--out", str(work / "view"),
        ]  # fmt: skip
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        from semiseg.view import build_view

        summary = build_view(
            [paths["before"], paths["after"]], paths["change"], work / "view", polygons=paths["polygons"],
            truth=paths["truth"], progress=False,
        )  # fmt: skip
        with rasterio.open(paths["before"]) as ds:
            size = f"{ds.width} x {ds.height}"
        result = {
            "scene": source,
            "pixels": size,
            "command_seconds_median": round(float(np.median(walls)), 2),
            "command_seconds": [round(w, 2) for w in walls],
            "build_seconds": summary["seconds"],
            "folder_mb": round(folder_megabytes(work / "view"), 2),
            "index_html_mb": round((work / "view" / "index.html").stat().st_size / 1e6, 2),
            "tiles": summary["tiles_written"],
            "levels": summary["levels"],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
