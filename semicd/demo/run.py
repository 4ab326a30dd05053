"""`semicd demo`: the whole job on a synthetic scene, with no download: scene -> train -> change map -> scores.

Why it exists: a new user should see, in two minutes on a laptop, every stage a real project goes through, on
the same code paths: the `geotiff_pair` dataset windows a before/after GeoTIFF pair and a label raster, the
normal trainer runs UniMatch V2 (most windows unlabeled), and `predict_raster` (the body of `semicd predict`)
tiles the whole scene from `best.pt`, writing a GeoTIFF change map and polygons. Because the scene is
synthetic, the result is scored against an exact truth, next to the trivial "nothing changed" answer.

Choices (a tiny encoder from random init on a CPU, so these are ours, not the paper's):
- DINOv2 `tiny` (ours: width 48, 4 blocks), no pretrained weights (none exist for it; and no download).
- `teacher: student`, the official change-detection setting; both student and EMA are evaluated and the better
  one lands in `best.pt`.
- A from-scratch encoder needs a far larger learning rate than the paper's 5e-6 for pretrained DINOv2:
  lr 1e-3 for every parameter (lr_multi 1). Confidence threshold 0.95 as in the paper: with 97 % of pixels
  unchanged, a lower threshold mostly feeds back confident "unchanged" pseudo-labels.
- 112 px windows cropped to 84 px (6 x 6 tokens), batch 8; 10 % of windows labeled, 15 % val, the rest
  unlabeled, given as area polygon files (`out/areas/*.gpkg`) as a user would mark annotated areas.
- A fixed iteration budget (`iters`, default 480: about 1.5 minutes on two idle CPU cores), not a time budget: the
  result must not depend on how busy the machine is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image, ImageDraw
from rasterio.windows import Window

from semicd.demo.scene import write_scene
from semicd.task import TASK
from semiseg.config import Config, config_from_dict
from semiseg.data.build import build
from semiseg.errors import SemisegError
from semiseg.metrics import change_scores
from semiseg.models.checkpoints import load_model

WINDOW = 112  # training windows (px) laid over the scene
CROP = 84  # random crop inside a window (multiple of 14)
BATCH = 8
PREVIEW_WIDTH = 1500
EVALS = 4  # evaluations on the val windows over the run
LABELED_WITH_CHANGE = 0.75  # share of labeled windows chosen among windows that hold change


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def demo_config(
    scene_dir: Path,
    epochs: int = 1,
    max_iters: int | None = None,
    eval_every: int = 1,
    extra_labeled: Path | None = None,
) -> Config:
    """The demo's training config: DINOv2-tiny + UniMatch V2 on windows of the synthetic pair (`extra_labeled`:
    windows labelled in a later round, added to the labeled area)."""
    raw = {
        "task": TASK.name,
        "data": {
            "dataset": "geotiff_pair",
            "before": str(scene_dir / "before.tif"),
            "after": str(scene_dir / "after.tif"),
            "label": str(scene_dir / "truth.tif"),
            "nclass": 2,
            "window": WINDOW,
            "crop_size": CROP,
            "batch_size": BATCH,
            "workers": 0,  # windows are cheap to read; worker processes would only compete for the 2 cores
            "areas": {
                "labeled": [str(scene_dir / "areas" / "labeled.gpkg")]
                + ([str(extra_labeled)] if extra_labeled else []),
                "val": str(scene_dir / "areas" / "val.gpkg"),
            },
            "min_valid": 0.5,
            "ratio_range": [0.8, 1.2],
            "vflip": 0.5,
            "rot90": True,
        },
        "model": {"encoder": "tiny", "weights": None},
        "method": {"name": "unimatch_v2", "teacher": "student", "conf_thresh": 0.95},
        "optim": {"lr": 1.0e-3, "lr_multi": 1.0},
        "train": {
            "epochs": epochs,
            "max_iters": max_iters,
            "eval_every": eval_every,
            "log_every": 10,
            "seed": 0,
        },
        "eval": {"mode": "original", "model": "both"},
    }
    return config_from_dict(raw)


def write_areas(scene_dir: Path, seed: int, fractions: tuple[float, float] = (0.1, 0.15)) -> dict[str, int]:
    """Labeled and val areas as polygon files (one square per chosen training window), the way a user marks
    the parts of a scene they annotated; every other window is unlabeled. Returns window counts per area."""
    import geopandas as gpd

    from semicd.data.geotiff_pair import window_grid
    from semiseg.geo.vectors import window_box

    with rasterio.open(scene_dir / "before.tif") as ds:
        height, width, transform, crs = ds.height, ds.width, ds.transform, ds.crs
    boxes = window_grid(height, width, WINDOW)
    rng = np.random.default_rng([seed, 5])
    order = rng.permutation(len(boxes))
    n_labeled = max(1, int(fractions[0] * len(boxes)))
    n_val = max(1, int(fractions[1] * len(boxes)))
    val, rest = order[:n_val], order[n_val:]
    # An annotator labels where change is: most labeled windows are drawn among those holding some change.
    with rasterio.open(scene_dir / "truth.tif") as ds:
        has_change = np.array([ds.read(1, window=Window(*boxes[i])).any() for i in rest])
    n_rich = min(int(has_change.sum()), round(LABELED_WITH_CHANGE * n_labeled))
    rich = rest[has_change][:n_rich]
    others = rest[~np.isin(rest, rich)][: n_labeled - n_rich]
    chosen = {"labeled": np.concatenate([rich, others]), "val": val}
    (scene_dir / "areas").mkdir(exist_ok=True)
    for name, indices in chosen.items():
        polygons = [window_box(transform, *boxes[i]) for i in indices]
        gpd.GeoDataFrame(geometry=polygons, crs=crs).to_file(scene_dir / "areas" / f"{name}.gpkg")
    return {"labeled": n_labeled, "val": n_val, "unlabeled": len(boxes) - n_labeled - n_val}


def plan_iterations(iters: int, iters_per_epoch: int) -> tuple[int, int, int]:
    """(epochs, max_iters, eval_every) for a fixed iteration budget; the poly schedule spans exactly the run."""
    epochs = max(1, -(-iters // iters_per_epoch))
    return epochs, iters, max(1, epochs // EVALS)


def score_change_map(change_path: Path, truth_path: Path) -> dict[str, Any]:
    """Change-class IoU, F1, precision, recall, OA (percent) of a class map against 0/255 truth,
    and the same for the all-unchanged map; read block by block, nodata (255) pixels skipped."""
    matrix = np.zeros((2, 2), dtype=np.int64)  # [truth, prediction]
    with rasterio.open(change_path) as pred_ds, rasterio.open(truth_path) as truth_ds:
        if (pred_ds.height, pred_ds.width) != (truth_ds.height, truth_ds.width):
            raise SemisegError(f"{change_path} and {truth_path} differ in size: they must share one grid")
        for _, window in truth_ds.block_windows(1):
            pred = pred_ds.read(1, window=window)
            truth = truth_ds.read(1, window=window) > 0
            valid = pred != 255
            codes = truth[valid].astype(np.int64) * 2 + (pred[valid] > 0)
            matrix += np.bincount(codes, minlength=4).reshape(2, 2)
    baseline = matrix.copy()
    baseline[:, 0] = matrix.sum(1)
    baseline[:, 1] = 0
    return {"model": _percentages(matrix), "all_unchanged": _percentages(baseline)}


def _percentages(matrix: np.ndarray) -> dict[str, float]:
    """Change IoU, F1, precision, recall and OA in percent, as everywhere else in the toolkit."""
    scores = change_scores(torch.from_numpy(matrix))
    return {k: round(scores[k], 2) for k in ("iou", "f1", "precision", "recall", "oa")}


def _preview_rgb(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A raster's first three bands (one band repeated), averaged down to `shape`, for the preview image."""
    with rasterio.open(path) as ds:
        data = ds.read(out_shape=(ds.count, *shape), resampling=rasterio.enums.Resampling.average)
    if data.shape[0] == 1:
        data = np.repeat(data, 3, 0)
    return data[:3].transpose(1, 2, 0)


