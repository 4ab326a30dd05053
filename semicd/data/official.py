"""The official UniMatch V2 split lists of LEVIR-CD and WHU-CD, shipped in `datasets/levir_cd/` and `datasets/whu_cd/`.

Copied unchanged from https://github.com/LiheYoung/UniMatch-V2 (`remote-sensing/splits/{levir,whu}/`, MIT licence,
see `datasets/UniMatch-V2-LICENSE`): `train.txt`, `val.txt`, `test.txt` and `<p>%/labeled.txt` + `unlabeled.txt`
for p = 5, 10, 20, 40. Published numbers are measured on these lists; our seeded generator
(`semicd.data.splits`) does not reproduce them, so the `levir_cd` and `whu_cd` configs use these by default.
"""

from __future__ import annotations

from pathlib import Path

from semiseg.data.lists import DATASETS_DIR, read_name_list
from semiseg.errors import SemisegError

OFFICIAL_SOURCE = "https://github.com/LiheYoung/UniMatch-V2 (remote-sensing/splits, MIT licence)"
OFFICIAL_DATASETS = ("levir_cd", "whu_cd")
SETS = ("train", "val", "test")
PERCENTS = (5, 10, 20, 40)


def official_dir(dataset: str, datasets_dir: Path = DATASETS_DIR) -> Path:
    """The folder of a dataset's official lists (`datasets/<dataset>/`)."""
    if dataset not in OFFICIAL_DATASETS:
        raise SemisegError(f"no official lists for {dataset!r}: we ship {', '.join(OFFICIAL_DATASETS)}")
    folder = Path(datasets_dir) / dataset
    if not (folder / "train.txt").is_file():
        raise SemisegError(
            f"the official {dataset} lists are missing from {folder}: use a source checkout of the repository"
        )
    return folder


def official_sets(dataset: str, datasets_dir: Path = DATASETS_DIR) -> dict[str, list[str]]:
    """{"train": names, "val": names, "test": names} of the official lists (`<name>.png` per line)."""
    folder = official_dir(dataset, datasets_dir)
    return {s: read_name_list(folder / f"{s}.txt") for s in SETS}
