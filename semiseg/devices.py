"""The one place that turns a device name (`auto`, `cpu`, `cuda`, `cuda:N`) into a torch device, and an autocast
setting into a dtype."""

from __future__ import annotations

import torch

from semiseg.errors import SemisegError

# autocast settings (`train.amp`, `--amp`) -> dtype; "none" runs in float32
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# prediction's `--precision`; the older `--amp` spelled fp32 "none"
PRECISIONS = ("fp32", "bf16", "fp16")


def pick_precision(precision: str | None = None, amp: str | None = None) -> str:
    """The prediction precision (fp32, bf16 or fp16) from `precision` or its older alias `amp` (none = fp32).

    Why one function: `predict_scene`, `predict_folder` and the Python API all take both names and must agree on
    what they mean (`semiseg.batch.recorded_options` reads old batch records by the same rule). Both given and
    different: refused, rather than one silently winning."""
    names = [_precision_name(v) for v in (precision, amp) if v is not None]
    if len(set(names)) > 1:
        raise SemisegError(f"precision {precision!r} and amp {amp!r} disagree: give only precision")
    return names[0] if names else "fp32"


def _precision_name(value: str) -> str:
    name = "fp32" if value == "none" else value
    if name not in PRECISIONS:
        raise SemisegError(f"precision {value!r}: use fp32, bf16 or fp16")
    return name


def pick_device(name: str, index: int | None = None) -> torch.device:
    """`auto` takes the GPU when there is one. `index` (a process's local rank) picks the GPU under `auto` and
    `cuda`; an explicit `cuda:N` wins."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SemisegError(f"device {name!r} was asked for but no CUDA device is available")
        if name == "cuda" and index is not None:
            return torch.device("cuda", index)
    try:
        return torch.device(name)
    except RuntimeError:
        raise SemisegError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
