"""Prediction front-ends: a folder of plain images (PNG masks out) and GeoTIFF scenes (through semicd.geo).

Both wrap a loaded model in the same `predictor(images uint8) -> probabilities` closure, so normalisation and
device handling live in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semiseg.augment import normalize
from semiseg.cli_common import write_run_record
from semiseg.errors import SemisegError
from semiseg.inference import predict_logits
from semiseg.models.loading import load_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SemisegError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def make_predictor(
    model, device: torch.device, amp: str = "none"
) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    """uint8 images (one per date) -> softmax probabilities, on `device`, under optional autocast."""
    mean, std = model.meta["mean"], model.meta["std"]
    model = model.to(device).eval()
    if amp == "fp16" and device.type != "cuda":
        raise SemisegError("--amp fp16 needs a CUDA device")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    @torch.inference_mode()
    def predictor(images: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = tuple(normalize(im.to(device, non_blocking=True), mean, std) for im in images)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            logits = model(*x)
        return logits.float().softmax(1)

    return predictor


def _palette(k: int) -> list[int]:
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (256, 3))
    colours[0] = 0
    return colours.astype(np.uint8).ravel().tolist()


def predict_folder(args: argparse.Namespace) -> int:
    """Palette PNG masks (class ids) for every image under --input, written atomically to --out/<name>.png."""
    src = Path(args.input)
    if not src.exists():
        raise SemisegError(f"input not found: {src}")
    files = (
        [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise SemisegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {src}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.checkpoint, task="segmentation", which=args.which)
    device = pick_device(args.device)
    predictor = make_predictor(model, device, args.amp)
    palette = _palette(model.nclass)

    from tqdm import tqdm

    for path in tqdm(files, disable=not sys.stderr.isatty(), desc="images"):
        try:
            with Image.open(path) as im:
                rgb = np.array(im.convert("RGB"))
        except OSError as err:
            raise SemisegError(f"cannot read image {path}: {err}") from None
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        logits = predict_logits(lambda *ims: predictor(ims).log(), (x,), mode="original", flip_tta=args.tta)
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        rel = path.relative_to(src).with_suffix(".png") if src.is_dir() else Path(path.stem + ".png")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(mask, mode="P")
        img.putpalette(palette)
        tmp = target.with_name(f".{target.name}.tmp.png")
        img.save(tmp)
        os.replace(tmp, target)
    summary = {"images": len(files), "out": str(out)}
    write_run_record(out / "predict.yaml", args, summary)
    print(json.dumps(summary))
    return 0


def predict_scene_cli(args: argparse.Namespace, task: str) -> int:
    """Shared body of `semicd predict` and `semiseg predict --image`: check inputs, load, tile-and-predict."""
    from semicd.geo.pair import open_scene
    from semicd.geo.predict import predict_raster

    sources = [args.before, args.after] if task == "change_detection" else [args.image]
    for s in sources:
        if not Path(s).exists():
            raise SemisegError(f"input raster not found: {s}")
    model = load_model(args.checkpoint, task=task, which=args.which)
    if task == "change_detection" and model.num_images != 2:
        raise SemisegError(f"{args.checkpoint} is a single-image model: use `semiseg predict --image`")
    if task == "segmentation" and model.num_images != 1:
        raise SemisegError(
            f"{args.checkpoint} is a change-detection model: use `semicd predict --before --after`"
        )
    device = pick_device(args.device)
    bands = [int(b) for b in args.bands.split(",")] if args.bands else None
    tags = {
        "classes": ",".join(model.meta["classes"]),
        "checkpoint": Path(args.checkpoint).name,
        "checkpoint_sha256": model.meta["source_sha256"],
        "task": task,
    }
    # nodata also shapes the percentile stretch of non-uint8 inputs, so it goes to the scene, not only the writer
    scene = open_scene(sources, align=getattr(args, "align", "error"), bands=bands, nodata=args.nodata)
    summary = predict_raster(
        scene,
        make_predictor(model, device, args.amp),
        args.out,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        num_workers=args.workers,
        probs_path=args.probs,
        polygons_path=args.polygons,
        threshold=getattr(args, "threshold", None),
        tta=args.tta,
        progress=sys.stderr.isatty(),
        tags=tags,
        num_classes=model.nclass,
        min_area_m2=args.min_area,
    )
    out = Path(args.out)
    write_run_record(out.with_name(out.stem + ".predict.yaml"), args, summary)
    print(json.dumps(summary, indent=2, default=str))
    return 0
