"""Files on the Hugging Face hub named `hf://OWNER/REPO/PATH[@REVISION]` (or `hf://OWNER/REPO@REVISION/PATH`), wherever a checkpoint or weight file is
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

from semiseg.errors import SemisegError, one_line

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
        if self.revision and "@" in self.filename:  # only this form keeps the file name's @ apart
            return f"{PREFIX}{self.repo_id}@{self.revision}/{self.filename}"
        return f"{PREFIX}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def is_hub_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


FILE_ENDINGS = (".pt", ".pth", ".safetensors", ".bin", ".ckpt", ".zip", ".yaml", ".json", ".onnx")
FORMS = "write hf://OWNER/REPO/PATH, hf://OWNER/REPO/PATH@REVISION or hf://OWNER/REPO@REVISION/PATH"


def parse_hub_path(value: str) -> HubFile:
    """`hf://OWNER/REPO/PATH[@REVISION]` or `hf://OWNER/REPO@REVISION/PATH` (huggingface_hub's own form) ->
    HubFile. The revision is a branch, tag, commit or `refs/pr/N` (`refs/convert/NAME`).

    In the trailing form the revision is what follows the last `@`, unless that ends like a file name
    (`model@2x.pt`: a file with `@` in its name); with the revision after REPO, PATH is taken as it is (any `@`
    in it belongs to the file name).
    """
    parts = value[len(PREFIX) :].split("/")
    if len(parts) < 3 or "@" in parts[0]:
        raise SemisegError(f"{value!r} is not a hub file: {FORMS}")
    owner, repo, rest = parts[0], parts[1], parts[2:]
    if "@" in repo:  # hf://OWNER/REPO@REVISION/PATH
        repo, _, revision = repo.partition("@")
        if revision == "refs" and len(rest) >= 3:  # refs/pr/N, refs/convert/NAME
            revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
        filename = "/".join(rest)
    else:  # hf://OWNER/REPO/PATH[@REVISION]
        path = "/".join(rest)
        filename, at, revision = path.rpartition("@")
        if not at or revision.lower().endswith(FILE_ENDINGS):
            filename, revision = path, None
    if not (owner and repo and filename) or "@" in repo or revision == "" or "" in filename.split("/"):
        raise SemisegError(f"{value!r} is not a hub file: {FORMS}")
    return HubFile(f"{owner}/{repo}", filename, revision)


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
    except (
        ValueError
    ) as err:  # HFValidationError (a ValueError): a repository name or revision the hub refuses
        raise SemisegError(f"{file} is not a valid hub name ({one_line(err)}): {FORMS}") from None
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
    except ValueError as err:  # HFValidationError
        raise SemisegError(f"{file} is not a valid hub name ({one_line(err)}): {FORMS}") from None
    except Exception as err:  # noqa: BLE001 - network errors come in many types; the message is what matters
        raise SemisegError(
            f"could not download {file.url} ({type(err).__name__}); try again or download it yourself"
        ) from None