def write_preview(before: Path, after: Path, change: Path, truth: Path, out: Path) -> Path:
    """before | after | after with predicted change in red and the true change outlined in cyan."""
    with rasterio.open(before) as ds:
        height, width = ds.height, ds.width
    panel_w = max(1, min(width, PREVIEW_WIDTH // 3))
    shape = (max(1, round(height * panel_w / width)), panel_w)
    a, b = _preview_rgb(before, shape), _preview_rgb(after, shape)
    with rasterio.open(change) as ds:
        changed = ds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.mode) == 1
    with rasterio.open(truth) as ds:
        true = ds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.average) > 0
    overlay = b.astype(np.float32)
    overlay[changed] = 0.35 * overlay[changed] + 0.65 * np.array([255, 0, 0])
    edge = true & ~(np.roll(true, 1, 0) & np.roll(true, -1, 0) & np.roll(true, 1, 1) & np.roll(true, -1, 1))
    overlay[edge] = (0, 255, 255)
    gap = np.full((shape[0], 4, 3), 255, np.uint8)
    canvas = np.concatenate([a, gap, b, gap, overlay.astype(np.uint8)], axis=1)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(("before", "after", "predicted change (red), truth (cyan)")):
        x = i * (panel_w + 4) + 6
        draw.rectangle((x - 3, 3, x + 7 * len(text) + 3, 17), fill=(0, 0, 0))
        draw.text((x, 5), text, fill=(255, 255, 255))
    image.save(out)
    return out


