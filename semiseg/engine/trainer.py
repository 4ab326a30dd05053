"""The training loop shared by every method and both tasks.

Read `_train` top to bottom: build everything, maybe resume, then for each epoch: step, EMA, log; evaluate;
checkpoint. Methods only compute a loss; datasets only return samples; this file owns the rest.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from semiseg.augment import IMAGENET_MEAN, IMAGENET_STD
from semiseg.config import Config, dump_config
from semiseg.data.build import DataBundle, build_datasets
from semiseg.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from semiseg.engine.distributed import DistInfo, broadcast_flag, cleanup, init_distributed
from semiseg.engine.ema import EMA
from semiseg.engine.optim import build_optimizer, lr_for_step, set_lr
from semiseg.engine.run_log import RunLog
from semiseg.engine.sampler import EpochSampler, ShardSampler
from semiseg.errors import SemisegError
from semiseg.inference import evaluate
from semiseg.methods import Batch, Models, build_method
from semiseg.metrics import primary_metric
from semiseg.models.loading import build_model

# Settings that change what the weights mean: a resumed run must agree on them.
_FIXED_ON_RESUME = ("task", "data.nclass", "model.encoder", "method.name")


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimiser steps done
    batch_in_epoch: int = 0  # steps done inside the current epoch (non-zero after a max_iters stop)
    best: dict[str, float] = field(
        default_factory=dict
    )  # {"student": .., "ema": .., "value": .., "epoch": ..}


def train(cfg: Config, out: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume, when `out/latest.pt` exists) and return the final state and best metrics."""
    info, device = init_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(out), info, device, progress)
    finally:
        cleanup(info)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loader(ds, batch_size: int, sampler, workers: int, device: torch.device, drop_last: bool) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,  # workers must pick up the dataset's per-epoch seed
    )


def _get(cfg_dict: dict, dotted: str) -> Any:
    node: Any = cfg_dict
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_resume_compatible(saved: dict, cfg: Config, path: Path) -> None:
    now = cfg.to_dict()
    for key in _FIXED_ON_RESUME:
        if _get(saved, key) != _get(now, key):
            raise SemisegError(
                f"{path} was trained with {key}={_get(saved, key)!r} but the config says {_get(now, key)!r}: "
                "use a new --out folder to start a different run"
            )


