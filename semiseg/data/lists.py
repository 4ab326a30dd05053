"""Split lists: the text files that say which images are labeled, unlabeled and for evaluation.

Two line formats, both those of the official UniMatch V2 / SemiCD `splits/` folders so they work unchanged:
segmentation lines are `"<image_rel> <mask_rel>"` relative to the data root (an unlabeled line may omit its mask
or write `None`); change-detection lines are one tile name (`read_name_list`). A split is a folder holding
`labeled.txt` and usually `unlabeled.txt`; the evaluation list sits in it or one level up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from semiseg.errors import SemisegError
from semiseg.io import write_lines_atomic

# Split folders made with `semiseg splits` / `semicd splits --out datasets/<dataset>/<name>` can be named by
# `<name>` alone. The folder is the repository's `datasets/` (a source checkout, as the README installs it).
DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"


@dataclass(frozen=True)
class SplitItem:
    """One line of a segmentation split file: an image and, when labeled, its mask (paths relative to the root)."""

    image: str
    mask: str | None = None


def check_relative(entry: str, where: str) -> str:
    """Refuse a list entry that would leave its data root: an absolute path, or one that climbs with `..`."""
    parts = Path(entry).parts
    if Path(entry).is_absolute() or ".." in parts:
        raise SemisegError(
            f"{where}: {entry!r} points outside the data root; list paths must be relative to it, without '..'"
        )
    return entry


def read_split_file(path: str | Path) -> list[SplitItem]:
    """Read a segmentation split file: one `"<image> [<mask>|None]"` per line, blank lines skipped; every path
    must stay inside the data root (`check_relative`)."""
    path = Path(path)
    if not path.is_file():
        raise SemisegError(
            f"split file {path} does not exist; check data.split or create it with `semiseg splits`"
        )
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) > 2:
            raise SemisegError(
                f"{path}:{lineno}: expected '<image> <mask>' but found {len(tokens)} fields "
                "(paths with spaces are not supported in split files; rename the files)"
            )
        mask = tokens[1] if len(tokens) == 2 and tokens[1] != "None" else None
        for entry in (tokens[0], mask):
            if entry is not None:
                check_relative(entry, f"{path}:{lineno}")
        items.append(SplitItem(tokens[0], mask))
    return items


def write_split_file(path: str | Path, items: Iterable[SplitItem]) -> None:
    """Write a segmentation split file atomically, so an interrupted run never leaves half a list."""
    lines = []
    for item in items:
        for p in (item.image, item.mask):
            if p is not None and (not p or any(c.isspace() for c in p)):
                raise SemisegError(
                    f"cannot write {p!r} to a split file: paths must be non-empty without spaces"
                )
        lines.append(f"{item.image} {item.mask if item.mask is not None else 'None'}")
    write_lines_atomic(path, lines)


def read_name_list(path: str | Path) -> list[str]:
    """One file name per line (extension optional); blank lines and surrounding whitespace are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SemisegError(f"name list {path} does not exist: give a text file with one tile name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise SemisegError(f"name list {path} is empty: it needs one tile name per line")
    for name in names:
        check_relative(name, str(path))
    return names


def find_split_folder(
    split: str,
    dataset: str,
    root: Path | None = None,
    datasets_dir: Path = DATASETS_DIR,
    missing_ok: bool = False,
) -> Path | None:
    """`data.split` as a folder path, or a split name under `datasets/<dataset>/` or `<root>/splits/`.

    A split that looks like a path (it has a separator) and is not there is an error, never a name lookup:
    that would hide the typo. `missing_ok`: return None instead (evaluation, which needs at most the split's
    evaluation list, can find it elsewhere).
    """
    folder = Path(split).expanduser()
    if folder.is_dir():
        return folder
    named = [Path(datasets_dir) / dataset] + ([root / "splits"] if root is not None else [])
    for parent in named:
        if (parent / split).is_dir():
            return parent / split
    if missing_ok:
        return None
    if os.sep in split or (os.altsep and os.altsep in split):
        raise SemisegError(f"split folder {folder} does not exist; check data.split")
    available = sorted(
        str(p.parent.relative_to(parent))
        for parent in named
        if parent.is_dir()
        for p in parent.rglob("labeled.txt")
    )
    hint = f"available splits: {', '.join(available)}" if available else "no splits found"
    raise SemisegError(
        f"unknown split {split!r} for dataset {dataset!r} ({hint} under {' or '.join(map(str, named))}); pass a "
        "split folder path or make one with the `splits` command"
    )


def find_list(filename: str, *folders: Path | None) -> Path | None:
    """The first `folder/filename` that exists, in the order given (None folders skipped)."""
    for folder in folders:
        if folder is not None and (folder / filename).is_file():
            return folder / filename
    return None


def resolve_list(value: str, *folders: Path | None) -> Path:
    """A list option (`data.val_list`, `data.unlabeled_list`): a path to a file, or a list name such as `test`
    found as `<name>.txt` in `folders` (the split folder, its parent, the data root), in that order."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    found = find_list(f"{value}.txt", *folders)
    if found is not None:
        return found
    searched = ", ".join(str(f) for f in folders if f is not None) or "no folder"
    raise SemisegError(f"list {value!r} not found: no such file, and no {value}.txt in {searched}")
