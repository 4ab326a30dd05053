"""Files on the Hugging Face hub named `hf://OWNER/REPO/PATH[@REVISION]`, wherever a checkpoint or weight file is
accepted (`--checkpoint`, `model.weights`), and the official dataset archives (`semicd download`).

A file is downloaded once into the standard Hugging Face cache (`HF_HUB_CACHE`, default
`~/.cache/huggingface/hub`; huggingface_hub resumes interrupted downloads) and read from there afterwards, also
offline. When the file is not cached and the hub cannot be reached (no network, or `HF_HUB_OFFLINE=1`), we stop
at once with one line naming the URL and what to do, instead of the hub client's retries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from semiseg.errors import SemisegError

PREFIX = "hf://"


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository (a model repository: that is where checkpoints and the archives live)."""

    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def is_hub_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_hub_path(value: str) -> HubFile:
    """`hf://OWNER/REPO/PATH[@REVISION]` -> HubFile (the revision: a branch, tag or commit)."""
    rest = value[len(PREFIX) :]
    head, _, last = rest.rpartition("/")
    if "@" in last:
        last, _, revision = last.partition("@")
    else:
        revision = None
    parts = f"{head}/{last}".split("/") if head else [last]
    if len(parts) < 3 or not all(parts) or revision == "":
        raise SemisegError(
            f"{value!r} is not a hub file: write hf://OWNER/REPO/PATH or hf://OWNER/REPO/PATH@REVISION"
        )
    return HubFile(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision)


def resolve_path(value: str | os.PathLike) -> Path:
    """A local path as is; an `hf://` name as the path of its file in the Hugging Face cache (downloaded once)."""
    if is_hub_path(value):
        return hub_download(parse_hub_path(str(value)))
    return Path(value)


def hub_download(file: HubFile, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local path of `file`: from the cache if it is there, else downloaded into it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from semiseg.models.encoder import _hub_reachable  # the encoder's quick check (never when set offline)

    where = dict(repo_id=file.repo_id, filename=file.filename, revision=file.revision, cache_dir=cache_dir)
    try:
        return Path(hf_hub_download(**where, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if not _hub_reachable():
        raise SemisegError(
            f"{file} is not in the Hugging Face cache and the hub cannot be reached (offline?): on a machine with "
            f"network run the same command once (or download {file.url}) and give the local path"
        )
    try:
        return Path(hf_hub_download(**where))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise SemisegError(
            f"{file} is not on the hub ({type(err).__name__}): check OWNER/REPO, the path and the revision"
        ) from None
    except Exception as err:  # noqa: BLE001 - network errors come in many types; the message is what matters
        raise SemisegError(
            f"could not download {file.url} ({type(err).__name__}); try again or download it yourself"
        ) from None
