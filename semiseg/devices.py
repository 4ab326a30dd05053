"""The one place that turns a device name (`auto`, `cpu`, `cuda`, `cuda:N`) into a torch device, and an autocast
setting into a dtype."""

from __future__ import annotations

import torch

from semiseg.errors import SemisegError

# autocast settings (`train.amp`, `--amp`) -> dtype; "none" runs in float32
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
