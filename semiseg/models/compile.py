"""Regional `torch.compile` of a `Segmentor`: every transformer block and the DPT head, each compiled in place.

Why regional: the encoder is a stack of identical blocks. Compiling each block (rather than the whole model)
lets dynamo compile the block's code once and reuse it for all of them, and for the EMA copy too, so compile
time stays in seconds to a minute instead of growing with depth; the code between blocks (patch embedding,
position-embedding resampling, the |f_A − f_B| fusion, complementary dropout, the final resize) stays eager, so
its random draws and shape checks are exactly the uncompiled model's.

Why in place (`nn.Module.compile`) rather than `torch.compile(module)`: the wrapper returned by the latter
renames every state-dict key (`_orig_mod.`), which would make checkpoints depend on the setting. In place,
parameters, keys, `deepcopy` and `functional_call` (PrevMatch's snapshots) are unchanged.

Compilation needs a working backend (a C++ compiler for Inductor on CPU, Triton on CUDA). `compile_problem`
tries a two-layer model first, so a machine without one trains uncompiled after one warning instead of failing
at the first step.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_problem(device: torch.device, mode: str) -> str | None:
    """Why `torch.compile(mode=mode)` cannot run a forward and backward on `device` here (None if it can).

    The probe's initialisation draws on a forked generator: the run's own random draws are left as they were."""
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            probe = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2)).to(device)
            x = torch.linspace(-1.0, 1.0, 32, device=device).reshape(4, 8)
            out = torch.compile(probe, mode=torch_mode(mode))(x).sum()
            torch.autograd.grad(out, list(probe.parameters()))  # the backward graph compiles too
    except Exception as err:  # any backend failure means: train uncompiled
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{type(err).__name__}: {first[:200]}"
    return None


def torch_mode(mode: str) -> str | None:
    """The `torch.compile` mode of a `train.compile` value. `max-autotune` leaves CUDA graphs out: one block's
    graph replayed for every block, a no-grad teacher between student passes and two batch sizes per step are a
    pattern we have not verified CUDA graphs on, and kernel tuning is what the setting is for."""
    return {"default": None, "max-autotune": "max-autotune-no-cudagraphs"}.get(mode, mode)


def compile_regions(model: nn.Module, mode: str, backend: str = "inductor") -> int:
    """Compile, in place, each block of the model's ViT and its head; returns how many modules were compiled.

    `model` is a `Segmentor` (or any module with `encoder.vit.blocks` and `head`). `backend` other than Inductor
    (e.g. `eager`) checks the wiring without generating code."""
    regions = [*model.encoder.vit.blocks, model.head]
    for region in regions:
        if backend == "inductor":
            region.compile(mode=torch_mode(mode))
        else:
            region.compile(backend=backend)
    return len(regions)
