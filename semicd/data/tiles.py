"""Change-detection tiles on disk: the A/B/label layout of LEVIR-CD, WHU-CD and SemiCD.

Layout (one root, the same file name in three folders):

    root/A/<name>.png      before image (RGB)
    root/B/<name>.png      after image (RGB, same size as A)
    root/label/<name>.png  change mask, 0/255 (or 0/1), converted to 0/1

Which tiles belong to which set is decided by name lists, one file name per line (SemiCD / UniMatch V2
remote-sensing `splits/`): `<split>/labeled.txt`, `<split>/unlabeled.txt`, and `val.txt` / `test.txt` next to
them or one folder up. Names may carry an extension or not (`train_1_1` and `train_1_1.png` are the same
tile), so the BIT_CD lists without extensions and the SemiCD lists with them both work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semicd import recipe
from semicd.data.multiband import read_band_pair
from semiseg.data.geometry import GeometryConfig
from semiseg.data.lists import find_list, read_name_list
from semiseg.data.sample import CropDataset, Raw
from semiseg.errors import SemisegError
from semiseg.io import IMAGE_EXTENSIONS, read_rgb

FOLDERS = ("A", "B", "label")


def cd_geometry(crop_size: int | None = None, vflip: float = 0.0, rot90: bool = False) -> GeometryConfig:
    """The official change-detection geometry (both sides scaled by U(0.8, 1.2), crop 252, hflip 0.5; see
    `semicd.recipe`), optionally at another crop size and with our extra flips."""
    return GeometryConfig(
        crop_size=crop_size or recipe.CROP_SIZE, ratio_range=recipe.RATIO_RANGE, vflip=vflip, rot90=rot90
    )


CD_GEOMETRY = cd_geometry()


def tile_stem(name: str) -> str:
    """`train_1_1.png` -> `train_1_1`; names without an image extension are returned unchanged."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else name


def resolve_tile(folder: Path, name: str) -> Path | None:
    """The file for `name` in `folder`: the name as given if it has an extension, else `.png` then others."""
    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        path = folder / name
        return path if path.is_file() else None
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def label_to_binary(array: np.ndarray, source: str) -> np.ndarray:
    """A change mask in 0/255 or 0/1 as uint8 0/1; anything else is a user error naming `source`.

    RGB masks whose three channels are equal (some tools save them that way) are accepted as their first
    channel.
    """
    if array.ndim == 3:
        if array.shape[2] >= 3 and not (
            np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
        ):
            raise SemisegError(
                f"change label {source} is a colour image: save it as one band with 0/255 values"
            )
        array = array[..., 0]
    if array.dtype == bool:
        return array.astype(np.uint8)
    values = np.unique(array)
    if np.isin(values, (0, 255)).all():
        return (array == 255).astype(np.uint8)
    if np.isin(values, (0, 1)).all():
        return array.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise SemisegError(
        f"change label {source} has values {{{shown}}}: expected 0/255 (or 0/1) for no-change/change"
    )


def read_change_label(path: Path) -> np.ndarray:
    """A change-mask image as uint8 0/1 (see `label_to_binary`)."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("L") if im.mode in ("I", "I;16", "F") else im)
    return label_to_binary(array, str(path))


def tile_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header: PIL for ordinary images, rasterio for GeoTIFFs PIL cannot read
    (more than 4 bands, 16-bit multiband)."""
    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        import rasterio

        try:
            with rasterio.open(path) as ds:
                return ds.width, ds.height
        except rasterio.errors.RasterioError as err:
            raise SemisegError(f"cannot read tile {path}: {err}") from None


def _missing_message(folder: Path, missing: list[str]) -> str:
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return f"{len(missing)} tile(s) missing in {folder}: {shown}"


