"""A static tile pyramid of a scene's rasters, for the web map `semiseg.view` writes (`<layer>/<z>/<x>/<y>.<ext>`).

Geometry: level `z` has 2^z x 2^z tiles of `TILE` px over a square whose top-left corner is the scene's; the
deepest level (`full_level`) shows one scene pixel per tile pixel, each level above halves the resolution, and
level 0 is the whole scene in one tile. Tile rows count from the bottom (the TMS convention, which Bokeh's
`TMSTileSource` reads with `x_origin_offset`/`y_origin_offset`/`initial_resolution` set from `Pyramid`), so the
map's coordinates are the scene's own CRS coordinates: no reprojection, no web-mercator.

Reading: every tile is one windowed, decimated rasterio read of the scene pixels it covers (`out_shape`), so GDAL
serves coarse levels from a COG's overviews instead of full-resolution pixels. Imagery is averaged, class maps
and probabilities take the nearest pixel (classes stay classes). Nodata is transparent; tiles without a single
visible pixel are not written (the map shows nothing there either way).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from semiseg.errors import SemisegError, error_reason
from semiseg.geo.gdal_errors import GDAL_ERRORS
from semiseg.geo.pair import RasterSource, apply_stretch, validity

TILE = 256
SQUARE_PIXEL_TOLERANCE = (
    0.01  # relative difference of a pixel's width and height the map still draws as square
)


@dataclass(frozen=True)
class Pyramid:
    """Where the tiles of a `width` x `height` px scene lie: `levels` 0..max_level, of which `full_level` would
    show full resolution (`max_level` is lower when the pyramid is cut short)."""

    width: int
    height: int
    left: float
    top: float
    pixel_size: float
    full_level: int
    max_level: int

    @property
    def initial_resolution(self) -> float:
        """CRS units per tile pixel at level 0."""
        return self.pixel_size * 2**self.full_level

    @property
    def bottom_of_square(self) -> float:
        return self.top - TILE * self.initial_resolution

    def scene_pixels_per_tile(self, level: int) -> int:
        return TILE * 2 ** (self.full_level - level)

    def tiles(self, level: int) -> Iterator[tuple[int, int, Window]]:
        """(x, tms_y, scene window) of every tile of `level` that covers part of the scene."""
        side = self.scene_pixels_per_tile(level)
        rows, cols = math.ceil(self.height / side), math.ceil(self.width / side)
        for r in range(rows):
            for c in range(cols):
                yield c, 2**level - 1 - r, Window(c * side, r * side, side, side)

    def count(self, max_level: int | None = None) -> int:
        """Tiles per layer over levels 0..`max_level` (default: this pyramid's)."""
        top = self.max_level if max_level is None else max_level
        return sum(
            math.ceil(self.height / self.scene_pixels_per_tile(z))
            * math.ceil(self.width / self.scene_pixels_per_tile(z))
            for z in range(top + 1)
        )


def make_pyramid(width: int, height: int, transform, max_level: int | None = None) -> Pyramid:
    """The pyramid of a north-up raster with square pixels (what a map of CRS coordinates can draw)."""
    if transform.b or transform.d:
        raise SemisegError(
            "the viewer needs a north-up raster (its transform is rotated or sheared); warp it first"
        )
    px, py = abs(transform.a), abs(transform.e)
    if abs(px - py) > SQUARE_PIXEL_TOLERANCE * max(px, py):
        raise SemisegError(
            f"the viewer needs square pixels; this raster's are {px:g} x {py:g} CRS units: warp it to square ones"
        )
    full = max(0, math.ceil(math.log2(max(width, height) / TILE)))
    top = full if max_level is None else max_level
    if not 0 <= top <= full:
        raise SemisegError(
            f"--max-zoom {max_level}: levels go from 0 (whole scene in one tile) to {full} (full resolution)"
        )
    return Pyramid(width, height, transform.c, transform.f, px, full, top)


TileImage = Callable[
    [Window, tuple[int, int]], np.ndarray | None
]  # (scene window, tile px shape) -> RGBA or None


def image_tile_reader(handle, source: RasterSource, height: int, width: int) -> TileImage:
    """Tiles of one date of a scene: its bands stretched to 8 bits as the scene says (one rule for every date),
    grey repeated to RGB, invalid pixels transparent."""
    bands = list(source.bands[:3])

    def read(window: Window, shape: tuple[int, int]) -> np.ndarray:
        win = _on_file(window, source, height, width)
        out = (len(bands), *shape)
        data = handle.read(bands, window=win, out_shape=out, resampling=Resampling.average)
        marked, finite = validity(handle, data, bands, source.nodata, window=win, out_shape=out)
        rgb = apply_stretch(data, None if source.stretch is None else source.stretch[: len(bands)])
        if len(bands) < 3:
            rgb = np.repeat(rgb[:1], 3, 0)
        alpha = np.where(marked & finite, 255, 0).astype(np.uint8)
        return np.concatenate([rgb, alpha[None]]).transpose(1, 2, 0)

    return read


def lookup_tile_reader(handle, colours: np.ndarray) -> TileImage:
    """Tiles of a one-band uint8 raster (classes, probabilities) through a 256 x 4 RGBA colour table; tiles with
    nothing visible come back as None."""

    def read(window: Window, shape: tuple[int, int]) -> np.ndarray | None:
        h, w = _clipped_size(window, handle.height, handle.width)
        win = Window(window.col_off, window.row_off, w, h)
        values = handle.read(1, window=win, out_shape=shape, resampling=Resampling.nearest)
        rgba = colours[values]
        return rgba if rgba[..., 3].any() else None

    return read


def _on_file(window: Window, source: RasterSource, height: int, width: int) -> Window:
    """A scene window, cut to the scene, in the file's own pixel grid."""
    h, w = _clipped_size(window, height, width)
    return Window(window.col_off + source.col_off, window.row_off + source.row_off, w, h)


def _clipped_size(window: Window, height: int, width: int) -> tuple[int, int]:
    return (
        int(min(window.height, height - window.row_off)),
        int(min(window.width, width - window.col_off)),
    )


def write_layer(
    pyramid: Pyramid, folder: Path, read: TileImage, fmt: str, progress: Callable[[int], None] | None = None
) -> int:
    """Write every level of one layer under `folder/<z>/<x>/<y>.<fmt>`; return the number of files written.

    `fmt`: `webp` (photographs: lossy, with alpha) or `png` (classes: lossless, crisp edges).
    """
    written = 0
    for level in range(pyramid.max_level + 1):
        side = pyramid.scene_pixels_per_tile(level)
        for x, y, window in pyramid.tiles(level):
            h, w = _clipped_size(window, pyramid.height, pyramid.width)
            shape = (max(1, round(h * TILE / side)), max(1, round(w * TILE / side)))
            try:
                rgba = read(window, shape)
            except GDAL_ERRORS as exc:
                raise SemisegError(
                    f"reading the pixels of tile {level}/{x}/{y} failed ({error_reason(exc)}); the file may be damaged"
                ) from None
            if progress is not None:
                progress(1)
            if rgba is None or not rgba[..., 3].any():
                continue
            tile = np.zeros(
                (TILE, TILE, 4), dtype=np.uint8
            )  # the scene's edge: the rest of the tile is empty
            tile[: shape[0], : shape[1]] = rgba
            path = folder / str(level) / str(x) / f"{y}.{fmt}"
            os.makedirs(path.parent, exist_ok=True)
            image = Image.fromarray(tile, mode="RGBA")
            if fmt == "webp":
                image.save(path, format="WEBP", quality=80, method=2)
            else:
                image.save(path, format="PNG", compress_level=1)
            written += 1
    return written
