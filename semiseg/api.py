"""Prediction from Python, for every task: arrays in, probabilities and classes out; or files in, files out.

    model = semiseg.load_model("best.pt")
    result = semiseg.segment(model, image)   # numpy (bands, rows, cols) uint8, or an xarray DataArray
    result.classes, result.probs             # rows x cols uint8; classes x rows x cols float32

Change detection has the same call with two dates, `semicd.predict(model, before, after)`, in its own package.

Arrays of any size are cut into overlapping windows, predicted in batches and blended exactly as a GeoTIFF scene is
(`semiseg.geo.predict.stream_windows`, the same loop), so a uint8 array read from a file gives the classes the
`predict` command writes for that file, provided it holds the bands the model takes and `valid=` marks what the
file's nodata would (arrays are not stretched, band-selected nor nodata-masked: see `predict`). DataArrays (dims
`band, y, x`, as rioxarray reads them) come back as DataArrays with their `y`/`x` coordinates and their other
band-free coordinates, among them rioxarray's `spatial_ref`, which holds the CRS and transform. Paths instead of
arrays (with `out=`) run the GeoTIFF pipeline and return its summary; the `predict` commands call this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from semiseg.errors import SemisegError
from semiseg.geo.predict import decide, stream_windows
from semiseg.geo.windows import TileGrid, make_grid
from semiseg.geo.writer import NODATA


@dataclass
class Prediction:
    """`classes`: rows x cols uint8 (255 where no input pixel was valid); `probs`: classes x rows x cols float32
    softmax probabilities (NaN where not valid), None when asked not to keep them. numpy arrays, or DataArrays
    when the inputs were DataArrays."""

    classes: Any
    probs: Any


def predict(
    model,
    *images: Any,
    out: str | os.PathLike | None = None,
    window: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: bool = False,
    threshold: float | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
    amp: str | None = None,
    valid: np.ndarray | None = None,
    progress: bool | None = None,
    probs: bool = True,
    **file_options: Any,
) -> Prediction | dict[str, Any]:
    """Predict one scene: one image per date in the model's order (before, after for change detection).

    Arrays: numpy (bands x rows x cols, or rows x cols for one band) or xarray DataArrays (`band, y, x`), uint8
    0..255, all the same size. They are taken as the 0..255 values the model sees, and that is all that is done to
    them: the first bands the model takes are used (not the `bands` it was trained with: select them first), other
    dtypes are refused (non-8-bit data: stretch it to 0..255 first, e.g. with the model's trained `fixed:` limits,
    or predict the file, which applies the trained stretch), and no nodata value is read: `valid` (rows x cols
    bool) marks the pixels to predict (default: all). Only then are the classes those the command writes for the
    file. Returns a `Prediction`; `probs=False` leaves `probs` None and saves its memory (classes x rows x cols
    float32: 2 x 4 bytes per pixel for change detection, besides the 1-byte classes).

    Paths (`str` / `os.PathLike`, with `out`): the GeoTIFF pipeline (`semiseg.predict.predict_scene`, which takes
    `file_options` such as probs_path, polygons_path, bands, nodata, align, num_workers) writes `out` and the
    summary it returns is returned.

    `window` defaults to the crop the model was trained on (`semiseg.predict.default_window`); `threshold` (2-class
    models) picks class 1 where its probability reaches it, otherwise argmax. `progress`: a progress bar on a
    terminal (default), or never (False). `precision`: fp32 (default), bf16 or fp16 (CUDA only), the arithmetic
    the model runs in; `amp` is its older name (none = fp32).
    """
    from semiseg.devices import pick_device, pick_precision
    from semiseg.predict import default_window, make_predictor, predict_scene

    if len(images) != model.num_images:
        raise SemisegError(f"this model takes {model.num_images} image(s) per scene, got {len(images)}")
    device = pick_device(device) if isinstance(device, str) else device
    precision = pick_precision(precision, amp)
    window = window or default_window(model)
    if all(isinstance(x, (str, os.PathLike)) for x in images):
        if out is None:
            raise SemisegError("predicting files writes files: pass out= (the class map GeoTIFF)")
        return predict_scene(
            model, list(images), out, device=device, precision=precision, window=window, overlap=overlap,
            batch_size=batch_size, tta=tta, threshold=threshold, progress=progress, **file_options,
        )  # fmt: skip
    if out is not None or file_options:
        raise SemisegError(
            f"out= and {', '.join(file_options) or 'file options'} are for file paths; arrays are returned"
        )
    arrays = [_band_first(x, model.spec.bands, i) for i, x in enumerate(images)]
    height, width = arrays[0].shape[1:]
    if any(a.shape[1:] != (height, width) for a in arrays):
        raise SemisegError(f"the images differ in size: {', '.join(str(a.shape[1:]) for a in arrays)}")
    mask = np.ones((height, width), bool) if valid is None else np.asarray(valid, bool)
    if mask.shape != (height, width):
        raise SemisegError(f"valid has shape {mask.shape}, the images {(height, width)}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise SemisegError(f"threshold {threshold} must be between 0 and 1")
    grid = make_grid(height, width, window, overlap, model.patch_size)
    sink = _ArraySink(height, width, threshold, probs)
    stream_windows(
        ArrayWindows(arrays, mask, grid), grid, make_predictor(model, device, precision), sink, tta, batch_size, 0,
        progress is not False,
    )  # fmt: skip
    kept = sink.probs
    if probs and kept is None:  # no valid pixel at all
        kept = np.full((model.nclass, height, width), np.nan, np.float32)
    return _like_inputs(images[0], Prediction(sink.classes, kept), model.meta.get("classes"))


def _band_first(image: Any, bands: int, index: int) -> np.ndarray:
    """A C x H x W uint8 numpy array of the first `bands` bands of a numpy array or DataArray."""
    if hasattr(image, "dims"):  # an xarray DataArray: order its dimensions as rasterio does
        dims = tuple(d for d in ("band", "y", "x") if d in image.dims)
        if dims[-2:] != ("y", "x") or len(dims) != image.ndim:
            raise SemisegError(
                f"image {index + 1}: a DataArray needs dims (band, y, x) or (y, x), got {image.dims}"
            )
        image = image.transpose(*dims).values
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise SemisegError(f"image {index + 1}: expected bands x rows x cols, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise SemisegError(
            f"image {index + 1} is {array.dtype}: give uint8 0..255 (scale it first, or predict the file, which "
            "stretches other types)"
        )
    if array.shape[0] < bands:
        raise SemisegError(f"image {index + 1} has {array.shape[0]} band(s); the model takes {bands}")
    return np.ascontiguousarray(array[:bands])


class ArrayWindows(Dataset):
    """Windows of in-memory images as `stream_windows` reads them: zero-padded past the edges, padding invalid."""

    def __init__(self, arrays: Sequence[np.ndarray], valid: np.ndarray, grid: TileGrid) -> None:
        self.arrays, self.valid, self.grid = list(arrays), valid, grid

    def __len__(self) -> int:
        return len(self.grid.tiles)

    def __getitem__(self, index: int):
        tile = self.grid.tiles[index]
        rows = slice(tile.row, min(tile.row + tile.size, self.grid.height))
        cols = slice(tile.col, min(tile.col + tile.size, self.grid.width))
        h, w = rows.stop - rows.start, cols.stop - cols.start
        images = []
        for array in self.arrays:
            window = np.zeros((array.shape[0], tile.size, tile.size), np.uint8)
            window[:, :h, :w] = array[:, rows, cols]
            images.append(torch.from_numpy(window))
        valid = np.zeros((tile.size, tile.size), bool)
        valid[:h, :w] = self.valid[rows, cols]
        return tuple(images), torch.from_numpy(valid), 0, index


class _ArraySink:
    """Collects the blended strips into whole-scene classes and probabilities."""

    def __init__(self, height: int, width: int, threshold: float | None, keep_probs: bool = True) -> None:
        self.classes = np.full((height, width), NODATA, np.uint8)
        self.probs: np.ndarray | None = None
        self.threshold, self.keep_probs = threshold, keep_probs

    def __call__(self, row: int, probs: np.ndarray | None, valid: np.ndarray) -> None:
        if probs is None:
            return
        if self.keep_probs and self.probs is None:
            self.probs = np.full((probs.shape[0], *self.classes.shape), np.nan, np.float32)
        rows = slice(row, row + valid.shape[0])
        decided, _ = decide(probs, self.threshold)
        self.classes[rows][valid] = decided[valid]
        if self.keep_probs:
            self.probs[:, rows][:, valid] = probs[:, valid]


def _like_inputs(first: Any, result: Prediction, class_names: Sequence[str] | None) -> Prediction:
    """DataArrays with the input's y/x and other band-free coordinates (CRS included) when it was one."""
    if not hasattr(first, "dims"):
        return result
    import xarray as xr

    coords = {name: c for name, c in first.coords.items() if "band" not in c.dims}
    classes = xr.DataArray(result.classes, dims=("y", "x"), coords=coords, name="classes")
    classes.attrs["_FillValue"] = NODATA
    if result.probs is None:
        return Prediction(classes, None)
    k = result.probs.shape[0]
    names = list(class_names) if class_names and len(class_names) == k else list(range(k))
    probs = xr.DataArray(
        result.probs, dims=("class", "y", "x"), coords={**coords, "class": names}, name="probs"
    )
    return Prediction(classes, probs)