def check_tiles(
    root: str | Path, names: Sequence[str], require_label: bool = True, check_sizes: bool = True
) -> None:
    """Fail early, with the first few names, when tiles are missing or A and B differ in size.

    Done once before training so that a typo in a list does not surface as a worker crash hours later.
    `check_sizes` opens only the PNG headers (cheap), not the pixels.
    """
    root = Path(root)
    if not names:
        raise SemisegError(f"no tile names given for {root}: check the split list")
    folders = FOLDERS if require_label else FOLDERS[:2]
    problems = []
    for sub in folders:
        folder = root / sub
        if not folder.is_dir():
            problems.append(f"folder {folder} does not exist")
            continue
        missing = [n for n in names if resolve_tile(folder, n) is None]
        if missing:
            problems.append(_missing_message(folder, missing))
    if problems:
        raise SemisegError(
            "; ".join(problems) + f" (expected {root}/{{A,B,label}}/<name>.png for every listed name)"
        )
    if not check_sizes:
        return
    mismatched = []
    for n in names:
        sizes = [tile_size(resolve_tile(root / sub, n)) for sub in folders]
        if len(set(sizes)) > 1:
            mismatched.append(f"{n} ({' vs '.join(f'{w}x{h}' for w, h in sizes)})")
    if mismatched:
        shown = ", ".join(mismatched[:5]) + (", ..." if len(mismatched) > 5 else "")
        raise SemisegError(
            f"{len(mismatched)} tile(s) in {root} whose A/B{'/label' if require_label else ''} sizes differ: "
            f"{shown}; the before/after images (and label) of a tile must be co-registered and equally sized"
        )


class ChangeTileDataset(CropDataset):
    """Before/after tiles with a change mask, as the shared sample of `semiseg.data.sample`.

    Modes: `train_l` (random geometry, label 0/1), `train_u` (random geometry, label all 255, label files not
    needed), `val` (whole tiles, no geometry). Random geometry is shared pixel-exactly by A, B and the label.
    """

    def __init__(
        self,
        root: str | Path,
        names: Sequence[str],
        mode: str,
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
        bands: Sequence[int] | None = None,
        stretch: str | None = None,
    ) -> None:
        if not names:
            raise SemisegError(f"no tile names given for {root} ({mode}): check the split list")
        super().__init__(names, mode, geometry if geometry is not None else CD_GEOMETRY, nsample, seed)
        self.root = Path(root)
        # Multiband reading (GeoTIFF tiles of any band count and dtype) when bands or a stretch are asked for;
        # otherwise tiles are RGB images, read as the official code reads them.
        self.bands = tuple(bands) if bands else None
        self.stretch = stretch

    @property
    def names(self) -> list[str]:
        return self.items

    def name(self, index: int) -> str:
        return tile_stem(self.items[index])

    def _path(self, sub: str, name: str) -> Path:
        path = resolve_tile(self.root / sub, name)
        if path is None:
            raise SemisegError(f"tile {name!r} is missing in {self.root / sub}: run check_tiles on the list")
        return path

    def read(self, index: int) -> Raw:
        name = self.items[index]
        path_a, path_b = self._path("A", name), self._path("B", name)
        valid = None
        if self.bands is not None or self.stretch is not None:
            (image_a, image_b), valid = read_band_pair([path_a, path_b], self.bands, self.stretch or "auto")
        else:
            image_a, image_b = read_rgb(path_a), read_rgb(path_b)
        if image_a.shape != image_b.shape:
            raise SemisegError(
                f"{path_a} is {image_a.shape[1]}x{image_a.shape[0]} but {path_b} is "
                f"{image_b.shape[1]}x{image_b.shape[0]}: before and after tiles must have the same size"
            )
        if self.mode == "train_u":
            return [image_a, image_b], None, valid
        path_l = self._path("label", name)
        label = read_change_label(path_l)
        if label.shape != image_a.shape[:2]:
            raise SemisegError(f"{path_l} does not have the size of {path_a}: labels must match the tiles")
        return [image_a, image_b], label, valid


