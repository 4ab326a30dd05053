"""Open the rasters of one scene (a single image, or a before/after pair) and check they share one pixel grid.

Everything here runs before any compute so a user learns about a mismatched pair in a second, not after an
hour of inference. The result is a `Scene`: picklable descriptions (`RasterSource`) of how to read each date
on a common output grid, so DataLoader workers can reopen the files themselves (rasterio handles cannot be
pickled).

Input scaling: the models are trained on 8-bit imagery, so uint8 bands are used as they are, and any other
dtype (uint16, float...) is mapped to 0..255 with a per-scene, per-band 2-98 % percentile stretch computed
once on a decimated read (`percentile_stretch_params`). The stretch is per date: each date of a pair gets its
own.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from semiseg.errors import SemisegError

ALIGN_CHOICES = ("error", "reproject")
TRANSFORM_TOLERANCE_PX = 1e-3
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIZE = 1024  # longest side of the decimated read used for the percentile stretch


@dataclass(frozen=True)
class Warp:
    """Where to put a source on the output grid through a `WarpedVRT` (bilinear, as for any image)."""

    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    add_alpha: bool
    src_alpha: int = 0


@dataclass(frozen=True)
class RasterSource:
    """How to read one date on the scene's output grid; plain data, so it pickles into DataLoader workers.

    `row_off`/`col_off` place the output grid inside the file's own pixel grid (non-zero when the scene is cut
    to the overlap of a pair); `warp` is set when the file is read through a `WarpedVRT` instead.
    `stretch` holds per-band (low, high) values mapped to 0 and 255, or None for uint8 data used as is.
    """

    path: str
    bands: tuple[int, ...]
    row_off: int = 0
    col_off: int = 0
    warp: Warp | None = None
    stretch: tuple[tuple[float, float], ...] | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class Scene:
    """The output grid (CRS, transform, size) and the sources read onto it, in date order."""

    sources: tuple[RasterSource, ...]
    crs: rasterio.crs.CRS | None
    transform: Affine
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())

    @property
    def num_bands(self) -> int:
        return len(self.sources[0].bands)

    def first_bands(self, n: int) -> Scene:
        """The same scene reading only the first `n` of its selected bands."""
        sources = tuple(
            replace(s, bands=s.bands[:n], stretch=None if s.stretch is None else s.stretch[:n])
            for s in self.sources
        )
        return replace(self, sources=sources)


def open_source(source: RasterSource) -> rasterio.io.DatasetReaderBase:
    """Open a source's file, through a `WarpedVRT` when it must be warped; the caller closes what it gets."""
    src = rasterio.open(source.path)
    if source.warp is None:
        return src
    w = source.warp
    vrt = WarpedVRT(
        src,
        crs=w.crs,
        transform=Affine(*w.transform[:6]),
        width=w.width,
        height=w.height,
        resampling=Resampling.bilinear,
        add_alpha=w.add_alpha,
        src_alpha=w.src_alpha,
    )
    # Keep the underlying file alive with the VRT; closing the VRT does not close it.
    vrt._source_file = src  # read back in close_source
    return vrt


def close_source(handle: rasterio.io.DatasetReaderBase) -> None:
    """Close a handle from `open_source` and the file under it, if any."""
    inner = getattr(handle, "_source_file", None)
    handle.close()
    if inner is not None:
        inner.close()


def open_raster(path: str | os.PathLike, what: str = "input raster") -> rasterio.io.DatasetReader:
    """Open a raster or raise a one-line `SemisegError` saying why it cannot be used (`what`: its role)."""
    p = Path(path)
    if not p.exists():
        raise SemisegError(f"{what} {p} does not exist; check the path")
    if p.is_dir():
        raise SemisegError(f"{what} {p} is a folder; pass a GeoTIFF (or any GDAL raster) file")
    try:
        ds = rasterio.open(p)
    except (RasterioError, OSError) as exc:  # older rasterio raises its IO errors as OSError only
        raise SemisegError(
            f"{what} {p} is not a readable raster ({_first_line(exc)}); pass a GeoTIFF file"
        ) from exc
    try:
        # A tiny decimated read touches the file's structure, so a truncated/corrupt TIFF fails here, early.
        ds.read(1, out_shape=(min(ds.height, 64), min(ds.width, 64)))
    except (RasterioError, OSError) as exc:
        ds.close()
        raise SemisegError(f"{p} cannot be read, it may be corrupt ({_first_line(exc)})") from exc
    return ds


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _select_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    if bands is None:
        return tuple(range(1, ds.count + 1))
    bad = [b for b in bands if not 1 <= int(b) <= ds.count]
    if bad or not bands:
        raise SemisegError(
            f"--bands {list(bands)} is invalid for {ds.name}, which has {ds.count} band(s) numbered from 1"
        )
    return tuple(int(b) for b in bands)