def _autocast(cfg: Config, device: torch.device):
    if cfg.train.amp == "none":
        return contextlib.nullcontext()
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise SemisegError("train.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _train(cfg: Config, out: Path, info: DistInfo, device: torch.device, progress: bool | None) -> dict:
    latest = out / "latest.pt"
    ckpt = load_checkpoint(latest) if latest.exists() else None
    if ckpt is not None:
        _check_resume_compatible(ckpt["config"], cfg, latest)
    _seed_all(cfg.train.seed * 1000 + info.rank)

    data: DataBundle = build_datasets(cfg)  # bad data fails here, before anything is written to `out`
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, info.is_main)
    if info.is_main:
        dump_config(cfg, out / "config.yaml")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    method = build_method(cfg, mean, std)
    model = build_model(
        cfg.model.encoder, cfg.data.nclass, cfg.task, weights=None if ckpt else cfg.model.weights
    ).to(device)
    ema = EMA(model, cfg.method.ema_decay) if method.uses_ema else None
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    student = model
    if info.enabled:
        student = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    teacher = ema.model if ema is not None and cfg.method.teacher == "ema" else model
    models = Models(student=student, teacher=teacher, raw_student=model)

    # Loaders: the labeled stream is repeated to the unlabeled length by the dataset (official rule).
    bs = cfg.data.batch_size
    bs_l = bs * 2 if cfg.method.name == "supervised" else bs
    sampler_l = EpochSampler(len(data.labeled), cfg.train.seed, info.rank, info.world_size)
    sampler_u = None
    if method.needs_unlabeled:
        sampler_u = EpochSampler(len(data.unlabeled), cfg.train.seed + 1, info.rank, info.world_size)
    iters_per_epoch = (len(sampler_u) // bs) if sampler_u else (len(sampler_l) // bs_l)
    if iters_per_epoch < 1:
        raise SemisegError(
            f"fewer training samples per process than one batch ({bs_l}): lower data.batch_size or add data"
        )
    total_iters = iters_per_epoch * cfg.train.epochs
    val_loader = _loader(
        data.val,
        1,
        ShardSampler(len(data.val), info.rank, info.world_size),
        min(cfg.data.workers, 2),
        device,
        False,
    )

    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["state"])
        method.load_state_dict(ckpt.get("method") or {})
        set_rng_state(ckpt["rng"][info.rank] if info.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        log.info(f"resumed from {latest} at epoch {state.epoch}, iteration {state.iteration}")
    log.info(
        f"{cfg.task} | {cfg.method.name}{'+' + '+'.join(cfg.method.extras) if cfg.method.extras else ''} | "
        f"DINOv2-{cfg.model.encoder} | {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params | "
        f"{iters_per_epoch} iters/epoch x {cfg.train.epochs} epochs | {info.world_size} process(es) on {device}"
    )

    def save(path: Path) -> None:
        rng = _gather_rng(info)  # collective: every rank calls save()
        if info.is_main:
            payload = _checkpoint(cfg, model, ema, optimizer, scaler, state, data.classes, mean, std, rng)
            payload["method"] = method.state_dict()
            save_atomic(payload, path)

    show_bar = info.is_main and (progress if progress is not None else sys.stderr.isatty())
    stopped_early = False
    for epoch in range(state.epoch, cfg.train.epochs):
        start = state.batch_in_epoch
        for sampler, ds, b in ((sampler_l, data.labeled, bs_l), (sampler_u, data.unlabeled, bs)):
            if sampler is not None:
                sampler.set_epoch(epoch, start * b)
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(epoch)
        loader_l = iter(_loader(data.labeled, bs_l, sampler_l, cfg.data.workers, device, True))
        loader_u = (
            iter(_loader(data.unlabeled, bs, sampler_u, cfg.data.workers, device, True))
            if sampler_u
            else None
        )
        model.train()
        bar = _progress(iters_per_epoch, start, epoch, cfg.train.epochs, show_bar)
        t0 = time.time()
        for b in range(start, iters_per_epoch):
            labeled = Batch.from_loader(next(loader_l), device)
            unlabeled = Batch.from_loader(next(loader_u), device) if loader_u else None
            set_lr(optimizer, lr_for_step(cfg.optim, state.iteration, total_iters), cfg.optim.lr_multi)
            method.set_progress(state.iteration, total_iters)
            with _autocast(cfg, device):
                result = method.step(models, labeled, unlabeled)
            if broadcast_flag(not torch.isfinite(result.loss).item(), info, device):
                save(out / "nonfinite.pt")
                raise SemisegError(
                    f"the loss became non-finite at iteration {state.iteration} (epoch {epoch}; terms: "
                    f"{_fmt(result.logs)}): lower optim.lr or use train.amp=none; the last good state is in "
                    f"{latest.name}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, state.iteration)
            state.iteration += 1
            state.batch_in_epoch = b + 1
            logs = {"loss": result.loss.item(), **result.logs, "lr": optimizer.param_groups[0]["lr"]}
            if state.iteration % cfg.train.log_every == 0 or b == start:
                log.train_point(state.iteration, logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(_fmt(logs))
            if cfg.train.max_iters is not None and state.iteration >= cfg.train.max_iters:
                stopped_early = True
                break
        if bar is not None:
            bar.close()
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs}: {_fmt(logs)} ({time.time() - t0:.1f}s)")
        epoch_done = state.batch_in_epoch >= iters_per_epoch
        if epoch_done:
            state.epoch, state.batch_in_epoch = epoch + 1, 0
        due = epoch_done and (state.epoch % cfg.train.eval_every == 0 or state.epoch == cfg.train.epochs)
        scores, is_best = None, False
        if due or stopped_early:  # a mid-epoch stop is scored too, so best.pt always exists
            scores = _evaluate_all(cfg, model, ema, val_loader, device)
            is_best = _record(cfg, log, state, scores, state.epoch + state.batch_in_epoch / iters_per_epoch)
        if epoch_done:
            method.on_epoch_end(model, state.epoch, scores)
        if scores is not None or stopped_early or state.epoch % cfg.train.save_every == 0:
            save(latest)
        if is_best:
            save(out / "best.pt")
        if stopped_early:
            log.info(
                f"stopped at train.max_iters={cfg.train.max_iters}; run again with the same --out to resume"
            )
            break
    log.plot_curves(primary_metric(cfg.task))
    log.close()
    return {"state": state, "best": dict(state.best)}


def _progress(total: int, start: int, epoch: int, epochs: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True, leave=False
    )


def _fmt(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in logs.items())


def _evaluate_all(cfg, model, ema, loader, device) -> dict[str, dict]:
    """Scores of the student and/or EMA; runs on a forked RNG so evaluating never changes the training draws."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _evaluate_models(cfg, model, ema, loader, device)


def _evaluate_models(cfg, model, ema, loader, device) -> dict[str, dict]:
    task = "segmentation" if cfg.task == "segmentation" else "change"
    wanted = {"student": model, "ema": ema.model if ema else None}
    if cfg.eval.model != "both":
        wanted = {k: v for k, v in wanted.items() if k == cfg.eval.model}
    scores = {}
    for name, net in wanted.items():
        if net is None:
            continue
        scores[name] = evaluate(
            net,
            loader,
            cfg.data.nclass,
            task=task,
            mode=cfg.eval.mode,
            window=cfg.eval.window,
            stride=cfg.eval.stride,
            flip_tta=cfg.eval.flip_tta,
            device=device,
            autocast_dtype=torch.bfloat16 if cfg.train.amp == "bf16" else None,
            progress=False,
        )
    return scores


def _record(cfg: Config, log: RunLog, state: TrainState, scores: dict[str, dict], epoch: float) -> bool:
    """Log one evaluation (log.txt, metrics.csv, TensorBoard) and update the best; True if this is a new best.

    `epoch` is fractional after a mid-epoch stop (train.max_iters)."""
    key = primary_metric(cfg.task)
    epoch = int(epoch) if float(epoch).is_integer() else round(epoch, 3)
    row: dict[str, Any] = {"epoch": epoch, "iteration": state.iteration}
    for source, s in scores.items():
        for k, v in s.items():
            if isinstance(v, (int, float)):
                row[f"{source}_{k}"] = round(float(v), 4)
        log.scalars(
            f"eval_{source}", {k: v for k, v in s.items() if isinstance(v, (int, float))}, state.iteration
        )
        if "iou_per_class" in s:
            log.info(f"  {source} IoU per class: " + ", ".join(f"{v:.1f}" for v in s["iou_per_class"]))
    log.metrics_row(row)
    value, source = max((s[key], name) for name, s in scores.items())
    is_best = value >= state.best.get("value", -math.inf)
    if is_best:
        state.best = {"value": value, "source": source, "epoch": epoch}
    log.info(
        f"eval epoch {epoch}: "
        + ", ".join(f"{name} {key}={s[key]:.2f}" for name, s in scores.items())
        + f" | best {state.best['value']:.2f} ({state.best['source']}, epoch {state.best['epoch']})"
    )
    for name, s in scores.items():
        state.best[f"last_{name}"] = s[key]
    return is_best


def _gather_rng(info: DistInfo) -> list[dict]:
    """Every rank's RNG state (each rank draws its own augmentations), for an exact resume."""
    if not info.enabled:
        return [rng_state()]
    gathered: list = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, rng_state())
    return gathered


def _checkpoint(cfg, model, ema, optimizer, scaler, state: TrainState, classes, mean, std, rng) -> dict:
    import dataclasses

    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "state": dataclasses.asdict(state),
        "rng": rng,
        "config": cfg.to_dict(),
        "meta": {
            "task": cfg.task,
            "encoder": cfg.model.encoder,
            "nclass": cfg.data.nclass,
            "classes": list(classes),
            "mean": list(mean),
            "std": list(std),
            "best_source": state.best.get("source"),
        },
    }
