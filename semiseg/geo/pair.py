"""Open the rasters of one scene (a single image, or a before/after pair) and check they share one pixel grid.

Everything here runs before any compute so a user learns about a mismatched pair in a second, not after an
hour of inference. The result is a `Scene`: picklable descriptions (`RasterSource`) of how to read each date
on a common output grid, so DataLoader workers can reopen the files themselves (rasterio handles cannot be
pickled).

Input scaling (`StretchRule`): the models see 8-bit imagery, so uint8 bands are used as they are, and any other
dtype (uint16, float...) is mapped to 0..255 by a linear stretch per band. By default its limits are the 2-98 %
percentiles of all dates pooled (`shared`), computed once on a decimated read: one mapping for every date, so the
stretch itself cannot create or hide change. `per-date` gives each date its own percentiles (it also absorbs
part of a radiometric difference between acquisitions, and with it some real change); `fixed:MIN,MAX` maps a
known range (e.g. reflectance 0..3000) the same way for every scene; `none` clips the values to 0..255.

Validity: a pixel is valid where the file's mask says so (nodata value, alpha band, internal mask) and, for float
data, where every selected band is finite: NaN and Inf are never fed to a model, whatever the file's tags say.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from semiseg.errors import SemisegError, error_reason
from semiseg.geo.crs import equivalent_crs, short_crs
from semiseg.geo.gdal_errors import GDAL_ERRORS

ALIGN_CHOICES = ("error", "reproject")
TRANSFORM_TOLERANCE_PX = 1e-3
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIZE = 1024  # longest side of the decimated read used for the percentile stretch
STRETCH_MODES = ("auto", "shared", "per-date", "none")  # and fixed:MIN,MAX
MIN_STRETCH_SAMPLES = (
    1000  # fewer valid values in the decimated read than this: percentiles come from a full read
)


@dataclass(frozen=True)
class StretchRule:
    """How non-8-bit bands reach 0..255: `auto` (uint8 as is, anything else `shared`), `shared`, `per-date`,
    `none` (clip) or `fixed` limits: one (low, high) pair for every band, or one pair per band (see the module
    docstring for why `shared` is the default)."""

    mode: str = "auto"
    limits: tuple[tuple[float, float], ...] = ()

    def __str__(self) -> str:
        if self.mode != "fixed":
            return self.mode
        return "fixed:" + ";".join(f"{lo:g},{hi:g}" for lo, hi in self.limits)

    def fixed_limits(self, bands: int) -> tuple[tuple[float, float], ...]:
        """Per-band limits of a `fixed` rule for `bands` bands: its one pair repeated, or its pairs if they fit."""
        if len(self.limits) == 1:
            return self.limits * bands
        if len(self.limits) != bands:
            raise SemisegError(
                f"the stretch {self} gives {len(self.limits)} (MIN,MAX) pairs for {bands} band(s): give one pair "
                "for every band, or a single pair for all"
            )
        return self.limits


def parse_stretch(text: str | StretchRule | None) -> StretchRule:
    """`auto`, `shared`, `per-date`, `none`, `fixed:MIN,MAX` or `fixed:MIN,MAX;MIN,MAX;...` (one pair per band)
    -> a `StretchRule`, or a one-line error."""
    if isinstance(text, StretchRule):
        return text
    text = (text or "auto").strip()
    if text in STRETCH_MODES:
        return StretchRule(text)
    if text.startswith("fixed:"):
        limits = []
        for part in text[len("fixed:") :].split(";"):
            try:
                low, high = (float(v) for v in part.split(","))
            except ValueError:
                low = high = math.nan
            if not (math.isfinite(low) and math.isfinite(high) and high > low):
                break
            limits.append((low, high))
        else:
            return StretchRule("fixed", tuple(limits))
    raise SemisegError(
        f"stretch {text!r} is not one of {', '.join(STRETCH_MODES)}, fixed:MIN,MAX or fixed:MIN,MAX;MIN,MAX;... "
        "(one pair per band) with every MIN < MAX (e.g. fixed:0,3000)"
    )


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
    date: str | None = None


@dataclass(frozen=True)
class Scene:
    """The output grid (CRS, transform, size) and the sources read onto it, in date order.

    `stretch` says how the inputs were brought to 0..255 (the rule, and each date's limits per band), for the
    outputs' tags and the run summary.
    """

    sources: tuple[RasterSource, ...]
    crs: rasterio.crs.CRS | None
    transform: Affine
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())
    stretch: str = "none"

    @property
    def num_bands(self) -> int:
        return len(self.sources[0].bands)


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
    except GDAL_ERRORS as exc:
        raise SemisegError(
            f"{what} {p} is not a readable raster ({error_reason(exc)}); pass a GeoTIFF file"
        ) from exc
    try:
        # A tiny decimated read touches the file's structure, so a truncated/corrupt TIFF fails here, early.
        ds.read(1, out_shape=(min(ds.height, 64), min(ds.width, 64)))
    except GDAL_ERRORS as exc:
        ds.close()
        raise SemisegError(f"{p} cannot be read, it may be corrupt ({error_reason(exc)})") from exc
    return ds


def select_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The user's 1-based bands, or every band but an alpha band (alpha is read as the validity mask instead)."""
    if bands is None:
        alpha = {i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha}
        return tuple(b for b in range(1, ds.count + 1) if b not in alpha) or tuple(range(1, ds.count + 1))
    bad = [b for b in bands if not 1 <= int(b) <= ds.count]
    if bad or not bands:
        raise SemisegError(
            f"--bands {list(bands)} is invalid for {ds.name}, which has {ds.count} band(s) numbered from 1"
        )
    return tuple(int(b) for b in bands)


def stretch_samples(
    ds: rasterio.io.DatasetReaderBase,
    bands: Sequence[int],
    nodata: float | None = None,
    sample_size: int = STRETCH_SAMPLE_SIZE,
) -> list[np.ndarray]:
    """Valid, finite values of each band from a decimated read (longest side `sample_size`), as float64.

    A regular subsample keeps percentiles stable while the cost stays the same for any scene size.
    """
    scale = max(ds.width, ds.height) / sample_size
    out_h = max(1, math.ceil(ds.height / max(scale, 1.0)))
    out_w = max(1, math.ceil(ds.width / max(scale, 1.0)))
    shape = (len(bands), out_h, out_w)
    data = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest)
    marked, finite = validity(ds, data, bands, nodata, out_shape=shape)
    samples = [band[marked & finite].astype(np.float64) for band in data]
    if scale > 1 and samples[0].size < MIN_STRETCH_SAMPLES:  # too sparse for the decimated read: read it all
        samples = _full_resolution_samples(ds, bands, nodata, limit=sample_size * sample_size)
    return samples


