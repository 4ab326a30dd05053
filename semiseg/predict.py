"""Prediction with a loaded model, for every task: the predictor, folders of plain images, GeoTIFF scenes.

A `ModelPredictor` wraps a model as `predictor(images uint8) -> probabilities`: normalisation (the model's own
mean/std), the device and autocast live there, so the GeoTIFF pipeline (`semiseg.geo`) never sees a model.
These are library functions; the `predict` commands are thin argument glue over them (`semiseg.cli`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from semiseg.devices import AMP_DTYPES, pick_precision
from semiseg.errors import SemisegError
from semiseg.geo.writer import class_colormap
from semiseg.inference import predict_logits
from semiseg.io import IMAGE_EXTENSIONS, read_rgb, save_png_atomic
from semiseg.models.normalize import normalize
from semiseg.models.segmentor import Segmentor


class ModelPredictor:
    """uint8 images (one tensor per date, B x C x h x w) -> softmax probabilities, on `device`, in `precision`
    (fp32, or autocast to bf16 / fp16; `none` is fp32, the older `--amp` spelling). `patch_size` tells
    tile-and-predict which window sizes the model takes."""

    def __init__(self, model: Segmentor, device: torch.device, precision: str = "fp32") -> None:
        precision = pick_precision(precision)
        if precision == "fp16" and device.type != "cuda":
            raise SemisegError("--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision
        self.dtype = AMP_DTYPES.get(precision)
        self.patch_size = model.patch_size

    @torch.inference_mode()
    def __call__(self, images: tuple[torch.Tensor, ...]) -> torch.Tensor:
        m = self.model
        x = tuple(normalize(im.to(self.device, non_blocking=True), m.mean, m.std) for im in images)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with ctx:
            logits = m(*x)
        return logits.float().softmax(1)


def default_window(model: Segmentor) -> int:
    """The window a scene is predicted in unless the user says: the crop the model was trained on, else 36 patches
    (504 px for DINOv2).

    A model sees context at the scale it learned. Measured on the demo's model (trained on 84 px crops), change IoU
    over the whole scene: 57.3 with 84 px windows, 45.0 at 112, 34.0 at 224, 30.8 at 504.
    """
    trained = getattr(model, "meta", {}).get("crop_size")
    return int(trained) if trained else 36 * model.patch_size


LARGE_SCENE_MEGAPIXELS = 1000.0  # above this, predict_scene wants `yes=True` (a gigapixel: hours on a CPU)


def check_scene_size(scene, predictor: ModelPredictor, window: int, overlap: float, batch_size: int) -> None:
    """Refuse a scene above `LARGE_SCENE_MEGAPIXELS` with what it would cost: windows, output size, and the time
    at the speed of one batch measured here on the chosen device (the second of two, after warm-up)."""
    import time

    from semiseg.geo.windows import make_grid

    megapixels = scene.height * scene.width / 1e6
    if megapixels <= LARGE_SCENE_MEGAPIXELS:
        return
    grid = make_grid(scene.height, scene.width, window, overlap, predictor.patch_size)
    batch = tuple(
        torch.zeros(batch_size, scene.num_bands, window, window, dtype=torch.uint8) for _ in scene.sources
    )
    for _ in range(2):
        start = time.perf_counter()
        predictor(batch)
        seconds = time.perf_counter() - start
    hours = seconds * len(grid) / batch_size / 3600
    raise SemisegError(
        f"the scene is {scene.height} x {scene.width} px ({megapixels:,.0f} MP, {len(grid):,} windows of {window} px): "
        f"about {hours:,.1f} h on {predictor.device} at the measured {seconds / batch_size:.3g} s per window, and up "
        f"to {megapixels / 1e3:,.1f} GB per output raster before compression; pass --yes to run it anyway"
    )


def stretch_trained_with(model: Segmentor) -> str:
    """The input stretch rule the model was trained with (`data.stretch`), or `auto` when it does not say."""
    meta = getattr(model, "meta", {})
    return str(meta.get("stretch") or ((meta.get("config") or {}).get("data") or {}).get("stretch") or "auto")


def bands_trained_with(model: Segmentor) -> list[int] | None:
    """The 1-based raster bands the model was trained on (`data.bands`), or None when it does not say."""
    meta = getattr(model, "meta", {})
    bands = meta.get("input_bands") or ((meta.get("config") or {}).get("data") or {}).get("bands")
    return [int(b) for b in bands] if bands else None


def check_trained_bands_exist(rasters: Sequence[str | os.PathLike], bands: Sequence[int]) -> None:
    """The raster bands the model was trained on must exist in every input (said as such, not as a bad --bands)."""
    import rasterio

    for path in rasters:
        try:
            with rasterio.open(path) as ds:
                count = ds.count
        except rasterio.errors.RasterioError:
            return  # an unreadable file: opening the scene says what is wrong with it
        if max(bands) > count:
            raise SemisegError(
                f"the model was trained on raster bands {list(bands)} but {path} has {count}: choose the matching "
                "bands with --bands"
            )


def check_band_count(found: int, wanted: int, raster: str | os.PathLike, bands: Sequence[int] | None) -> None:
    """One line when the scene's bands are not the model's: a model never guesses which bands are which."""
    if found == wanted:
        return
    if bands:
        raise SemisegError(
            f"the model takes {wanted} band(s) but --bands selects {found}: give {wanted} numbers"
        )
    kind = "RGB (3 bands)" if wanted == 3 else f"{wanted} bands"
    if found == 1:
        hint = f" (e.g. --bands {','.join(['1'] * wanted)} to repeat the band)"
    elif found > wanted:
        hint = f" (e.g. --bands {','.join(str(b) for b in range(1, wanted + 1))}{' if those are red, green, blue' if wanted == 3 else ''})"
    else:
        hint = " (or train a model for these bands: data.mean/data.std, measured by band-stats)"
    raise SemisegError(
        f"the model was trained on {kind} but {raster} has {found}: choose {wanted} with --bands{hint}"
    )


def check_rasters_exist(rasters: Sequence[str | os.PathLike]) -> None:
    for path in rasters:
        if not Path(path).exists():
            raise SemisegError(f"input raster not found: {path}")


def make_predictor(model: Segmentor, device: torch.device, precision: str = "fp32") -> ModelPredictor:
    """The predictor of `model` on `device` in `precision` (fp32, bf16, fp16; `none` means fp32)."""
    return ModelPredictor(model, device, precision)


def _palette(nclass: int) -> list[int]:
    """The class colours of our GeoTIFF maps, as a PNG palette."""
    colours = class_colormap(nclass)
    return [v for c in range(256) for v in colours.get(c, (0, 0, 0, 0))[:3]]


def predict_folder(
    model: Segmentor,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    device: torch.device,
    precision: str | None = None,
    tta: bool = False,
    progress: bool | None = None,
    amp: str | None = None,
) -> dict[str, Any]:
    """Palette PNG class masks for every image under `src` (or `src` itself), written atomically to
    `out/<relative path>.png`; returns a summary. `precision`: fp32 (default), bf16 or fp16 (`amp` is its older
    name, none = fp32)."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise SemisegError(f"input not found: {src}")
    files = (
        [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    )
    if not files:
        raise SemisegError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {src}")
    out.mkdir(parents=True, exist_ok=True)
    predictor = make_predictor(model, device, pick_precision(precision, amp))
    palette = _palette(model.nclass)

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    for path in tqdm(files, disable=not show, desc="images"):
        x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None]
        logits = predict_logits(lambda *ims: predictor(ims).log(), (x,), mode="original", flip_tta=tta,
                                patch_size=predictor.patch_size)  # fmt: skip
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        rel = path.relative_to(src).with_suffix(".png") if src.is_dir() else Path(path.stem + ".png")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_png_atomic(out / rel, mask, palette=palette)
    return {"images": len(files), "out": str(out)}