def run_demo(
    out: str | Path, size: int = 2048, iters: int = 480, seed: int = 0, rounds: int = 1
) -> dict[str, Any]:
    """Make a scene in `out`, train in `out/run`, predict the scene, score it; return paths, metrics, times.

    `rounds=2` adds the labelling loop: `suggest` picks as many windows as round 1 had labeled, they are
    "annotated" from the scene's truth and added to the labeled area, and the model is trained again from scratch
    with the same budget (`out/run2_suggested`); the same number of random unlabeled windows gives the baseline
    (`out/run2_random`). Both are scored on the whole scene like round 1.
    """
    out = Path(out)
    if iters < 1:
        raise SemisegError(f"--iters must be positive, got {iters}")
    if rounds not in (1, 2):
        raise SemisegError(f"--rounds must be 1 or 2, got {rounds}")
    if (out / "run" / "latest.pt").exists():
        raise SemisegError(f"{out} already holds a demo run: pass a new --out folder or delete {out}")
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    log(f"writing a {size} x {size} px synthetic scene (0.5 m pixels, seed {seed}) to {out}")
    scene = write_scene(out, size=size, seed=seed)
    seconds["scene"] = time.perf_counter() - t0
    log(
        f"scene: {scene.new_buildings} new buildings, {scene.new_roads} new roads, "
        f"{scene.changed_fraction:.2%} of pixels changed ({seconds['scene']:.1f}s)"
    )

    t0 = time.perf_counter()
    counts = write_areas(out, seed)
    probe = demo_config(out)
    iters_per_epoch = len(build(probe, "fit").unlabeled) // BATCH
    if iters_per_epoch < 1:
        raise SemisegError(f"a {size} px scene is too small for the demo: use --size 256 or more")
    plan = plan_iterations(iters, iters_per_epoch)
    seconds["areas"] = time.perf_counter() - t0
    log(
        f"training DINOv2-tiny + UniMatch V2 for {plan[1]} iterations ({plan[0]} epochs of "
        f"{iters_per_epoch}); windows {counts}"
    )
    result, summary, scores = _train_and_map(out, "run", scene, plan, seconds)
    checkpoint, change_path, polygons_path = out / "run" / "best.pt", out / "change.tif", out / "change.gpkg"
    best = result["best"]

    t0 = time.perf_counter()
    preview = write_preview(scene.before, scene.after, change_path, scene.truth, out / "preview.png")
    seconds["preview"] = time.perf_counter() - t0
    m, base = scores["model"], scores["all_unchanged"]
    log(
        f"change IoU {m['iou']:.1f}, F1 {m['f1']:.1f} (all-unchanged: IoU {base['iou']:.1f}, F1 {base['f1']:.1f}), in percent"
    )
    view = write_view(out, scene, change_path, polygons_path, seconds)
    second = _second_round(out, scene, plan, counts["labeled"], seed, seconds) if rounds == 2 else None
    return {
        "paths": {
            "before": str(scene.before),
            "after": str(scene.after),
            "truth": str(scene.truth),
            "run": str(out / "run"),
            "checkpoint": str(checkpoint),
            "change": str(change_path),
            "polygons": str(polygons_path),
            "preview": str(preview),
            "view": view,
        },
        "scene": {
            "size": size,
            "seed": seed,
            "changed_fraction": round(scene.changed_fraction, 4),
            "new_buildings": scene.new_buildings,
            "new_roads": scene.new_roads,
        },
        "training": {
            "iterations": result["state"].iteration,
            "seconds_per_iteration": round(seconds["train"] / max(result["state"].iteration, 1), 3),
            "best_val_iou": round(best.get("value", 0.0), 2),
            "best_source": best.get("source"),
        },
        "metrics": m,
        "all_unchanged": base,
        "polygons": summary["num_polygons"],
        **({"round_2": second} if second else {}),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def write_view(out: Path, scene: Any, change: Path, polygons: Path, seconds: dict) -> str:
    """`out/view/`: the web map of the scene, the predicted change and its polygons over the truth's outlines."""
    from semiseg.view import build_view

    t0 = time.perf_counter()
    view = build_view(
        [scene.before, scene.after], change, out / "view", polygons=polygons, truth=scene.truth, progress=False,
        title="semicd demo: predicted change (red) and the truth (cyan outlines)",
    )  # fmt: skip
    seconds["view"] = time.perf_counter() - t0
    log(f"view ({view['megabytes']:.1f} MB, {seconds['view']:.1f}s): open {view['view']} in a browser")
    return view["view"]


def _train_and_map(
    out: Path,
    run_name: str,
    scene: Any,
    plan: tuple[int, int, int],
    seconds: dict,
    extra_labeled: Path | None = None,
) -> tuple[dict, dict, dict]:
    """Train `out/<run_name>`, map the whole scene with its best checkpoint and score the map against the truth."""
    from semiseg.devices import pick_device
    from semiseg.predict import default_window, predict_scene
    from semiseg.train.loop import train

    epochs, max_iters, eval_every = plan
    suffix = "" if run_name == "run" else "_" + run_name.removeprefix("run")
    t0 = time.perf_counter()
    cfg = demo_config(
        out, epochs=epochs, max_iters=max_iters, eval_every=eval_every, extra_labeled=extra_labeled
    )
    result = train(cfg, out / run_name)  # a progress bar with the run's ETA on a terminal
    seconds[f"train{suffix}"] = time.perf_counter() - t0
    log(
        f"{run_name}: trained {result['state'].iteration} iterations in {seconds[f'train{suffix}']:.1f}s; "
        f"best val IoU {result['best']['value']:.1f}"
    )

    t0 = time.perf_counter()
    checkpoint = out / run_name / "best.pt"
    model = load_model(checkpoint)
    change_path, polygons_path = out / f"change{suffix}.tif", out / f"change{suffix}.gpkg"
    for stale in (change_path, polygons_path):
        stale.unlink(missing_ok=True)
    summary = predict_scene(
        model,
        [scene.before, scene.after],
        change_path,
        device=pick_device("auto"),
        # the training crop: measured best on this scene (change IoU 57 against 34 with 224 px windows)
        window=default_window(model),
        overlap=0.25,
        batch_size=8,
        num_workers=0,
        polygons_path=polygons_path,
        tags={
            "classes": ",".join(model.meta["classes"]),
            "checkpoint": checkpoint.name,
            "task": model.meta["task"],
        },
        min_area_m2=10.0,
    )
    scores = score_change_map(change_path, scene.truth)
    seconds[f"predict{suffix}"] = time.perf_counter() - t0
    log(
        f"{run_name}: mapped the scene in {seconds[f'predict{suffix}']:.1f}s, change IoU {scores['model']['iou']:.1f}"
    )
    return result, summary, scores


def _second_round(
    out: Path, scene: Any, plan: tuple[int, int, int], n: int, seed: int, seconds: dict
) -> dict:
    """Round 2: `n` suggested windows against `n` random unlabeled ones, each labelled from the truth and trained."""
    from semiseg.active import suggest_windows
    from semiseg.devices import pick_device
    from semiseg.predict import default_window

    t0 = time.perf_counter()
    model = load_model(out / "run" / "best.pt")
    areas = [out / "areas" / "labeled.gpkg", out / "areas" / "val.gpkg"]
    suggested = suggest_windows(
        model, [scene.before, scene.after], out / "areas" / "suggested.gpkg", n=n, areas=areas, cell=WINDOW,
        window=default_window(model), device=pick_device("auto"), batch_size=8, num_workers=0, progress=False,
    )  # fmt: skip
    picked_random = write_random_windows(out, suggested["suggested"], seed, out / "areas" / "random.gpkg")
    seconds["suggest"] = time.perf_counter() - t0
    log(f"round 2: {suggested['suggested']} suggested and {picked_random} random windows get labels")
    iou = {}
    for name, extra in (
        ("suggested", out / "areas" / "suggested.gpkg"),
        ("random", out / "areas" / "random.gpkg"),
    ):
        # the same iteration budget as round 1: fewer unlabeled windows make shorter epochs, so more of them
        iters_per_epoch = len(build(demo_config(out, extra_labeled=extra), "fit").unlabeled) // BATCH
        budget = plan_iterations(plan[1], iters_per_epoch)
        _, _, scores = _train_and_map(out, f"run2_{name}", scene, budget, seconds, extra_labeled=extra)
        iou[name] = scores["model"]["iou"]
    return {
        "asked": n,
        "added_windows": suggested["suggested"],
        "iou_suggested": iou["suggested"],
        "iou_random": iou["random"],
        "suggestions": str(out / "areas" / "suggested.gpkg"),
    }


def write_random_windows(out: Path, n: int, seed: int, path: Path) -> int:
    """`n` seeded random training windows outside the labeled and val areas, as polygons (the baseline)."""
    import geopandas as gpd
    import shapely

    from semicd.data.geotiff_pair import window_grid
    from semiseg.geo.vectors import read_vector, shares_ground, window_box

    with rasterio.open(out / "before.tif") as ds:
        height, width, transform, crs = ds.height, ds.width, ds.transform, ds.crs
    taken = shapely.union_all(
        [g for name in ("labeled", "val") for g in read_vector(out / "areas" / f"{name}.gpkg", crs, "area")]
    )
    polygons = [window_box(transform, *box) for box in window_grid(height, width, WINDOW)]
    free = [p for p, hit in zip(polygons, shares_ground(polygons, taken)) if not hit]
    rng = np.random.default_rng([seed, 7])
    chosen = [free[i] for i in sorted(rng.choice(len(free), size=min(n, len(free)), replace=False))]
    gpd.GeoDataFrame(geometry=chosen, crs=crs).to_file(path)
    return len(chosen)
