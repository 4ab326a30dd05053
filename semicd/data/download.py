"""`semicd download`: the official LEVIR-CD / WHU-CD tile archives, fetched, checked and unpacked.

The UniMatch V2 authors publish the tiles their lists name (A/, B/, label/ of 256 px PNGs) as `LEVIR-CD.zip` and
`WHU-CD.zip` in the `LiheYoung/UniMatch-V2` Hugging Face repository (see https://github.com/LiheYoung/UniMatch-V2,
remote-sensing/README.md). We fetch them through `semiseg.hub` (the Hugging Face cache: resumed, downloaded once),
record the archive's SHA-256 once it has verified (`<out>/checksums.yaml`, written after the unpacked tiles are
checked, so a damaged first download records nothing; a later archive that differs is refused), unpack into a hidden temporary folder, check that every tile of the shipped official lists is there
(A, B and label), copy the lists beside the tiles and only then rename the folder into place: `<out>/LEVIR-CD/`
either is complete or does not exist.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from semiseg.data.lists import DATASETS_DIR
from semiseg.errors import SemisegError
from semiseg.hub import HubFile, hub_download
from semiseg.io import remove_stale_temporaries, temp_path_for, write_lines_atomic, write_yaml_atomic

from .official import SETS, official_sets

LISTS_DIR = DATASETS_DIR  # where the shipped official lists are (tests point it at tiny fake lists)
CHECKSUMS = "checksums.yaml"
TILE_FOLDERS = ("A", "B", "label")


@dataclass(frozen=True)
class OfficialArchive:
    dataset: str  # the lists' folder under datasets/
    file: HubFile
    folder: str  # what the tiles' folder is called under --out


ARCHIVES = {
    "levir-cd": OfficialArchive("levir_cd", HubFile("LiheYoung/UniMatch-V2", "LEVIR-CD.zip"), "LEVIR-CD"),
    "whu-cd": OfficialArchive("whu_cd", HubFile("LiheYoung/UniMatch-V2", "WHU-CD.zip"), "WHU-CD"),
}


def download_dataset(name: str, out: str | Path, archive: str | Path | None = None) -> dict:
    """Fetch (or take `archive`, a local copy of the zip), verify and unpack one official dataset into
    `<out>/<folder>`; returns a summary. An existing complete folder is kept (checked, not downloaded again)."""
    spec = ARCHIVES[name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / spec.folder
    expected = official_sets(spec.dataset, LISTS_DIR)
    summary = {"dataset": name, "root": str(target), **{s: len(expected[s]) for s in SETS}}
    if target.exists():
        missing = missing_tiles(target, expected)
        if missing:
            raise SemisegError(
                f"{target} exists but lacks {len(missing)} listed tiles (e.g. {missing[0]}): delete it and run again"
            )
        return {**summary, "status": "already there, verified"}
    zip_path = Path(archive) if archive is not None else hub_download(spec.file)
    if not zip_path.is_file():
        raise SemisegError(f"archive {zip_path} does not exist")
    sha256 = _check_sum(out / CHECKSUMS, spec.file.filename, zip_path)  # compared now, recorded once verified
    remove_stale_temporaries(target)
    scratch = temp_path_for(target, "")
    try:
        _unpack(zip_path, scratch)
        root = _tile_root(scratch, zip_path)
        missing = missing_tiles(root, expected)
        if missing:
            raise SemisegError(
                f"{zip_path.name} lacks {len(missing)} tiles of the official lists (e.g. {missing[0]}): the download "
                f"may be damaged; delete it from the Hugging Face cache (or re-download {spec.file.url}) and retry"
            )
        for s in SETS:
            write_lines_atomic(root / f"{s}.txt", expected[s])
        _record_sum(out / CHECKSUMS, spec.file.filename, sha256)  # only an archive that verified is recorded
        try:
            root.rename(target)
        except OSError as err:
            if target.exists() and not missing_tiles(target, expected):  # another download into --out won
                return {**summary, "status": "already there, verified (another download finished first)"}
            raise SemisegError(f"cannot move the unpacked tiles to {target}: {err}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**summary, "status": "downloaded, verified", "archive": str(zip_path), "sha256": sha256}


def missing_tiles(root: Path, expected: dict[str, list[str]]) -> list[str]:
    """`<folder>/<name>` of every listed tile that is not in root's A/, B/ or label/."""
    present = {
        f: {p.name for p in (root / f).iterdir()} if (root / f).is_dir() else set() for f in TILE_FOLDERS
    }
    return [
        f"{f}/{n}" for names in expected.values() for n in names for f in TILE_FOLDERS if n not in present[f]
    ]


def _check_sum(record: Path, key: str, zip_path: Path) -> str:
    """The archive's SHA-256, compared with the one recorded by the first download that verified (if any)."""
    from semiseg.models.checkpoints import file_sha256

    sha256 = file_sha256(zip_path)
    sums = yaml.safe_load(record.read_text()) if record.is_file() else {}
    sums = sums if isinstance(sums, dict) else {}
    if key in sums and sums[key] != sha256:
        raise SemisegError(
            f"{zip_path} (SHA-256 {sha256[:12]}...) differs from the {key} first downloaded here ({sums[key][:12]}..., "
            f"recorded in {record}): the archive changed or is damaged; delete the record to accept it"
        )
    return sha256


def _record_sum(record: Path, key: str, sha256: str) -> None:
    """Record `sha256` for `key` unless a checksum is recorded already (read again: another download may have
    recorded it meanwhile)."""
    sums = yaml.safe_load(record.read_text()) if record.is_file() else {}
    sums = sums if isinstance(sums, dict) else {}
    if key not in sums:
        write_yaml_atomic(record, {**sums, key: sha256})


def _unpack(zip_path: Path, folder: Path) -> None:
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(zip_path) as z:
            members = z.infolist()
            for member in tqdm(
                members, desc=f"unpack {zip_path.name}", unit="file", disable=not sys.stderr.isatty()
            ):
                z.extract(
                    member, folder
                )  # member names are sanitised by zipfile: nothing lands outside `folder`
    except (zipfile.BadZipFile, OSError) as err:
        raise SemisegError(f"cannot unpack {zip_path}: {err}") from None


def _tile_root(folder: Path, zip_path: Path) -> Path:
    """The folder holding A/, B/ and label/: the archive's top level or one folder below it."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if all((candidate / f).is_dir() for f in TILE_FOLDERS):
            return candidate
    raise SemisegError(f"{zip_path.name} has no A/, B/ and label/ folders at its top or one level down")
