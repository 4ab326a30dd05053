"""Training windows read straight from a user's co-registered before/after GeoTIFF pair.

No tiling step on disk: a grid of `window`-pixel windows (optional `stride`) is laid over the scene, windows
with too little valid data (the AND of both dates' `read_masks`) are dropped, and each remaining window is
assigned to the labeled, unlabeled or val area, either by area polygons (a window belongs to an area when its
centre falls inside it) or by a seeded random split of the grid. Change labels come from a label raster on the
same grid (0/255 or 0/1) or from a vector file of change polygons, rasterised per window with that window's
transform.

Pixels: `bands` (1-based, default 1,2,3) are read. uint8 rasters are used as they are; anything else (uint16
surface reflectance, float) is mapped to uint8 by the `stretch` rule (`data.stretch`, see `semiseg.geo.pair`):
by default one per-band linear stretch between the 2nd and 98th percentiles of both dates' valid pixels
pooled, computed once on a decimated read, so the stretch itself adds no difference between the dates.
`semicd predict` applies the same rule to the scenes it maps.

Nodata pixels (and NaN/Inf values) inside a kept window get label 255 and ignore 255, so no loss ever sees them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform_of

from semiseg.data.geometry import GeometryConfig
from semiseg.data.sample import CropDataset, Raw
from semiseg.errors import SemisegError
from semiseg.geo.pair import (
    apply_stretch,
    grid_differences,
    open_raster,
    parse_stretch,
    stretch_limits,
    validity,
)
from semiseg.geo.vectors import read_many, shares_ground, window_box
from semiseg.grid import window_starts

from .tiles import cd_geometry, label_to_binary

AREAS = ("labeled", "unlabeled", "val")
MASK_MAX_SIDE = 4096

# (col_off, row_off, width, height) in pixels of the before raster.
WindowBox = tuple[int, int, int, int]


def apply_affine(t: Affine, x: float, y: float) -> tuple[float, float]:
    """`t * (x, y)` written out: affine deprecates `*` for `@`, which older releases lack."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def check_raster_pair(before: str | Path, after: str | Path, label: str | Path | None = None) -> None:
    """Refuse a pair (and label raster) that is not on one pixel grid, before any work is done."""
    with open_raster(before, "before image") as a, open_raster(after, "after image") as b:
        differences = grid_differences(a, b, bands=True)
        if differences:
            raise SemisegError(
                f"{before} and {after} differ in {', '.join(differences)}: reproject B onto A's grid first "
                f"(e.g. gdalwarp with A's CRS, extent and size, or `semicd predict --align reproject`)"
            )
        if label is not None:
            with open_raster(label, "label raster") as lab:
                differences = grid_differences(a, lab)
                if differences:
                    raise SemisegError(
                        f"label raster {label} differs from {before} in {', '.join(differences)}: "
                        f"rasterise or reproject the label onto the before image's grid"
                    )


def _check_bands(src: rasterio.DatasetReader, bands: Sequence[int], path: str | Path) -> None:
    bad = [b for b in bands if not 1 <= b <= src.count]
    if bad:
        raise SemisegError(
            f"{path} has {src.count} band(s) but bands {tuple(bands)} were asked for: pick 1-based band "
            f"numbers that exist (e.g. bands=(1, 1, 1) for a single-band scene)"
        )