def percentile_stretch_params(
    ds: rasterio.io.DatasetReaderBase,
    bands: Sequence[int],
    nodata: float | None = None,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    sample_size: int = STRETCH_SAMPLE_SIZE,
) -> tuple[tuple[float, float], ...]:
    """Per-band (low, high) values of a 2-98 % percentile stretch, from a decimated read of valid pixels.

    Why: models see 8-bit imagery in training; 16-bit or float scenes must be brought to 0..255 with the bulk
    of their histogram spread out, robust to a few saturated or dark outliers. A decimated read (longest side
    `sample_size`) keeps this cheap for any scene size; percentiles of a regular subsample are stable.
    """
    scale = max(ds.width, ds.height) / sample_size
    out_h = max(1, math.ceil(ds.height / max(scale, 1.0)))
    out_w = max(1, math.ceil(ds.width / max(scale, 1.0)))
    data = ds.read(list(bands), out_shape=(len(bands), out_h, out_w), resampling=Resampling.nearest)
    valid = _valid_from(ds, data, list(bands), nodata, out_shape=(len(bands), out_h, out_w))
    params = []
    for band in data:
        values = band[valid & np.isfinite(band)].astype(np.float64)
        if values.size == 0:
            params.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(values, percentiles)
        if hi <= lo:
            hi = lo + 1.0
        params.append((float(lo), float(hi)))
    return tuple(params)


def _valid_from(ds, data: np.ndarray, bands: list[int], nodata: float | None, out_shape=None) -> np.ndarray:
    """Pixels valid in every band: the file's masks, or `!= nodata` when the user overrides it."""
    if nodata is not None:
        ok = np.all(data != nodata, axis=0)
        if np.issubdtype(data.dtype, np.floating):
            ok &= np.all(np.isfinite(data), axis=0)
        return ok
    masks = ds.read_masks(bands, out_shape=out_shape, resampling=Resampling.nearest)
    return np.all(masks > 0, axis=0)


