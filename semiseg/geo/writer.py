"""Write prediction rasters safely: tiled, compressed, georeferenced, with overviews, and all-or-nothing.

Rows are streamed into a temporary tiled GTiff next to the output; when the run finishes, overviews are built
(nearest, so classes stay classes) and the file is copied to a Cloud-Optimised GeoTIFF, which is moved onto
the output path with `os.replace` as the very last step (its sidecar styles just before it). Any exception,
Ctrl-C and SIGTERM included, deletes the temporary files, so an output path either holds a complete result or
nothing new; a write that fails for lack of space (or a file-size limit) says so in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling

from semiseg.errors import SemisegError, error_reason
from semiseg.geo.gdal_errors import GDAL_ERRORS
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


NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
NEARLY_FULL_BYTES = 16 * 2**20  # below this much free space after a failed write, the disk is the cause


@contextlib.contextmanager
def writing(path: str | os.PathLike, needed_bytes: int = 0) -> Iterator[None]:
    """Turn a failed write of `path` into one line that says why: no space, a file-size limit, or GDAL's reason.

    GDAL rarely reports a full disk or a file-size limit (`ulimit -f`) as such: libtiff's write fails, and the
    error surfaces later as an unreadable block. So after a failure the free space and the limit are checked too
    (see `_write_failure`); GDAL's own reason always stays on the line.
    """
    try:
        yield
    except GDAL_ERRORS as exc:
        raise SemisegError(_write_failure(Path(path), needed_bytes, exc)) from None


def _write_failure(path: Path, needed: int, exc: BaseException) -> str:
    """Why a write failed, in one line: GDAL's reason, with the lack of space or the file-size limit named when the
    error says so or the disk is (nearly) full right now (the temporaries are still on it at this point)."""
    folder = path.parent if str(path.parent) else Path(".")
    reason = error_reason(exc)
    code = getattr(exc, "errno", None)
    free = shutil.disk_usage(folder).free
    limit = _file_size_limit()
    mb = f"up to {needed / 1e6:.0f} MB needed"
    said = any(w in reason.lower() for w in ("no space left", "file too large", "disk quota"))
    if limit is not None and limit < needed and (code == errno.EFBIG or said or "tiff" in reason.lower()):
        return (
            f"cannot write {path}: the file-size limit (ulimit -f) is {limit / 1e6:.1f} MB, {mb} ({reason})"
        )
    if code in NO_SPACE_ERRNOS or said or free < NEARLY_FULL_BYTES:
        return f"no space left on the device of {path}: {mb}, {free / 1e6:.0f} MB free in {folder} ({reason})"
    return f"writing {path} failed ({reason})"


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


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
        self.needed = int(
            width * height * 4 / 3 * 2
        )  # raw bytes, overviews, and the COG copy of the temporary
        self.sidecars: dict[Path, Path] = {}  # published sidecar path -> its temporary
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
        with writing(self.path, self.needed):
            self.ds = rasterio.open(self.tmp, "w", **self.profile)
        return self

    def write_rows(self, row: int, data: np.ndarray) -> None:
        """Write an n x width uint8 block starting at raster row `row`."""
        if data.shape[0]:
            with writing(self.path, self.needed):
                self.ds.write(data, 1, window=rasterio.windows.Window(0, row, data.shape[1], data.shape[0]))

    def finish(
        self,
        colormap: Mapping[int, tuple[int, ...]] | None = None,
        extra_tags: Mapping[str, object] | None = None,
        *,
        description: str | None = None,
        band_tags: Mapping[str, object] | None = None,
        scale: float | None = None,
        sidecars: Mapping[str, str] | None = None,
    ) -> Path:
        """Add colour map, tags, band description, scale and overviews and convert to a COG, still under a
        temporary name (returned).

        `scale` is stored as the band's scale factor (readers that honour it, GDAL and QGIS among them, show
        value x scale); `sidecars` maps a suffix to text written beside the output on publishing: `.qml` becomes
        `<stem>.qml`, anything else `<name><suffix>` (e.g. `.aux.xml`). Publishing is a separate step
        (`publish`) so a caller writing several outputs can finish them all, derive polygons from the finished
        files, and only then move everything into place.
        """
        with writing(self.path, self.needed):
            self.ds.close()
            # Reopened for update: libtiff cannot change the photometric tag of a file whose first strip is
            # already written (a one-block raster), which a palette needs; an update rewrites the directory.
            with rasterio.open(self.tmp, "r+") as ds:
                if colormap:
                    ds.write_colormap(1, dict(colormap))
                tags = {k: str(v) for k, v in (extra_tags or {}).items()}
                tags.update(self.tags)  # tags the caller passed win over defaults filled in at the end
                ds.update_tags(**tags)
                if band_tags:
                    ds.update_tags(1, **{k: str(v) for k, v in band_tags.items()})
                if description:
                    ds.set_band_description(1, description)
                if scale is not None:
                    ds.scales, ds.offsets = (scale,), (0.0,)
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
            for suffix, text in (sidecars or {}).items():
                target = self.path.with_suffix(suffix) if suffix == ".qml" else Path(f"{self.path}{suffix}")
                self.sidecars[target] = temp_path_for(target)
                self.sidecars[target].write_text(text, encoding="utf-8")
        return self.cog_tmp

    def publish(self) -> Path:
        """Move the sidecars, then the finished COG, onto their paths (each atomic within the folder): the raster
        appears last, so its presence means the set is complete."""
        for target, tmp in self.sidecars.items():
            os.replace(tmp, target)
        os.replace(self.cog_tmp, self.path)
        self.done = True
        self.cleanup()
        return self.path

    def cleanup(self) -> None:
        """Close and delete the temporary files (never the published output)."""
        if self.ds is not None and not self.ds.closed:
            self.ds.close()
        remove_quietly([self.tmp, self.cog_tmp, Path(f"{self.tmp}.aux.xml"), Path(f"{self.cog_tmp}.aux.xml")])
        remove_quietly(self.sidecars.values())

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.cleanup()