def to_uint8(array: np.ndarray, stretch: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """bands x H x W -> H x W x bands uint8 through the scene's stretch (identity for uint8 without one)."""
    return np.ascontiguousarray(apply_stretch(array, stretch).transpose(1, 2, 0))


def window_grid(height: int, width: int, window: int, stride: int | None = None) -> list[WindowBox]:
    """Row-major window grid; the last row/column is clamped inside; a raster under one window gives one."""
    stride = stride or window
    if window <= 0 or stride <= 0:
        raise SemisegError(f"window ({window}) and stride ({stride}) must be positive pixel counts")
    h, w = min(window, height), min(window, width)
    rows, cols = window_starts(height, window, stride), window_starts(width, window, stride)
    return [(c, r, w, h) for r in rows for c in cols]


def valid_fractions(
    before: str | Path, after: str | Path, boxes: Sequence[WindowBox], bands: Sequence[int] = (1, 2, 3)
) -> np.ndarray:
    """Fraction of each window valid in both dates, from one decimated mask read (exact below 4096 px)."""
    with open_raster(before, "before image") as a, open_raster(after, "after image") as b:
        factor = max(1, math.ceil(max(a.height, a.width) / MASK_MAX_SIDE))
        shape = (len(bands), math.ceil(a.height / factor), math.ceil(a.width / factor))
        valid = np.ones(shape[1:], dtype=bool)
        for src in (a, b):
            masks = src.read_masks(list(bands), out_shape=shape, resampling=Resampling.nearest)
            valid &= (masks > 0).all(axis=0)
    fractions = np.empty(len(boxes), dtype=np.float64)
    for i, (c, r, w, h) in enumerate(boxes):
        part = valid[r // factor : math.ceil((r + h) / factor), c // factor : math.ceil((c + w) / factor)]
        fractions[i] = part.mean() if part.size else 0.0
    return fractions


def _window_boxes(transform: Affine, boxes: Sequence[WindowBox]) -> list:
    """The windows as polygons in the raster's CRS."""
    return [window_box(transform, c, r, w, h) for c, r, w, h in boxes]


def _window_centres(transform: Affine, boxes: Sequence[WindowBox]) -> tuple[np.ndarray, np.ndarray]:
    cols = np.array([c + w / 2 for c, _, w, _ in boxes], dtype=np.float64)
    rows = np.array([r + h / 2 for _, r, _, h in boxes], dtype=np.float64)
    return apply_affine(transform, cols, rows)


def assign_windows(
    boxes: Sequence[WindowBox],
    transform: Affine,
    crs=None,
    areas: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """{'labeled'|'unlabeled'|'val': window indices}, from area polygons or a seeded random split.

    Area polygons (one file or a list per area): a window belongs to an area when its centre is inside, or, for
    a review file (`status` field, see `semiseg.geo.vectors`), when an accepted polygon shares ground with it; overlaps go to val, then labeled,
    then unlabeled; without an 'unlabeled' file every window outside the other areas is unlabeled. Random
    split: `fractions` (default labeled 0.1, val 0.1) of the shuffled windows, floor(f * N) each, the rest
    unlabeled; use stride = window then, or overlapping windows leak val pixels into training.
    """
    n = len(boxes)
    taken = np.zeros(n, dtype=bool)
    result: dict[str, list[int]] = {}
    if areas is not None:
        unknown = set(areas) - set(AREAS)
        if unknown:
            raise SemisegError(f"unknown area name(s) {sorted(unknown)}: use {', '.join(AREAS)}")
        import shapely  # polygons only: a scene with a label raster never needs the vector stack

        xs, ys = _window_centres(transform, boxes)
        for name in ("val", "labeled", "unlabeled"):
            if name not in areas:
                continue
            plain, accepted = read_many(areas[name], crs, f"{name} area file")
            inside = np.zeros(n, bool)
            if plain:
                inside |= shapely.contains_xy(shapely.union_all(plain), xs, ys)
            if accepted:  # reviewed pseudo-labels: every window an accepted polygon reaches into was reviewed
                inside |= shares_ground(_window_boxes(transform, boxes), shapely.union_all(accepted))
            chosen = inside & ~taken
            result[name] = np.flatnonzero(chosen).tolist()
            taken |= chosen
        if "unlabeled" not in areas:
            result["unlabeled"] = np.flatnonzero(~taken).tolist()
        return {name: result.get(name, []) for name in AREAS}
    fractions = dict(fractions) if fractions is not None else {"labeled": 0.1, "val": 0.1}
    unknown = set(fractions) - {"labeled", "val"}
    if unknown or sum(fractions.values()) > 1 or min(fractions.values(), default=0) < 0:
        raise SemisegError(
            f"bad window fractions {fractions}: give labeled/val fractions in [0, 1] summing <= 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    start = 0
    for name in ("labeled", "val"):
        count = math.floor(fractions.get(name, 0.0) * n + 1e-9)
        result[name] = sorted(order[start : start + count].tolist())
        start += count
    result["unlabeled"] = sorted(order[start:].tolist())
    return {name: result[name] for name in AREAS}


class GeoTiffPairDataset(CropDataset):
    """Windows of a before/after GeoTIFF pair as the shared sample dict (see the module docstring).

    `boxes` are (col_off, row_off, width, height) windows of the before raster. Labels (modes train_l and val)
    come from `label` (a raster on the pair's grid) or `change_polygons` (a vector file). Raster handles are
    opened lazily in whichever process reads, so the dataset pickles to DataLoader workers without open files.
    """

    def __init__(
        self,
        before: str | Path,
        after: str | Path,
        boxes: Sequence[WindowBox],
        mode: str,
        *,
        label: str | Path | None = None,
        change_polygons: str | Path | Sequence[str | Path] | None = None,
        bands: Sequence[int] = (1, 2, 3),
        stretch: str = "auto",
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
        check: bool = True,
    ) -> None:
        super().__init__(
            [tuple(int(v) for v in box) for box in boxes], mode, geometry if geometry is not None else cd_geometry(),
            nsample, seed,
        )  # fmt: skip
        if mode != "train_u" and label is None and change_polygons is None:
            raise SemisegError(
                f"mode {mode} needs change labels: give a label raster or a change-polygon file"
            )
        if label is not None and change_polygons is not None:
            raise SemisegError("give either a label raster or change polygons, not both")
        if check:
            check_raster_pair(before, after, label if mode != "train_u" else None)
        self.before, self.after = Path(before), Path(after)
        self.label = Path(label) if label is not None and mode != "train_u" else None
        self.bands = tuple(int(b) for b in bands)
        with open_raster(before, "before image") as a, open_raster(after, "after image") as b:
            _check_bands(a, self.bands, before)
            _check_bands(b, self.bands, after)
            self.transform, self.crs = a.transform, a.crs
            limits, _ = stretch_limits((a, b), (self.bands, self.bands), None, parse_stretch(stretch))
            self.stretch = tuple(limits)
        if not self.items:
            raise SemisegError(f"no windows for the {mode} set of {before}: check the areas and min_valid")
        self.geometries = None
        if change_polygons is not None and mode != "train_u":
            plain, accepted = read_many(change_polygons, self.crs, "change-polygon file")
            self.geometries = plain + accepted
        self._handles = None
        self._tree = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_handles=None, _tree=None, _pid=None)  # never ship open GDAL handles to workers
        return state

    @property
    def boxes(self) -> list[WindowBox]:
        return self.items

    def window(self, index: int) -> Window:
        return Window(*self.boxes[index])

    def window_transform(self, index: int) -> Affine:
        """The affine transform of window `index` (its pixel (0, 0) corner in the raster CRS)."""
        return window_transform_of(self.window(index), self.transform)

    def close(self) -> None:
        if self._handles is not None:
            for handle in self._handles:
                if handle is not None:
                    handle.close()
        self._handles = None

    def _open(self) -> tuple:
        if self._handles is None or self._pid != os.getpid():
            # A handle inherited through fork is not ours to use: open fresh ones in this process.
            self._handles = (
                rasterio.open(self.before),
                rasterio.open(self.after),
                rasterio.open(self.label) if self.label is not None else None,
            )
            self._pid = os.getpid()
        return self._handles

    def _rasterised_label(self, index: int) -> np.ndarray:
        import shapely

        _, _, w, h = self.boxes[index]
        transform = self.window_transform(index)
        if self._tree is None:
            self._tree = shapely.STRtree(self.geometries)
        x0, y0 = apply_affine(transform, 0, 0)
        x1, y1 = apply_affine(transform, w, h)
        hits = self._tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        shapes = [(self.geometries[i], 1) for i in hits]
        if not shapes:
            return np.zeros((h, w), dtype=np.uint8)
        return rasterize(shapes, out_shape=(h, w), transform=transform, fill=0, dtype="uint8")

    def _read_label(self, index: int, handle) -> np.ndarray:
        if handle is None:
            return self._rasterised_label(index)
        return label_to_binary(
            handle.read(1, window=self.window(index)), f"{self.label} window {self.boxes[index]}"
        )

    def name(self, index: int) -> str:
        col, row = self.boxes[index][:2]
        return f"{self.before.stem}_r{row}_c{col}"

    def read(self, index: int) -> Raw:
        before, after, label_handle = self._open()
        win = self.window(index)
        bands = list(self.bands)
        raw = [before.read(bands, window=win), after.read(bands, window=win)]
        image_a, image_b = (to_uint8(r, s) for r, s in zip(raw, self.stretch))
        valid = np.ones(raw[0].shape[1:], dtype=bool)
        for handle, data in zip((before, after), raw):  # the file's masks, and NaN/Inf never valid
            marked, finite = validity(handle, data, bands, window=win)
            valid &= marked & finite
        label = self._read_label(index, label_handle) if self.mode != "train_u" else None
        return [image_a, image_b], label, valid


def build_geotiff_pair_datasets(
    before: str | Path,
    after: str | Path,
    *,
    label: str | Path | None = None,
    change_polygons: str | Path | Sequence[str | Path] | None = None,
    window: int = 256,
    stride: int | None = None,
    areas: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    fractions: Mapping[str, float] | None = None,
    min_valid: float = 0.5,
    bands: Sequence[int] = (1, 2, 3),
    stretch: str = "auto",
    crop_size: int | None = None,
    geometry: GeometryConfig | None = None,
    seed: int = 0,
    training: bool = True,
    with_unlabeled: bool = True,
    nsample: int | None = None,
) -> tuple[GeoTiffPairDataset | None, GeoTiffPairDataset | None, GeoTiffPairDataset | None]:
    """(labeled, unlabeled, val) window datasets of one scene; the labeled windows repeat to the unlabeled
    count (to `nsample` without unlabeled windows).

    Windows valid in both dates for less than `min_valid` of their pixels are skipped. Sets that end up empty
    (e.g. no unlabeled area) are None, except labeled, which is an error. `training=False` builds only the val
    set; `with_unlabeled=False` leaves the unlabeled windows out (supervised runs).
    """
    check_raster_pair(before, after, label)
    with open_raster(before, "before image") as a:
        height, width, transform, crs = a.height, a.width, a.transform, a.crs
        _check_bands(a, bands, before)
    boxes = window_grid(height, width, window, stride)
    keep = valid_fractions(before, after, boxes, bands) >= min_valid
    boxes = [box for box, ok in zip(boxes, keep) if ok]
    if not boxes:
        raise SemisegError(
            f"no window of {before} is at least {min_valid:.0%} valid in both dates: check nodata"
        )
    assigned = assign_windows(boxes, transform, crs, areas, fractions, seed)
    if training and not assigned["labeled"]:
        raise SemisegError("no labeled windows: enlarge the labeled area or the labeled fraction")
    geometry = geometry if geometry is not None else cd_geometry(crop_size)
    common = dict(
        label=label, change_polygons=change_polygons, bands=bands, stretch=stretch, geometry=geometry, seed=seed,
        check=False,
    )  # fmt: skip
    unlabeled = [boxes[i] for i in assigned["unlabeled"]] if training and with_unlabeled else []
    val = [boxes[i] for i in assigned["val"]]
    labeled_ds = None
    if training:
        labeled = [boxes[i] for i in assigned["labeled"]]
        labeled_ds = GeoTiffPairDataset(
            before, after, labeled, "train_l", nsample=len(unlabeled) or nsample, **common
        )
    unlabeled_ds = GeoTiffPairDataset(before, after, unlabeled, "train_u", **common) if unlabeled else None
    val_ds = GeoTiffPairDataset(before, after, val, "val", **common) if val else None
    return labeled_ds, unlabeled_ds, val_ds
