"""Cut the released change-detection benchmarks into the 256 x 256 tiles the SemiCD splits refer to.

Output layout (both datasets): flat folders plus name lists, the layout SemiCD and UniMatch V2 read, so one
data root serves every split and `ChangeTileDataset(dst, read_name_list(dst / "test.txt"), "val")` just works:

    dst/A/<name>.png  dst/B/<name>.png  dst/label/<name>.png (0/255)
    dst/train.txt  dst/val.txt  dst/test.txt   (one `<name>.png` per line)

Re-running is cheap and safe: every file is written to a temporary name and renamed, so an interrupted run
never leaves a truncated PNG; existing tiles are skipped unless `overwrite=True` (the lists are always
rewritten).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from tqdm import tqdm

from semiseg.data.lists import DATASETS_DIR
from semiseg.errors import SemisegError
from semiseg.geo.pair import StretchRule, open_raster, stretch_limits
from semiseg.io import IMAGE_EXTENSIONS, read_rgb, save_png_atomic, write_lines_atomic

from .geotiff_pair import to_uint8
from .official import official_sets
from .tiles import label_to_binary, read_change_label

WHU_OFFICIAL_TILES = 7434  # 126 x 59 tiles of 256 px

LEVIR_SPLITS = ("train", "val", "test")
WHU_SPLIT_FRACTIONS = (
    0.8,
    0.1,
)  # train, val; the rest is test: our draw when the tiles are not the official ones


def _tiles(array: np.ndarray, tile: int) -> list[np.ndarray]:
    """Non-overlapping tiles, row-major; an incomplete last row/column is dropped."""
    rows, cols = array.shape[0] // tile, array.shape[1] // tile
    return [
        array[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)
    ]


def _make_dirs(dst: Path) -> None:
    for sub in ("A", "B", "label"):
        (dst / sub).mkdir(parents=True, exist_ok=True)


def _write_tile_set(dst: Path, name: str, arrays: Sequence[np.ndarray], overwrite: bool) -> bool:
    """Write A, B and label of one tile; False when all three existed and were kept."""
    paths = [dst / sub / name for sub in ("A", "B", "label")]
    if not overwrite and all(p.is_file() for p in paths):
        return False
    for path, array in zip(paths, arrays):
        save_png_atomic(path, np.ascontiguousarray(array))
    return True


def prepare_levir(
    src: str | Path,
    dst: str | Path,
    tile: int = 256,
    splits: Sequence[str] = LEVIR_SPLITS,
    overwrite: bool = False,
) -> dict[str, int]:
    """Cut the original LEVIR-CD release (1024 x 1024 pairs) into `tile`-pixel tiles.

    `src/<split>/{A,B,label}/<split>_<n>.png` becomes `dst/{A,B,label}/<split>_<n>_<k>.png`, k = 1..16
    row-major (k = 1 top-left, 4 top-right, 16 bottom-right), and `dst/<split>.txt`. Returns tile counts per
    split plus "written" and "skipped" (tiles kept from an earlier run).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise SemisegError(
            f"LEVIR-CD folder {src} does not exist: give the unzipped release (train/ val/ test/)"
        )
    for split in splits:
        for sub in ("A", "B", "label"):
            if not (src / split / sub).is_dir():
                raise SemisegError(
                    f"{src / split / sub} is missing: the LEVIR-CD release has <split>/A, B, label"
                )
    _make_dirs(dst)
    summary = {"written": 0, "skipped": 0}
    for split in splits:
        images = sorted(p for p in (src / split / "A").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise SemisegError(f"no images in {src / split / 'A'}: check the LEVIR-CD download")
        names = []
        for path_a in tqdm(images, desc=f"LEVIR-CD {split}", unit="pair", disable=not sys.stderr.isatty()):
            path_b, path_l = src / split / "B" / path_a.name, src / split / "label" / path_a.name
            for path in (path_b, path_l):
                if not path.is_file():
                    raise SemisegError(f"{path} is missing: every A image needs a B image and a label")
            a, b, label = read_rgb(path_a), read_rgb(path_b), read_change_label(path_l) * np.uint8(255)
            if not a.shape == b.shape or label.shape != a.shape[:2]:
                raise SemisegError(f"{path_a.name}: A, B and label differ in size in {src / split}")
            if min(a.shape[:2]) < tile:
                raise SemisegError(f"{path_a} is smaller than one {tile} px tile")
            for k, parts in enumerate(zip(_tiles(a, tile), _tiles(b, tile), _tiles(label, tile)), start=1):
                name = f"{path_a.stem}_{k}.png"
                written = _write_tile_set(dst, name, parts, overwrite)
                summary["written" if written else "skipped"] += 1
                names.append(name)
        write_lines_atomic(dst / f"{split}.txt", names)
        summary[split] = len(names)
    return summary


def _check_same_shape(paths: Sequence[Path], sources: Sequence) -> tuple[int, int]:
    shapes = {(s.height, s.width) for s in sources}
    if len(shapes) > 1:
        sizes = ", ".join(f"{p.name} {s.width}x{s.height}" for p, s in zip(paths, sources))
        raise SemisegError(
            f"WHU-CD rasters differ in size ({sizes}): before, after and label must share one grid"
        )
    return shapes.pop()


def prepare_whu(
    before_tif: str | Path,
    after_tif: str | Path,
    label_tif: str | Path,
    dst: str | Path,
    tile: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, int]:
    """Cut the WHU-CD aerial pair into `tile`-pixel tiles `whucd_NNNNN.png` (1-based, row-major).

    Naming rule: tile (r, c) of a grid with `cols` columns is number r * cols + c + 1, written with at least
    5 digits (`whucd_00001.png` top-left, `whucd_00126.png` the end of the first row of the full scene).
    Incomplete tiles along the right and bottom edges are dropped (32507 x 15354 px gives 126 x 59 = 7434
    tiles: `whucd_00001` ... `whucd_07434`, exactly the names of the official lists). The scene is read one tile
    row at a time with rasterio windows, never whole. Labels are written 0/255.

    The train/val/test lists: when the tiles are exactly the official names, the official lists shipped in
    `datasets/whu_cd/` (5947 / 743 / 744); otherwise (a crop, another tile size) a seeded 80 / 10 / 10 random
    assignment of ours (`seed`). The summary says which (`lists`: `official` or `seeded`).
    """
    paths = [Path(before_tif), Path(after_tif), Path(label_tif)]
    dst = Path(dst)
    sources = [
        open_raster(p, what) for p, what in zip(paths, ("before image", "after image", "label raster"))
    ]
    try:
        height, width = _check_same_shape(paths, sources)
        rows, cols = height // tile, width // tile
        if rows == 0 or cols == 0:
            raise SemisegError(f"WHU-CD rasters ({width}x{height}) are smaller than one {tile} px tile")
        for src, path in zip(sources[:2], paths):
            if src.count < 3:
                raise SemisegError(f"{path} has {src.count} band(s): WHU-CD images need 3 (RGB)")
        stretch, _ = stretch_limits(
            sources[:2], [(1, 2, 3)] * 2, None, StretchRule()
        )  # one mapping, both dates
        _make_dirs(dst)
        digits = max(5, len(str(rows * cols)))
        names, summary = [], {"written": 0, "skipped": 0}
        for r in tqdm(range(rows), desc="WHU-CD", unit="tile row", disable=not sys.stderr.isatty()):
            strip = Window(0, r * tile, cols * tile, tile)
            a = to_uint8(sources[0].read((1, 2, 3), window=strip), stretch[0])
            b = to_uint8(sources[1].read((1, 2, 3), window=strip), stretch[1])
            label = label_to_binary(
                sources[2].read(1, window=strip), f"{paths[2]} rows {r * tile}.."
            ) * np.uint8(255)
            for c in range(cols):
                name = f"whucd_{len(names) + 1:0{digits}d}.png"
                cut = slice(c * tile, (c + 1) * tile)
                written = _write_tile_set(dst, name, (a[:, cut], b[:, cut], label[:, cut]), overwrite)
                summary["written" if written else "skipped"] += 1
                names.append(name)
    finally:
        for src in sources:
            src.close()
    parts, summary["lists"] = whu_lists(names, seed)
    for split, members in parts.items():
        write_lines_atomic(dst / f"{split}.txt", members)
        summary[split] = len(members)
    return summary


def whu_lists(names: Sequence[str], seed: int = 0) -> tuple[dict[str, list[str]], str]:
    """({"train", "val", "test": names}, "official" | "seeded") for the WHU-CD tiles `names`.

    The official lists when `names` are exactly the official tiles, else a seeded 80 / 10 / 10 draw of ours
    (each list in tile order); the seeded draw also when the official lists are not there (an installed package
    ships no `datasets/`), with a warning if the tiles look like the whole official scene.
    """
    try:
        official = official_sets("whu_cd")
    except SemisegError:  # an installed package without datasets/: only a source checkout has the lists
        official = None
        if len(names) == WHU_OFFICIAL_TILES:
            print(
                f"semicd prepare whu: the official WHU-CD lists are not in {DATASETS_DIR} (a source checkout has "
                "them): writing our seeded lists instead, which differ from the published ones",
                file=sys.stderr,
            )
    if official and sorted(names) == sorted(n for members in official.values() for n in members):
        return official, "official"
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = math.floor(WHU_SPLIT_FRACTIONS[0] * len(names) + 1e-9)
    n_val = math.floor(WHU_SPLIT_FRACTIONS[1] * len(names) + 1e-9)
    cuts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {split: [names[i] for i in sorted(indices)] for split, indices in cuts.items()}, "seeded"
