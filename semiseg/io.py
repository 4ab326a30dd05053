"""Reading images and writing files, each done one way for the whole toolkit.

Writes: every file we produce (checkpoints, configs, split lists, PNG tiles and masks, run records, exported
weights) is written under a hidden temporary name in its own folder and renamed onto its path as the very last
step. `os.replace` within one folder is atomic, so a crash, a kill or a full disk leaves either the previous
file or the complete new one, never a truncated file that looks complete. The temporary names are unique
(process id and a random suffix), so two processes writing the same folder never write into each other's
temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.errors import SemisegError

# Image files we read (lists, folders, tiles); the first one is what a name without extension is tried as first.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def temp_path_for(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A hidden, unique temporary name beside `path`, keeping its extension (or `suffix`).

    The extension matters: image and raster writers choose their format from it.
    """
    p = Path(path)
    ext = p.suffix if suffix is None else suffix
    return p.with_name(f".{p.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{ext}")


TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp[^/]*$")  # what `temp_path_for` makes


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries of `path` left by a process of ours that no longer runs (a `kill -9`, a power cut).

    Only names `temp_path_for(path, ...)` makes (files, or scratch folders) are touched, only for this output
    name, and only when the process id in the name is not running here and is not this process: another output's
    temporaries, a live run's and our own are left alone. (On a folder shared between machines a process id says
    nothing about the other machine: there, two runs must not write the same output name at once anyway.)
    Returns what was removed.
    """
    target = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = TEMP_NAME.match(entry.name)
            if not (match and entry.name.startswith(f".{target.name}.")):
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or process_running(pid):
                continue
            if entry.is_dir():  # a scratch folder (semiseg.active)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                remove_quietly([entry])
            removed.append(entry)
    return removed


def process_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_quietly(paths: Iterable[str | os.PathLike]) -> None:
    """Delete files if they exist; cleanup must never mask the error that triggered it."""
    for p in paths:
        with contextlib.suppress(OSError):
            os.remove(p)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths to write; on success rename each onto its target, on any error delete them.

    With several paths every file is written before any is renamed, so a set of outputs that belong together
    (weights and their metadata) is published together.
    """
    targets = [Path(p) for p in paths]
    temps = [temp_path_for(p) for p in targets]
    try:
        yield temps
        mode = _new_file_mode()
        for tmp, target in zip(temps, targets):
            os.chmod(tmp, mode)  # some writers (safetensors) create 0600 files: give the usual permissions
            os.replace(tmp, target)
    finally:
        remove_quietly(temps)


def _new_file_mode() -> int:
    """The permissions a plain new file gets here: 0o666 minus the umask (0o644 with the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_paths` for one file: `with atomic_path(p) as tmp: write(tmp)`."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> Path:
    import yaml

    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def write_lines_atomic(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """One line per item (a split or name list), parent folders created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def save_png_atomic(path: str | os.PathLike, array: np.ndarray, palette: list[int] | None = None) -> Path:
    """A PNG of a uint8 array (H x W or H x W x 3); with `palette` a palette image of class ids."""
    from PIL import Image

    image = Image.fromarray(array, mode="P" if palette is not None else None)
    if palette is not None:
        image.putpalette(palette)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 uint8: grey, palette and RGBA images are converted so every image has three channels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in (
                "I",
                "I;16",
                "I;16B",
                "I;16L",
                "F",
            ):  # converting would clip them to 0..255 silently
                raise SemisegError(
                    f"{path} is a {img.mode} image (16-bit or float): read such tiles as GeoTIFFs with data.bands "
                    "and data.stretch (change detection), or convert them to 8-bit first"
                )
            return np.array(img.convert("RGB"))  # writable: callers may hand it to torch
    except OSError as err:
        hint = (
            "; GeoTIFF tiles with more bands or 16-bit values need data.bands"
            if str(path).lower().endswith((".tif", ".tiff"))
            else ""
        )
        raise SemisegError(f"cannot read image {path}: {err}{hint}") from None


def write_run_record(
    path: str | os.PathLike, command: str, arguments: Mapping[str, Any], result: Mapping | None = None
) -> Path:
    """What a command was asked and what it produced, as YAML beside its outputs (so results explain
    themselves months later)."""
    record: dict[str, Any] = {"command": command, "arguments": dict(arguments)}
    if result is not None:
        record["result"] = json.loads(json.dumps(result, default=str))
    return write_yaml_atomic(path, record)