def _names(given: Sequence[str] | str | Path | None, fallback: Path | None) -> list[str] | None:
    if isinstance(given, (str, Path)):
        return read_name_list(given)
    if given is not None:
        return list(given)
    return read_name_list(fallback) if fallback is not None else None


def build_change_tile_datasets(
    root: str | Path,
    split_dir: str | Path | None = None,
    *,
    labeled: Sequence[str] | str | Path | None = None,
    unlabeled: Sequence[str] | str | Path | None = None,
    eval_names: Sequence[str] | str | Path | None = None,
    eval_list: str = recipe.EVAL_LIST,
    unlabeled_root: str | Path | None = None,
    crop_size: int | None = None,
    geometry: GeometryConfig | None = None,
    seed: int = 0,
    check: bool = True,
    training: bool = True,
    with_unlabeled: bool = True,
    nsample: int | None = None,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
) -> tuple[ChangeTileDataset | None, ChangeTileDataset | None, ChangeTileDataset]:
    """The (labeled, unlabeled, eval) datasets of one semi-supervised change-detection run.

    Lists come from `split_dir` (`labeled.txt`, `unlabeled.txt`; `<eval_list>.txt` searched in `split_dir`,
    its parent, then `root`) unless given directly as name lists or list-file paths. The official
    remote-sensing code evaluates on `test.txt`; pass `eval_list="val"` to select models on a validation list
    instead. The labeled list is repeated to the unlabeled length (official rule) so one epoch is one pass
    over the unlabeled set. Without an unlabeled list (supervised runs) the unlabeled dataset is None and the
    labeled list is repeated to `nsample` instead. `unlabeled_root` lets unlabeled tiles live in another folder
    (large-scale setting). `training=False` reads and checks only the evaluation list, `with_unlabeled=False`
    leaves the unlabeled list alone (supervised runs). `bands`/`stretch` read GeoTIFF tiles of any band count
    and dtype (`semicd.data.multiband`).
    """
    root = Path(root)
    split = Path(split_dir) if split_dir is not None else None
    if split is not None and not split.is_dir():
        raise SemisegError(
            f"split folder {split} does not exist: expected <split>/labeled.txt, unlabeled.txt"
        )

    def in_split(filename: str) -> Path | None:
        return split / filename if split is not None and (split / filename).is_file() else None

    labeled_names = unlabeled_names = None
    if training:
        labeled_names = _names(labeled, in_split("labeled.txt"))
        if labeled_names is None:
            raise SemisegError(
                "no labeled list: give split_dir containing labeled.txt or a labeled name list"
            )
        if with_unlabeled:
            unlabeled_names = _names(unlabeled, in_split("unlabeled.txt"))
    eval_path = find_list(f"{eval_list}.txt", split, split and split.parent, root)
    eval_list_names = _names(eval_names, eval_path)
    if eval_list_names is None:
        raise SemisegError(
            f"no {eval_list}.txt found in {split}, its parent, or {root}: give the evaluation list explicitly"
        )
    u_root = Path(unlabeled_root) if unlabeled_root is not None else root
    if check:
        check_tiles(root, eval_list_names)
        if labeled_names is not None:
            check_tiles(root, labeled_names)
        if unlabeled_names is not None:
            check_tiles(u_root, unlabeled_names, require_label=False)
    geometry = geometry if geometry is not None else cd_geometry(crop_size)
    labeled_ds = unlabeled_ds = None
    reading = {"seed": seed, "bands": bands, "stretch": stretch}
    if unlabeled_names is not None:
        unlabeled_ds = ChangeTileDataset(u_root, unlabeled_names, "train_u", geometry, **reading)
    if labeled_names is not None:
        count = len(unlabeled_names) if unlabeled_names is not None else nsample
        labeled_ds = ChangeTileDataset(root, labeled_names, "train_l", geometry, nsample=count, **reading)
    eval_ds = ChangeTileDataset(root, eval_list_names, "val", **reading)
    return labeled_ds, unlabeled_ds, eval_ds
