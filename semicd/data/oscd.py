"""OSCD (Onera Satellite Change Detection): Sentinel-2 pairs of 24 cities, 13 bands, change masks.

Layout, as the dataset is released (the three archives unpacked side by side under `data.root`):

    root/Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt                      comma-separated city names (14 train, 10 test)
        <city>/imgs_1_rect/B01.tif ... B12.tif, B8A.tif    first date, one file per band
        <city>/imgs_2_rect/...                   second date (`imgs_1/`, `imgs_2/` are used when `_rect` is absent)
    root/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png    0/255 (or 1/2) change mask
    root/Onera Satellite Change Detection dataset - Test Labels/<city>/cm/cm.png

Bands are stacked in Sentinel-2 order B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12, so red,
green, blue are input bands 4, 3, 2 (`model.rgb_bands: [4, 3, 2]`). Bands at 20 m and 60 m are resampled
bilinearly onto the 10 m grid of B02. Each city is one sample: training crops are drawn from the whole city
(`data.nsample` repeats the labeled cities per epoch), evaluation runs on whole cities (the 10 test cities by
default, the usual protocol). Semi-supervised splits list city names in `labeled.txt` / `unlabeled.txt`; without a
split every train city is labeled (supervised).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semicd.data.multiband import stack_bands, stretch_arrays
from semiseg.data.geometry import GeometryConfig
from semiseg.data.sample import CropDataset, Raw
from semiseg.errors import SemisegError

IMAGES = "Onera Satellite Change Detection dataset - Images"
LABELS = {"train": "Onera Satellite Change Detection dataset - Train Labels",
          "test": "Onera Satellite Change Detection dataset - Test Labels"}  # fmt: skip
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RGB_BANDS = (4, 3, 2)
GRID_BAND = "B02"  # a 10 m band: the grid every band is resampled to
CACHED_CITIES = 4  # per process: 4 cities x 2 dates x 13 bands of about 1 MP in uint8 is about 100 MB


def read_cities(root: Path, split: str) -> list[str]:
    """The cities of the release's `train.txt` / `test.txt` (one comma-separated line)."""
    path = root / IMAGES / f"{split}.txt"
    if not path.is_file():
        raise SemisegError(
            f"{path} not found: data.root must hold the unpacked OSCD folders ({IMAGES!r}, ...)"
        )
    return [c.strip() for c in path.read_text().replace("\n", ",").split(",") if c.strip()]


def band_files(folder: Path) -> list[Path]:
    """The 13 band files of one date, in Sentinel-2 order (file names end with the band: `B8A.tif`,
    `S2A_..._B8A.tif`)."""
    files = {}
    for path in folder.glob("*.tif"):
        for band in BANDS:
            if path.stem.upper().endswith(band):
                files[band] = path
    missing = [b for b in BANDS if b not in files]
    if missing:
        raise SemisegError(
            f"{folder} lacks band file(s) {', '.join(missing)} (expected B01.tif ... B12.tif, B8A.tif)"
        )
    return [files[b] for b in BANDS]


def date_folder(city: Path, date: int) -> Path:
    rect = city / f"imgs_{date}_rect"
    plain = city / f"imgs_{date}"
    if rect.is_dir():
        return rect
    if plain.is_dir():
        return plain
    raise SemisegError(f"{city} has neither imgs_{date}_rect/ nor imgs_{date}/")


def label_path(root: Path, city: str) -> Path | None:
    for folder in LABELS.values():
        path = root / folder / city / "cm" / "cm.png"
        if path.is_file():
            return path
    return None


def read_oscd_label(path: Path) -> np.ndarray:
    """0/255 (or 0/1, or 1/2 as in the .tif masks) -> 0/1."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("L"))
    values = set(np.unique(array).tolist())
    if values <= {0, 255} or values <= {0, 1}:
        return (array > 0).astype(np.uint8)
    if values <= {1, 2}:
        return (array == 2).astype(np.uint8)
    raise SemisegError(f"change mask {path} has values {sorted(values)[:6]}: expected 0/255")


class OSCDDataset(CropDataset):
    """One city per sample, 13 bands per date, uint8 after `stretch` (see `semicd.data.multiband`)."""

    def __init__(
        self,
        root: str | Path,
        cities: Sequence[str],
        mode: str,
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
        stretch: str = "auto",
        bands: Sequence[int] | None = None,
    ) -> None:
        if not cities:
            raise SemisegError(f"no OSCD cities given ({mode}): check the split lists")
        super().__init__(cities, mode, geometry, nsample, seed)
        self.root = Path(root)
        self.stretch = stretch
        self._cache: OrderedDict[str, Raw] = OrderedDict()  # the last few cities read, stretched
        self.bands = tuple(bands) if bands else tuple(range(1, len(BANDS) + 1))
        if not all(1 <= b <= len(BANDS) for b in self.bands):
            raise SemisegError(f"data.bands {list(self.bands)}: OSCD bands are numbered 1..{len(BANDS)}")
        for city in cities:
            self._files(city)  # fail before training, naming the city, when a band or folder is missing
            if mode != "train_u" and label_path(self.root, city) is None:
                raise SemisegError(
                    f"no change mask for OSCD city {city!r} (cm/cm.png under the label folders)"
                )

    def name(self, index: int) -> str:
        return self.items[index]

    def _files(self, city: str) -> list[list[Path]]:
        folder = self.root / IMAGES / city
        if not folder.is_dir():
            raise SemisegError(f"OSCD city folder not found: {folder}")
        chosen = [b - 1 for b in self.bands]
        return [[band_files(date_folder(folder, d))[i] for i in chosen] for d in (1, 2)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}  # DataLoader workers start with an empty cache

    def read(self, index: int) -> Raw:
        """A city, read whole and stretched once, then served from a small cache: every crop of an epoch is
        drawn from a few cities, and reading 26 band files plus 13 percentile stretches costs about a second."""
        city = self.items[index]
        if city not in self._cache:
            self._cache[city] = self._read_city(city)
            while len(self._cache) > CACHED_CITIES:
                self._cache.popitem(last=False)
        self._cache.move_to_end(city)
        images, label, valid = self._cache[city]
        return [im.copy() for im in images], None if label is None else label.copy(), valid

    def _read_city(self, city: str) -> Raw:
        import rasterio

        files = self._files(city)
        with rasterio.open(
            band_files(date_folder(self.root / IMAGES / city, 1))[BANDS.index(GRID_BAND)]
        ) as ds:
            size = (ds.height, ds.width)
        for date in (2,):
            with rasterio.open(
                band_files(date_folder(self.root / IMAGES / city, date))[BANDS.index(GRID_BAND)]
            ) as ds:
                if (ds.height, ds.width) != size:
                    raise SemisegError(
                        f"OSCD city {city!r}: date {date} is {ds.width}x{ds.height} px at 10 m, date 1 {size[1]}x{size[0]}"
                    )
        (a, valid_a), (b, valid_b) = (stack_bands(f, size) for f in files)
        valid = valid_a & valid_b
        images = stretch_arrays([a, b], valid, self.stretch)
        label = None
        if self.mode != "train_u":
            path = label_path(self.root, city)
            label = read_oscd_label(path)
            if label.shape != size:
                raise SemisegError(
                    f"{path} is {label.shape[1]}x{label.shape[0]}, the city {size[1]}x{size[0]}"
                )
        return images, label, None if valid.all() else valid
