"""Seeded labeled/unlabeled splits for change-detection tiles (the SemiCD rule), for datasets without official lists.

These do NOT reproduce the official LEVIR-CD / WHU-CD lists: for all 8 (dataset, percentage) cells the labeled
set differs. The official lists ship in `datasets/levir_cd/` and `datasets/whu_cd/` (`semicd.data.official`) and
are what the `levir_cd` / `whu_cd` configs use; compare with published numbers only on those.

The rule: shuffle the train list with seed 10 and take the first floor(p * N) names as labeled, the rest as
unlabeled. Every percentage cuts the *same* shuffled order, so the splits are nested (the 5 % labeled set is inside
the 10 % one, and so on).

How we shuffle, exactly: the names are sorted (so that the result does not depend on directory listing order),
then `random.Random(seed).shuffle(names)` (Python's Mersenne Twister; identical to `random.seed(seed);
random.shuffle(names)`). Our lists are reproducible from the same train list; the counts match the official ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from semiseg.data.lists import read_name_list
from semiseg.errors import SemisegError
from semiseg.io import IMAGE_EXTENSIONS, write_lines_atomic

DEFAULT_PERCENTS = (5, 10, 20, 40)


def semicd_splits(
    names: Sequence[str], percents: Sequence[float] = DEFAULT_PERCENTS, seed: int = 10
) -> dict[float, tuple[list[str], list[str]]]:
    """{percent: (labeled, unlabeled)}: the first floor(percent/100 * N) names of one seeded shuffle are
    labeled.

    For LEVIR-CD's 7120 train tiles: 5 % -> 356, 10 % -> 712, 20 % -> 1424, 40 % -> 2848 labeled.
    """
    if not names:
        raise SemisegError("cannot split an empty train list: check the train folder or list")
    if len(set(names)) != len(names):
        raise SemisegError("the train list has duplicate names: each tile must appear once")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    splits = {}
    for p in percents:
        if not 0 < p <= 100:
            raise SemisegError(f"split percentage {p} is outside (0, 100]")
        # The epsilon guards against p * N / 100 landing a hair below an exact integer in floating point.
        count = math.floor(p * len(order) / 100 + 1e-9)
        if count == 0:
            raise SemisegError(
                f"{p}% of {len(order)} tiles labels none: use a larger percentage (at least {100 / len(order):.3g}%)"
            )
        splits[p] = (order[:count], order[count:])
    return splits


def _train_names(root: Path) -> list[str]:
    """The train tiles of a prepared dataset: `root/train.txt` (flat layout), else the files in train/A."""
    if (root / "train.txt").is_file():
        return read_name_list(root / "train.txt")
    folder = root / "train" / "A"
    if folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if names:
            return names
    raise SemisegError(f"no train list in {root}: expected {root}/train.txt or images in {folder}")


def _percent_dir(p: float) -> str:
    return f"{p:g}%"


def write_semicd_splits(
    root: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    percents: Sequence[float] = DEFAULT_PERCENTS,
    seed: int = 10,
) -> dict[float, int]:
    """Write `<out_dir>/<p>%/labeled.txt` and `unlabeled.txt` for each percentage; returns {p: labeled count}.

    The train names come from `names`, else `root/train.txt`, else the files in `root/train/A`. Names are
    written as given (the tile datasets accept them with or without extension).
    """
    names = list(names) if names is not None else _train_names(Path(root))
    out = Path(out_dir)
    counts = {}
    for p, (labeled, unlabeled) in semicd_splits(names, percents, seed).items():
        write_lines_atomic(out / _percent_dir(p) / "labeled.txt", labeled)
        write_lines_atomic(out / _percent_dir(p) / "unlabeled.txt", unlabeled)
        counts[p] = len(labeled)
    return counts
