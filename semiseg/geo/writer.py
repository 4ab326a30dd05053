"""Write prediction rasters safely: tiled, compressed, georeferenced, with overviews, and all-or-nothing.

Rows are streamed into a temporary tiled GTiff next to the output; when the run finishes, overviews are built
(nearest, so classes stay classes) and the file is copied to a Cloud-Optimised GeoTIFF, which is moved onto
the output path with `os.replace` as the very last step. Any exception, Ctrl-C included, deletes the temporary
files, so an output path either holds a complete result or nothing new.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling

from semiseg.errors import SemisegError
from semiseg.io import remove_quietly, temp_path_for

# Every raster we write: 255 is nodata, probabilities are stored as round(p * 254) so they never collide with it.
NODATA = 255
PROB_SCALE = 254.0
BLOCK = 512
OVERVIEW_FACTORS = (2, 4, 8, 16, 32, 64)


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse an output whose folder is missing or read-only, or which is a folder, before any compute."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise SemisegError(f"the folder of the {what} {p} does not exist; create it first")
    if p.is_dir():
        raise SemisegError(f"the {what} {p} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise SemisegError(f"cannot write the {what} into {folder}: permission denied")
    return p


def class_colormap(num_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """Colours for class values: change maps get transparent 0 / red 1; K classes get a fixed distinct
    palette.

    The K-class palette is the bit-interleaving one Pascal VOC made familiar (class 0 black), so the same
    class always gets the same colour. Nodata (255) is transparent.
    """
    cmap: dict[int, tuple[int, int, int, int]] = {}
    if num_classes <= 2:
        cmap = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255)}
    else:
        for c in range(min(num_classes, NODATA)):
            r = g = b = 0
            v = c
            for shift in range(7, -1, -1):
                r |= ((v >> 0) & 1) << shift
                g |= ((v >> 1) & 1) << shift
                b |= ((v >> 2) & 1) << shift
                v >>= 3
            cmap[c] = (r, g, b, 255)
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def overview_factors(height: int, width: int) -> list[int]:
    """Factors 2, 4, 8... while the overview keeps at least a few pixels; at least [2] so viewers get one."""
    factors = [f for f in OVERVIEW_FACTORS if max(height, width) // f >= 8]
    return factors or [2]


class StreamingGeoTiff:
    """A single-band uint8 raster written strip by strip, published atomically as a COG on `finish()`.

    Use as a context manager: leaving the block with an exception removes every temporary file; leaving it
    normally without `publish()` does too (the result was not declared complete).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        crs,
        transform: Affine,
        tags: Mapping[str, object] | None = None,
        nodata: int = NODATA,
    ) -> None:
        self.path = Path(path)
        self.tmp = temp_path_for(self.path, ".tif")
        self.cog_tmp = temp_path_for(self.path, ".tif")
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.profile = dict(
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=BLOCK,
            blockysize=BLOCK,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        self.ds = None
        self.done = False

    def __enter__(self) -> StreamingGeoTiff:
        self.ds = rasterio.open(self.tmp, "w", **self.profile)
        return self

    def write_rows(self, row: int, data: np.ndarray) -> None:
        """Write an n x width uint8 block starting at raster row `row`."""
        if data.shape[0]:
            self.ds.write(data, 1, window=rasterio.windows.Window(0, row, data.shape[1], data.shape[0]))

    def finish(self, colormap: Mapping[int, tuple[int, ...]] | None = None, extra_tags=None) -> Path:
        """Add colour map, tags and overviews and convert to a COG, still under a temporary name (returned).

        Publishing is a separate step (`publish`) so a caller writing several outputs can finish them all,
        derive polygons from the finished files, and only then move everything into place.
        """
        if colormap:
            self.ds.write_colormap(1, dict(colormap))
        tags = {k: str(v) for k, v in (extra_tags or {}).items()}
        tags.update(self.tags)  # tags the caller passed win over defaults filled in at the end
        self.ds.update_tags(**tags)
        self.ds.close()
        with rasterio.open(self.tmp, "r+") as ds:
            ds.build_overviews(overview_factors(ds.height, ds.width), Resampling.nearest)
        rasterio.shutil.copy(
            self.tmp,
            self.cog_tmp,
            driver="COG",
            compress="DEFLATE",
            blocksize=BLOCK,
            overview_resampling="NEAREST",
            BIGTIFF="IF_SAFER",
        )
        remove_quietly([self.tmp])
        return self.cog_tmp

    def publish(self) -> Path:
        """Move the finished COG onto the output path (atomic within one folder)."""
        os.replace(self.cog_tmp, self.path)
        self.done = True
        self.cleanup()
        return self.path

    def cleanup(self) -> None:
        """Close and delete the temporary files (never the published output)."""
        if self.ds is not None and not self.ds.closed:
            self.ds.close()
        remove_quietly([self.tmp, self.cog_tmp, Path(f"{self.tmp}.aux.xml"), Path(f"{self.cog_tmp}.aux.xml")])

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.cleanup()
