"""What a run must remember to resume exactly: its position, its best scores, every RNG, and the checkpoint files.

Checkpoints are written atomically (a crash mid-save never leaves a truncated `latest.pt` that looks complete)
and hold only tensors and plain values, so they load with `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import ast
import dataclasses
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg.config import Config
from semiseg.errors import SemisegError, error_reason
from semiseg.io import atomic_path
from semiseg.models.checkpoints import CHECKPOINT_FORMAT, FORMAT_VERSION, model_card
from semiseg.models.encoder import check_keys
from semiseg.train.distributed import DistInfo
from semiseg.train.run_folder import config_changes

# How training crops are keyed (semiseg.data.sample). Checkpoints from before this was recorded keyed segmentation
# crops on (seed, epoch, index): they resume, but draw different crops from then on.
SAMPLE_KEYING = "seed,stream,index,epoch"

# Settings that decide what the weights are: a resumed run must agree on them.
# (A frozen encoder has no optimiser state, so freezing or unfreezing cannot resume the optimiser either.)
# The input (bands, their statistics) is part of the model: a resume cannot change it either.
FIXED_ON_RESUME = (
    "task", "data.nclass", "model.encoder", "model.freeze_encoder", "data.bands", "data.mean", "data.std"
)  # fmt: skip
# Settings a resume changes only with consent (`--force`), besides the schedule's length.
CONSENT_ON_RESUME = ("method.name",)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimiser steps done
    batch_in_epoch: int = 0  # steps done inside the current epoch (non-zero after a max_iters stop)
    total_iters: int = 0  # length of the LR schedule; 0 in checkpoints written before it was recorded
    # value/source/epoch of the best evaluation, and last_<model> (the latest score of each evaluated model)
    best: dict[str, Any] = field(default_factory=dict)


# How torch's zip writer reports a write that failed underneath it (a full disk, a file-size limit).
WRITE_FAILURES = ("unexpected pos", "file write failed", "iostream error", "No space left")


def save_atomic(obj: Any, path: Path) -> None:
    """Write a checkpoint under a temporary name and rename it: the previous file stays whole until the new one
    is. A failed write (a full disk is the usual cause: a ViT-L run's checkpoint with EMA and AdamW state is about
    5 GB) is one line naming the free space and the size needed; torch reports it as a RuntimeError."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not any(w in str(err) for w in WRITE_FAILURES):
            raise  # not a failed write (e.g. a device error copying tensors): keep the traceback
        try:
            free = f"{shutil.disk_usage(path.parent).free / 1e9:.1f} GB free on its disk"
        except OSError:
            free = "its folder cannot be read"
        raise SemisegError(
            f"could not save the checkpoint {path}: about {tensor_bytes(obj) / 1e9:.1f} GB needed, {free} "
            f"({error_reason(err)})"
        ) from None


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested checkpoint structure (what torch.save writes, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one of our training checkpoints with `weights_only=True` (no pickled code runs)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SemisegError(
            f"cannot read checkpoint {path} ({type(err).__name__}); delete it to start over"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise SemisegError(f"{path} is not a semiseg training checkpoint")
    return obj


def check_resume(ckpt: dict[str, Any], cfg: Config, path: Path, total_iters: int, force: bool) -> list:
    """What changed since the checkpoint's segment, as (key, before, now); refuses what a resume cannot honour.

    The task, class count and encoder decide what the weights are: a change there needs a new run. A different
    method or schedule length (other data, batch size or epochs: the learning rate would jump) needs `force`.
    Anything else is allowed; the caller logs it and keeps the new segment's config.
    """
    changes = config_changes(ckpt["config"], cfg.to_dict())
    changed = {key: (before, now) for key, before, now in changes}
    if changed.get("model.freeze_encoder") == (None, False):
        del changed["model.freeze_encoder"]  # written before the key existed: the encoder was trained
    for key, default in (("train.compile", "off"), ("optim.fused", None)):
        if key in changed and changed[key] == (None, default):
            del changed[key]  # written before the key existed, and left at its default
    for key in FIXED_ON_RESUME:
        if key in changed:
            raise SemisegError(
                f"{path} was trained with {key}={changed[key][0]!r} but the config says {changed[key][1]!r}: "
                "use a new --out folder to start a different run"
            )
    needs = [f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in CONSENT_ON_RESUME if k in changed]
    saved_iters = ckpt["state"].get("total_iters", 0)
    if saved_iters and saved_iters != total_iters:
        needs.append(
            f"a schedule of {saved_iters} iterations -> {total_iters} (other data, batch size or epochs: the "
            "learning rate would jump)"
        )
    if needs and not force:
        raise SemisegError(
            f"resuming {path} would change {'; '.join(needs)}: resume with the same settings, use a new --out, or "
            "pass --force to resume anyway (each segment's config is kept)"
        )
    return [change for change in changes if change[0] in changed]


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain values (weights_only-loadable)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(info: DistInfo) -> list[dict]:
    """Every rank's RNG state (each rank draws its own augmentations), for an exact resume. Collective."""
    if not info.enabled:
        return [rng_state()]
    gathered: list = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, rng_state())
    return gathered


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_payload(
    cfg: Config,
    step: Any,
    state: TrainState,
    classes: list[str],
    rng: list[dict],
    input_bands: list[int] | None = None,
) -> dict[str, Any]:
    """Everything a resume needs (model, EMA, optimiser, scaler, method state, position, RNGs, config) and what a
    user of the weights needs (`meta`: the model card an export also carries, with the training data and crop, the
    best score and which model made it, the pretrained weights and their licence)."""
    model, d = step.model, cfg.data
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "ema": step.ema.state_dict() if step.ema is not None else None,
        "optimizer": step.optimizer.state_dict(),
        "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None,
        "method": step.method.state_dict(),
        "state": dataclasses.asdict(state),
        "rng": rng,
        "sample_keying": SAMPLE_KEYING,
        "config": cfg.to_dict(),
        "meta": model_card(
            model,
            {
                "task": cfg.task,
                "classes": list(classes),
                "crop_size": d.crop_size,
                "training_data": {
                    "dataset": d.dataset,
                    "root": d.root,
                    "split": d.split,
                    "val_list": d.val_list,
                },
                "best": {k: state.best.get(k) for k in ("value", "source", "epoch")}
                | {"metric": step.primary_metric},
                "best_source": state.best.get("source"),
                "pretrained_weights": cfg.model.weights,
                "freeze_encoder": cfg.model.freeze_encoder,
                "pretrained_license": model.spec.weights_license if cfg.model.weights else None,
                "input_bands": input_bands or d.bands,
                "rgb_bands": cfg.model.rgb_bands,
                "stretch": d.stretch,
            },
        ),
    }


def restore(ckpt: dict[str, Any], step: Any, info: DistInfo) -> TrainState:
    """Put a checkpoint's weights, optimiser, method state and this rank's RNGs back; return its position (the
    schedule length is the current one: `check_resume` has decided whether it may differ)."""
    check_keys(ckpt["model"], step.model.state_dict(), what="the checkpoint to resume")
    step.model.load_state_dict(ckpt["model"])
    if step.ema is not None and ckpt.get("ema") is not None:
        step.ema.load_state_dict(ckpt["ema"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    step.method.load_state_dict(ckpt.get("method") or {})
    set_rng_state(ckpt["rng"][info.rank] if info.rank < len(ckpt["rng"]) else ckpt["rng"][0])
    return TrainState(**{**ckpt["state"], "total_iters": step.total_iters})
