"""Read before/after images of any band count and dtype as the uint8 H x W x C arrays every dataset returns.

Used by tile folders of N-band GeoTIFFs (the `change_tiles` layout with `.tif` tiles and `data.bands`) and by
OSCD. Both dates go through one stretch (`semiseg.geo.pair.stretch_limits`, the rule prediction uses too): uint8
as is; otherwise `data.stretch` (`auto`/`shared`: the pair's pooled 2-98 % percentiles per band; better, fixed
per-band limits for the whole dataset, so every tile is scaled alike: `semicd band-stats` given the tile files
themselves writes them as `fixed:MIN,MAX;...`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semiseg.errors import SemisegError


def read_band_pair(
    paths: Sequence[Path], bands: Sequence[int] | None, stretch: str
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(images H x W x C uint8, valid H x W bool or None) of co-registered single-file dates."""
    import rasterio

    from semiseg.geo.pair import apply_stretch, parse_stretch, select_bands, stretch_limits, validity

    handles = [rasterio.open(p) for p in paths]
    try:
        selected = [select_bands(h, bands) for h in handles]
        shapes = {(h.height, h.width) for h in handles}
        if len(shapes) > 1 or len({len(s) for s in selected}) > 1:
            raise SemisegError(f"{paths[0]} and {paths[1]} differ in size or band count: tiles must match")
        limits, _ = stretch_limits(handles, selected, None, parse_stretch(stretch))
        images, valid = [], None
        for handle, chosen, lim in zip(handles, selected, limits):
            data = handle.read(list(chosen))
            marked, finite = validity(handle, data, chosen, None)
            ok = marked & finite
            valid = ok if valid is None else valid & ok
            images.append(np.ascontiguousarray(apply_stretch(data, lim).transpose(1, 2, 0)))
    finally:
        for handle in handles:
            handle.close()
    return images, None if valid is None or valid.all() else valid


def stack_bands(files: Sequence[Path], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Single-band files (one per spectral band, possibly at coarser resolutions) stacked on one grid of `size`
    (rows, cols): coarser bands are resampled bilinearly, as OSCD's 20 m and 60 m bands onto its 10 m grid.
    Returns (bands x H x W float32, valid H x W)."""
    import rasterio
    from rasterio.enums import Resampling

    out = np.empty((len(files), *size), np.float32)
    valid = np.ones(size, bool)
    for i, path in enumerate(files):
        with rasterio.open(path) as ds:
            resampling = Resampling.nearest if (ds.height, ds.width) == size else Resampling.bilinear
            out[i] = ds.read(1, out_shape=size, resampling=resampling)
            if ds.nodata is not None and not np.isnan(ds.nodata):
                valid &= out[i] != ds.nodata
        valid &= np.isfinite(out[i])  # NaN/Inf never reach a model, whatever the tags say
    return out, valid


def stretch_arrays(dates: Sequence[np.ndarray], valid: np.ndarray, stretch: str) -> list[np.ndarray]:
    """Non-8-bit dates (bands x H x W) -> uint8 H x W x bands under `stretch`, as `stretch_limits` does for files:
    `fixed` limits as given, `per-date` percentiles per date, `none` clipping, else (`auto`, `shared`) the dates'
    pooled 2-98 % percentiles per band."""
    from semiseg.geo.pair import apply_stretch, parse_stretch, rule_limits

    rule = parse_stretch(stretch)
    mode = "shared" if rule.mode == "auto" else rule.mode
    limits = rule_limits(
        mode, rule, dates[0].shape[0], len(dates), lambda: [[b[valid] for b in d] for d in dates]
    )
    return [np.ascontiguousarray(apply_stretch(d, lim).transpose(1, 2, 0)) for d, lim in zip(dates, limits)]