def _full_resolution_samples(ds, bands: Sequence[int], nodata: float | None, limit: int) -> list[np.ndarray]:
    """Valid values of each band from a full read, block by block, keeping at most about `limit` per band."""
    parts: list[list[np.ndarray]] = [[] for _ in bands]
    for _, window in ds.block_windows(1):
        data = ds.read(list(bands), window=window)
        marked, finite = validity(ds, data, bands, nodata, window=window)
        for i, band in enumerate(data):
            parts[i].append(band[marked & finite].astype(np.float64))
    samples = [np.concatenate(p) if p else np.zeros(0) for p in parts]
    return [v[:: max(1, v.size // limit)] for v in samples]


def percentile_limits(
    samples: Sequence[np.ndarray], percentiles: tuple[float, float] = STRETCH_PERCENTILES
) -> tuple[tuple[float, float], ...]:
    """Per-band (low, high) at the given percentiles; (0, 1) for a band without a valid value."""
    limits = []
    for values in samples:
        if values.size == 0:
            limits.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(values, percentiles)
        limits.append((float(lo), float(hi if hi > lo else lo + 1.0)))
    return tuple(limits)


def percentile_stretch_params(
    ds: rasterio.io.DatasetReaderBase,
    bands: Sequence[int],
    nodata: float | None = None,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    sample_size: int = STRETCH_SAMPLE_SIZE,
) -> tuple[tuple[float, float], ...]:
    """Per-band (low, high) values of a 2-98 % percentile stretch of one raster, robust to a few saturated or
    dark outliers (see `stretch_samples`)."""
    return percentile_limits(stretch_samples(ds, bands, nodata, sample_size), percentiles)


def validity(
    handle, data: np.ndarray, bands: Sequence[int], nodata: float | None = None, **read: object
) -> tuple[np.ndarray, np.ndarray]:
    """(marked, finite) per pixel of `data` read from `handle`: all bands marked valid by the file's masks (or
    `!= nodata` when the user overrides them), and all bands finite (always true for integer data). A pixel is
    valid where both hold; `read` passes the same `window` or `out_shape` the data was read with."""
    if nodata is not None:
        marked = np.all(data != nodata, axis=0)
    else:
        masks = handle.read_masks(list(bands), resampling=Resampling.nearest, **read)
        marked = np.all(masks > 0, axis=0)
    finite = (
        np.all(np.isfinite(data), axis=0) if np.issubdtype(data.dtype, np.floating) else np.ones_like(marked)
    )
    return marked, finite


def apply_stretch(data: np.ndarray, stretch: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """Bring band data (C x h x w) to uint8 0..255: as is for uint8 (no stretch), else linearly stretched."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, (lo, hi) in enumerate(stretch):
        band = (data[i].astype(np.float32) - lo) * (255.0 / (hi - lo))
        np.nan_to_num(band, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
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


def grid_differences(a, b, bands: bool = False) -> list[str]:
    """What keeps raster `b` off raster `a`'s pixel grid (CRS, shape, transform; band count if `bands`).

    CRSs that differ only in spelling (`equivalent_crs`) are the same grid here; `crs_spelling_note` warns.
    """
    diffs = []
    same_crs = equivalent_crs(a.crs, b.crs)
    if not same_crs:
        diffs.append(f"CRS ({short_crs(a.crs)} vs {short_crs(b.crs)})")
    if (a.height, a.width) != (b.height, b.width):
        diffs.append(f"shape ({a.height}x{a.width} vs {b.height}x{b.width})")
    if same_crs:
        off = transform_offset_px(a.transform, b.transform, a.width, a.height)
        if off > TRANSFORM_TOLERANCE_PX:
            diffs.append(f"transform (grids differ by up to {off:.3g} px)")
    if bands and a.count != b.count:
        diffs.append(f"band count ({a.count} vs {b.count})")
    return diffs


def crs_spelling_note(a, b) -> str | None:
    """A warning when `a` and `b` write one CRS two ways (used as one grid), else None."""
    if a.crs == b.crs or not equivalent_crs(a.crs, b.crs):
        return None
    return (
        f"{Path(a.name).name} and {Path(b.name).name} write their CRS differently ({short_crs(a.crs)} vs "
        f"{short_crs(b.crs)}) but with the same ellipsoid, projection and parameters: used as one grid"
    )


def _overlap_window(a, b) -> Window:
    """The part of A's pixel grid covered by B's footprint (B's bounds taken into A's CRS)."""
    bounds_b = b.bounds
    if a.crs is not None and b.crs is not None and not equivalent_crs(a.crs, b.crs):
        try:
            bounds_b = transform_bounds(b.crs, a.crs, *bounds_b, densify_pts=21)
        except GDAL_ERRORS as exc:  # e.g. a local (engineering) CRS: no transformation
            raise SemisegError(
                f"{b.name} cannot be reprojected from {short_crs(b.crs)} to {short_crs(a.crs)} "
                f"({error_reason(exc)}); georeference both in one CRS first"
            ) from None
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
    stretch: str | StretchRule | None = "auto",
) -> Scene:
    """Check one or more rasters share a grid and describe how to read them onto the first one's grid.

    `align="error"` refuses any difference in CRS, transform (beyond 1e-3 px) or shape, naming what differs;
    `align="reproject"` reads every later date through a `WarpedVRT` (bilinear) onto the first date's grid,
    cut to where the dates overlap. Band counts must match in both modes (warping cannot fix them; `bands`
    can). CRSs spelled differently but equivalent are one grid, with a warning.
    `bands` are 1-based and apply to every date (default: all bands but alpha); `nodata` overrides the files' own
    masks (e.g. for collars); `stretch` is a `StretchRule` or its text (see the module docstring).
    """
    if align not in ALIGN_CHOICES:
        raise SemisegError(f"--align {align!r} is not one of {', '.join(ALIGN_CHOICES)}")
    if not paths:
        raise SemisegError("no input raster given")
    rule = parse_stretch(stretch)
    handles = []
    try:
        for p in paths:
            handles.append(open_raster(p))
        return _build_scene(handles, align, bands, nodata, rule)
    finally:
        for h in handles:
            h.close()


def _build_scene(handles, align: str, bands, nodata, rule: StretchRule) -> Scene:
    first = handles[0]
    selected = [select_bands(h, bands) for h in handles]
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
    notes = [n for n in (crs_spelling_note(first, h) for h in handles[1:]) if n]
    window = Window(0, 0, first.width, first.height)
    for h, diff in zip(handles[1:], diffs[1:]):
        if diff:
            window = window.intersection(_overlap_window(first, h))
    if (window.width, window.height) != (first.width, first.height):
        notes.append(
            f"the dates only partly overlap: predicting on the {int(window.height)}x{int(window.width)} px "
            f"intersection of the {first.height}x{first.width} px first image"
        )
    limits, stretch_text = stretch_limits(handles, selected, nodata, rule)
    if stretch_text != "none":
        notes.append(f"input values brought to 0..255 by {stretch_text}")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    transform = first.window_transform(window)
    height, width = int(window.height), int(window.width)
    sources = [
        _describe_source(h, sel, window, transform, width, height, bool(diff), first.crs, nodata, lim)
        for h, sel, diff, lim in zip(handles, selected, diffs, limits)
    ]
    return Scene(tuple(sources), first.crs, transform, width, height, tuple(notes), stretch_text)


def rule_limits(
    mode: str,
    rule: StretchRule,
    bands: int,
    dates: int,
    samples: Callable[[], list[list[np.ndarray]]],
) -> list[tuple[tuple[float, float], ...]]:
    """Each date's per-band (low, high) under a resolved `mode` (`auto` already decided): `none` clips to
    0..255, `fixed` takes the rule's limits, `per-date` each date's own percentiles, anything else the dates'
    pooled percentiles. `samples()` (valid values per date and band) is only called for the percentile modes, so
    files are read only when needed. Shared by files (`stretch_limits`) and arrays (`semicd.data.multiband`)."""
    if mode == "none":
        return [((0.0, 255.0),) * bands] * dates
    if mode == "fixed":
        return [rule.fixed_limits(bands)] * dates
    values = samples()
    if mode == "per-date":
        return [percentile_limits(date) for date in values]
    return [percentile_limits([np.concatenate(band) for band in zip(*values)])] * dates


def stretch_limits(
    handles: Sequence, selected: Sequence[Sequence[int]], nodata: float | None, rule: StretchRule
) -> tuple[list, str]:
    """Each date's per-band (low, high) limits under `rule` (None: uint8 used as is) and a sentence saying so.

    Shared by prediction and by training on a scene, so a model sees its scene the same way in both.
    """
    all_uint8 = all(h.dtypes[b - 1] == "uint8" for h, sel in zip(handles, selected) for b in sel)
    mode = ("none" if all_uint8 else "shared") if rule.mode == "auto" else rule.mode
    dtypes = ", ".join(sorted({h.dtypes[b - 1] for h, sel in zip(handles, selected) for b in sel}))
    if mode == "none" and all_uint8:
        return [None] * len(handles), "none"
    limits = rule_limits(
        mode, rule, len(selected[0]), len(handles),
        lambda: [stretch_samples(h, sel, nodata) for h, sel in zip(handles, selected)],
    )  # fmt: skip
    if mode == "none":
        return limits, f"clipping the {dtypes} values to 0..255 (stretch none)"
    if mode == "fixed":
        shown = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in dict.fromkeys(limits[0]))
        return limits, f"a fixed stretch of the {dtypes} values {shown}"
    if len(handles) == 1:
        mode, who = "percentile", "the image's"
    else:
        who = "each date's own" if mode == "per-date" else "the pooled dates'"
    per_date = [", ".join(f"{lo:.4g}..{hi:.4g}" for lo, hi in lim) for lim in limits]
    shown = (
        per_date[0]
        if len(set(per_date)) == 1
        else "; ".join(f"date {i + 1}: {t}" for i, t in enumerate(per_date))
    )
    lo_p, hi_p = STRETCH_PERCENTILES
    return (
        limits,
        f"a {mode} stretch of the {dtypes} values to {who} {lo_p:g}-{hi_p:g} % percentiles (per band: {shown})",
    )


def _raster_date(h) -> str | None:
    """The acquisition date a raster states (GDAL's IMAGERY domain, else the TIFF DateTime tag), if any."""
    try:
        date = h.tags(ns="IMAGERY").get("ACQUISITIONDATETIME")
    except (RasterioError, ValueError):
        date = None
    return date or h.tags().get("TIFFTAG_DATETIME") or None


def _describe_source(
    h, sel, window, transform, width, height, needs_warp, crs, nodata, stretch
) -> RasterSource:
    date = _raster_date(h)
    if not needs_warp:
        return RasterSource(
            str(h.name), sel, int(window.row_off), int(window.col_off), None, stretch, nodata, date
        )
    if crs is None:
        raise SemisegError(
            f"{h.name} cannot be reprojected: the first image has no CRS; georeference it first"
        )
    # Without nodata, coverage travels in an alpha band: the file's own alpha if it has one, else a new one.
    src_alpha = next((i + 1 for i, ci in enumerate(h.colorinterp) if ci == ColorInterp.alpha), 0)
    add_alpha = h.nodata is None and src_alpha == 0
    warp = Warp(crs.to_wkt(), tuple(transform)[:6], width, height, add_alpha, src_alpha)
    return RasterSource(str(h.name), sel, 0, 0, warp, stretch, nodata, date)


def open_pair(
    before: str | os.PathLike,
    after: str | os.PathLike,
    align: str = "error",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    stretch: str | StretchRule | None = "auto",
) -> Scene:
    """`open_scene([before, after], ...)`: a before/after scene for change detection (public convenience)."""
    return open_scene([before, after], align=align, bands=bands, nodata=nodata, stretch=stretch)


def open_single(
    image: str | os.PathLike,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    stretch: str | StretchRule | None = "auto",
) -> Scene:
    """`open_scene([image], ...)`: a one-image scene for segmentation (public convenience)."""
    return open_scene([image], bands=bands, nodata=nodata, stretch=stretch)


def read_window(
    handle: rasterio.io.DatasetReaderBase, source: RasterSource, row: int, col: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a window of the output grid from one source: uint8 C x height x width, a bool validity mask, and a
    bool mask of the pixels the file marks valid but whose values are NaN or infinite (counted for the summary).

    Parts of the window outside the file (rasters smaller than a window) are zero-filled and invalid; padding
    is done here rather than with `boundless=True` because `WarpedVRT` does not support boundless reads.
    """
    r0, c0 = row + source.row_off, col + source.col_off
    r1, c1 = min(r0 + height, handle.height), min(c0 + width, handle.width)
    image = np.zeros((len(source.bands), height, width), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    nonfinite = np.zeros((height, width), dtype=bool)
    if r1 <= r0 or c1 <= c0:
        return image, valid, nonfinite
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data = handle.read(list(source.bands), window=win)
    image[:, : r1 - r0, : c1 - c0] = apply_stretch(data, source.stretch)
    marked, finite = validity(handle, data, source.bands, source.nodata, window=win)
    valid[: r1 - r0, : c1 - c0] = marked & finite
    nonfinite[: r1 - r0, : c1 - c0] = marked & ~finite
    return image, valid, nonfinite