def apply_stretch(data: np.ndarray, stretch: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """Bring band data (C x h x w) to uint8 0..255: as is for uint8 (no stretch), else linearly stretched."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, (lo, hi) in enumerate(stretch):
        band = (data[i].astype(np.float32) - lo) * (255.0 / (hi - lo))
        np.nan_to_num(band, copy=False, nan=0.0)
        out[i] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
    return out


def transform_offset_px(ta: Affine, tb: Affine, width: int, height: int) -> float:
    """Largest distance, in B's pixels, between where A's grid corners fall in A and in B."""
    inv_b = ~tb
    worst = 0.0
    for col, row in ((0, 0), (width, 0), (0, height), (width, height)):
        x, y = ta @ (col, row)
        cb, rb = inv_b @ (x, y)
        worst = max(worst, abs(cb - col), abs(rb - row))
    return worst


def _describe_crs(crs) -> str:
    if crs is None:
        return "none"
    return crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"


def grid_differences(a, b, bands: bool = False) -> list[str]:
    """What keeps raster `b` off raster `a`'s pixel grid (CRS, shape, transform; band count if `bands`)."""
    diffs = []
    if a.crs != b.crs:
        diffs.append(f"CRS ({_describe_crs(a.crs)} vs {_describe_crs(b.crs)})")
    if (a.height, a.width) != (b.height, b.width):
        diffs.append(f"shape ({a.height}x{a.width} vs {b.height}x{b.width})")
    if a.crs == b.crs:
        off = transform_offset_px(a.transform, b.transform, a.width, a.height)
        if off > TRANSFORM_TOLERANCE_PX:
            diffs.append(f"transform (grids differ by up to {off:.3g} px)")
    if bands and a.count != b.count:
        diffs.append(f"band count ({a.count} vs {b.count})")
    return diffs


def _overlap_window(a, b) -> Window:
    """The part of A's pixel grid covered by B's footprint (B's bounds taken into A's CRS)."""
    bounds_b = b.bounds
    if a.crs is not None and b.crs is not None and a.crs != b.crs:
        bounds_b = transform_bounds(b.crs, a.crs, *bounds_b, densify_pts=21)
    win = from_bounds(*bounds_b, transform=a.transform)
    col0 = max(0, math.floor(win.col_off + 1e-6))
    row0 = max(0, math.floor(win.row_off + 1e-6))
    col1 = min(a.width, math.ceil(win.col_off + win.width - 1e-6))
    row1 = min(a.height, math.ceil(win.row_off + win.height - 1e-6))
    if col1 <= col0 or row1 <= row0:
        raise SemisegError(f"{a.name} and {b.name} do not overlap; check that they show the same place")
    return Window(col0, row0, col1 - col0, row1 - row0)


def open_scene(
    paths: Sequence[str | os.PathLike],
    align: str = "error",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
) -> Scene:
    """Check one or more rasters share a grid and describe how to read them onto the first one's grid.

    `align="error"` refuses any difference in CRS, transform (beyond 1e-3 px) or shape, naming what differs;
    `align="reproject"` reads every later date through a `WarpedVRT` (bilinear) onto the first date's grid,
    cut to where the dates overlap. Band counts must match in both modes (warping cannot fix them; `bands`
    can).
    `bands` are 1-based and apply to every date; `nodata` overrides the files' own masks (e.g. for collars).
    """
    if align not in ALIGN_CHOICES:
        raise SemisegError(f"--align {align!r} is not one of {', '.join(ALIGN_CHOICES)}")
    if not paths:
        raise SemisegError("no input raster given")
    handles = []
    try:
        for p in paths:
            handles.append(open_raster(p))
        return _build_scene(handles, align, bands, nodata)
    finally:
        for h in handles:
            h.close()


def _build_scene(handles, align: str, bands, nodata) -> Scene:
    first = handles[0]
    selected = [_select_bands(h, bands) for h in handles]
    for h, sel in zip(handles[1:], selected[1:]):
        if len(sel) != len(selected[0]):
            raise SemisegError(
                f"{first.name} has {len(selected[0])} band(s) but {h.name} has {len(sel)}; "
                "pick the same bands of both with --bands"
            )
    diffs = [[]] + [grid_differences(first, h) for h in handles[1:]]
    if align == "error":
        for h, diff in zip(handles[1:], diffs[1:]):
            if diff:
                raise SemisegError(
                    f"{first.name} and {h.name} differ in {', '.join(diff)}; "
                    "pass --align reproject to warp the later image onto the first one's grid"
                )
    window = Window(0, 0, first.width, first.height)
    for h, diff in zip(handles[1:], diffs[1:]):
        if diff:
            window = window.intersection(_overlap_window(first, h))
    notes = []
    if (window.width, window.height) != (first.width, first.height):
        notes.append(
            f"the dates only partly overlap: predicting on the {int(window.height)}x{int(window.width)} px "
            f"intersection of the {first.height}x{first.width} px first image"
        )
        warnings.warn(notes[-1], stacklevel=3)
    transform = first.window_transform(window)
    height, width = int(window.height), int(window.width)
    sources = [
        _describe_source(h, sel, window, transform, width, height, bool(diff), first.crs, nodata)
        for h, sel, diff in zip(handles, selected, diffs)
    ]
    return Scene(tuple(sources), first.crs, transform, width, height, tuple(notes))


def stretch_for(
    ds, bands: Sequence[int], nodata: float | None = None
) -> tuple[tuple[float, float], ...] | None:
    """The percentile stretch a raster needs to reach 0..255, or None when its bands are already uint8."""
    if all(ds.dtypes[b - 1] == "uint8" for b in bands):
        return None
    return percentile_stretch_params(ds, bands, nodata)


def _describe_source(h, sel, window, transform, width, height, needs_warp, crs, nodata) -> RasterSource:
    stretch = stretch_for(h, sel, nodata)
    if not needs_warp:
        return RasterSource(str(h.name), sel, int(window.row_off), int(window.col_off), None, stretch, nodata)
    if crs is None:
        raise SemisegError(
            f"{h.name} cannot be reprojected: the first image has no CRS; georeference it first"
        )
    # Without nodata, coverage travels in an alpha band: the file's own alpha if it has one, else a new one.
    src_alpha = next((i + 1 for i, ci in enumerate(h.colorinterp) if ci == ColorInterp.alpha), 0)
    add_alpha = h.nodata is None and src_alpha == 0
    warp = Warp(crs.to_wkt(), tuple(transform)[:6], width, height, add_alpha, src_alpha)
    return RasterSource(str(h.name), sel, 0, 0, warp, stretch, nodata)


def open_pair(
    before: str | os.PathLike,
    after: str | os.PathLike,
    align: str = "error",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
) -> Scene:
    """`open_scene([before, after], ...)`: a before/after scene for change detection (public convenience)."""
    return open_scene([before, after], align=align, bands=bands, nodata=nodata)


def open_single(
    image: str | os.PathLike, bands: Sequence[int] | None = None, nodata: float | None = None
) -> Scene:
    """`open_scene([image], ...)`: a one-image scene for segmentation (public convenience)."""
    return open_scene([image], bands=bands, nodata=nodata)


def read_window(
    handle: rasterio.io.DatasetReaderBase, source: RasterSource, row: int, col: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of the output grid from one source: uint8 C x height x width and a bool validity mask.

    Parts of the window outside the file (rasters smaller than a window) are zero-filled and invalid; padding
    is done here rather than with `boundless=True` because `WarpedVRT` does not support boundless reads.
    """
    r0, c0 = row + source.row_off, col + source.col_off
    r1, c1 = min(r0 + height, handle.height), min(c0 + width, handle.width)
    image = np.zeros((len(source.bands), height, width), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    if r1 <= r0 or c1 <= c0:
        return image, valid
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data = handle.read(list(source.bands), window=win)
    image[:, : r1 - r0, : c1 - c0] = apply_stretch(data, source.stretch)
    if source.nodata is not None:
        valid[: r1 - r0, : c1 - c0] = _valid_from(handle, data, list(source.bands), source.nodata)
    else:
        masks = handle.read_masks(list(source.bands), window=win)
        valid[: r1 - r0, : c1 - c0] = np.all(masks > 0, axis=0)
    return image, valid