def predict_scene(
    model: Segmentor,
    rasters: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    device: torch.device,
    precision: str | None = None,
    amp: str | None = None,
    align: str = "error",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    stretch: str | None = None,
    tags: Mapping[str, object] | None = None,
    progress: bool | None = None,
    yes: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Tile-and-predict a scene (one raster per date, in the model's date order) into a georeferenced class map.

    `options` go to `semiseg.geo.predict.predict_raster` (window, overlap, batch_size, num_workers, probs_path,
    polygons_path, threshold, tta, min_area_m2, simplify). `bands` (1-based) default to the ones the model was
    trained on, else all but an alpha band (which must then be as many as the model takes); the rasters are checked before any compute; nodata also shapes the
    stretch of non-uint8 inputs, so it goes to the scene, not only to the writer. `stretch` defaults to the rule
    the model was trained with (`auto` when unknown). A scene above `LARGE_SCENE_MEGAPIXELS` needs `yes=True`.
    `precision`: fp32 (default), bf16 or fp16 (CUDA only); `amp` is its older name (none = fp32). The summary
    says which was used.
    """
    from semiseg.geo.pair import open_scene
    from semiseg.geo.predict import predict_raster

    if len(rasters) != model.num_images:
        raise SemisegError(f"this model takes {model.num_images} raster(s) per scene, got {len(rasters)}")
    check_rasters_exist(rasters)
    stretch = stretch or stretch_trained_with(model)
    if not bands and (bands := bands_trained_with(model)):
        check_trained_bands_exist(rasters, bands)
    scene = open_scene(list(rasters), align=align, bands=bands, nodata=nodata, stretch=stretch)
    check_band_count(scene.num_bands, model.spec.bands, rasters[0], bands)
    precision = pick_precision(precision, amp)
    predictor = make_predictor(model, device, precision)
    if not yes:
        window = options.get("window", default_window(model))
        check_scene_size(scene, predictor, window, options.get("overlap", 0.25), options.get("batch_size", 4))
    summary = predict_raster(
        scene,
        predictor,
        out,
        progress=sys.stderr.isatty() if progress is None else progress,
        tags=tags,
        num_classes=model.nclass,
        class_names=model.meta.get("classes"),
        **options,
    )
    summary["precision"] = precision
    return summary
