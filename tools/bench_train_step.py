"""Time one full training iteration (and optionally the change-detection data loader) as the trainer runs it.

What is timed is `semiseg.train.step.TrainStep`, the very object the trainer calls, built the way the trainer
builds it (`TrainStep.from_config`): LR update, the method's step (teacher pass, strong views, student forward of
labeled + strong batches, losses) under autocast, the non-finite check, zero_grad, backward, clipping when set,
optimiser step, EMA update, and reading the loss back as a log line does. The timed iterations are taken from the
middle of a 1000-iteration schedule (PrevMatch's λ is at its peak there). Batches are synthetic uint8 tensors
already on the device, so data loading is excluded; `--loader` measures it separately on a
synthetic 256 px A/B/label tile tree read by `ChangeTileDataset`, and `--loop` times the whole training
iteration as the trainer drives it (`TrainLoaders.steps` feeding `TrainStep.accumulated`) on such a tree, beside
the bare step on one pre-loaded batch, the time spent waiting for the loader, and what one sample costs to read
and to crop.

`--official-repo PATH` times the official UniMatch V2 step on the same machine and sizes, importing the
official `model.semseg.dpt.DPT` from a local checkout (never copied here) and running the official sequence:
pseudo-labels under no_grad (the online student for change detection, as the official remote-sensing script
does; the EMA model for segmentation), CutMix by index assignment, `model(x)`, `model(cat(s1, s2),
comp_drop=True)`, CE losses, backward, AdamW step, LR update, EMA loop over parameters and buffers. The
official photometric strong augmentation runs in its DataLoader workers, so its strong views arrive ready-made
here; ours are made on the device inside the step (that work is included in our figure, not in theirs).

Each measurement runs in a fresh subprocess so its peak memory is its own; output is JSON Lines.

    python tools/bench_train_step.py --method unimatch_v2 --task change_detection --encoder small \
        --crop 252 --batch 2 --device cpu --loader --official-repo /tmp/official
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import (  # noqa: E402  (tools/ is not a package: import the sibling script)
    PeakMemory,
    environment,
    median_seconds,
    resolve_device,
    run_workers,
    sync,
)

from semiseg.models.specs import ENCODER_SPECS, encoder_spec  # noqa: E402
from semiseg.registry import METHODS  # noqa: E402
from semiseg.task import get_task, tasks  # noqa: E402

# The official DPT constructor takes the head widths: ours are the same, per released encoder size.
OFFICIAL_SIZES = {
    name: (spec.head.features, list(spec.head.out_channels))
    for name, spec in ENCODER_SPECS.items()
    if spec.hub_name and spec.family == "dinov2"  # the official code builds DINOv2 only
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Seconds per training iteration (median after warm-up) and peak memory, as the trainer "
        "runs it; optionally data-loader time and the official UniMatch V2 step. JSON Lines output."
    )
    p.add_argument("--method", choices=list(METHODS), default="unimatch_v2")
    p.add_argument("--extras", nargs="*", default=[], help="method.extras (e.g. prevmatch maskmatch)")
    p.add_argument("--teacher", choices=["ema", "student"], default="ema", help="method.teacher")
    p.add_argument(
        "--prevmatch-snapshots", type=int, default=3, help="snapshots put in PrevMatch's store before timing"
    )
    p.add_argument("--encoder", default="small")
    p.add_argument("--crop", type=int, default=252)
    p.add_argument("--batch", type=int, default=2, help="per-stream batch (supervised uses 2x, as trained)")
    p.add_argument("--task", choices=sorted(tasks()), default="change_detection")
    p.add_argument("--nclass", type=int, default=None, help="default: the task's, else 21")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument(
        "--compile", choices=["off", "default", "max-autotune"], default="off",
        help="train.compile for our step (the compile time is reported apart as first_step_s)",
    )  # fmt: skip
    p.add_argument(
        "--fused", choices=["auto", "true", "false"], default="auto",
        help="optim.fused for our step (auto: fused on CUDA)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-step", action="store_true", help="skip our training-step measurement")
    p.add_argument("--loader", action="store_true", help="also time the change-detection tile loader")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for --loader and --loop")
    p.add_argument("--loader-batches", type=int, default=8, help="batches timed after the warm-up ones")
    p.add_argument(
        "--loop", action="store_true",
        help="also time the training iteration end to end, from the trainer's loaders, against the bare step",
    )  # fmt: skip
    p.add_argument("--loop-iters", type=int, default=10, help="optimiser steps timed by --loop after warm-up")
    p.add_argument("--official-repo", default=None, help="local checkout of LiheYoung/UniMatch-V2")
    p.add_argument(
        "--peak-tflops", type=float, default=None,
        help="the device's peak TFLOP/s at --amp, for the MFU (default: looked up for known GPUs, else no MFU)",
    )  # fmt: skip
    p.add_argument(
        "--worker", choices=["ours", "official", "loader", "loop"], default=None, help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    patch = encoder_spec(args.encoder).patch_size
    if args.crop % patch:
        p.error(f"--crop {args.crop} is not a multiple of {patch} (the encoder's patch size)")
    if args.nclass is None:
        args.nclass = get_task(args.task).nclass or 21
    if args.official_repo is not None:
        if args.method != "unimatch_v2" or args.extras:
            p.error(
                "--official-repo times the official UniMatch V2 step: use --method unimatch_v2, no extras"
            )
        if args.task not in OFFICIAL_SCRIPTS:
            p.error(f"--official-repo has scripts for {', '.join(OFFICIAL_SCRIPTS)}, not {args.task}")
        if args.encoder not in OFFICIAL_SIZES:
            p.error(f"--official-repo supports encoders {', '.join(OFFICIAL_SIZES)}, not {args.encoder}")
    return args


def _header(args: argparse.Namespace, bench: str, device: torch.device) -> dict[str, Any]:
    return {
        "bench": bench,
        "method": args.method,
        "extras": list(args.extras),
        "encoder": args.encoder,
        "task": args.task,
        "crop": args.crop,
        "batch": args.batch,
        "amp": args.amp,
        **environment(device),
        "warmup": args.warmup,
        "iters": args.iters,
    }


def _synthetic_batch(n_images: int, batch: int, crop: int, nclass: int, device: torch.device, labeled: bool):
    from semiseg.methods.base import Batch

    images = tuple(
        torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, device=device)
        for _ in range(n_images)
    )
    label = (
        torch.randint(0, nclass, (batch, crop, crop), device=device)
        if labeled
        else torch.full((batch, crop, crop), 255, dtype=torch.long, device=device)
    )
    return Batch(
        images=images, label=label, ignore=torch.zeros(batch, crop, crop, dtype=torch.uint8, device=device)
    )


# ---------------------------------------------------------------------------------------------------------
# FLOPs and model FLOPs utilisation

# Dense peak TFLOP/s per device and precision, from the vendors' data sheets (no sparsity). fp32 means plain FP32
# (torch's default matmul precision "highest" does not use TF32). Others: pass --peak-tflops.
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.4, ("H100", "none"): 66.9, ("H200", "bf16"): 989.4, ("H200", "none"): 66.9,
    ("A100", "bf16"): 312.0, ("A100", "none"): 19.5, ("L40S", "bf16"): 362.1, ("L40S", "none"): 91.6,
}  # fmt: skip


def peak_tflops(device: torch.device, amp: str, given: float | None) -> float | None:
    """The peak to divide by: the user's, else the table's entry for this GPU and precision, else unknown."""
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for (gpu, prec), v in PEAK_TFLOPS.items() if gpu in name and prec == amp), None)


def utilisation(step, step_s: float, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs of one more step, counted by `torch.utils.flop_counter` (matmuls, convolutions and attention, forward
    and backward: what the model computes, not what the hardware executes), the rate at the measured step time, and
    the model FLOPs utilisation against the device's peak when it is known."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    peak = peak_tflops(device, args.amp, args.peak_tflops)
    rate = flops / step_s / 1e12
    return {
        "flops_per_step": flops,
        "tflops_per_s": round(rate, 4),
        "peak_tflops": peak,
        "mfu": round(rate / peak, 4) if peak else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Our step


def bench_ours(args: argparse.Namespace) -> dict[str, Any]:
    """`TrainStep` on synthetic batches, built by `TrainStep.from_config` exactly as the trainer builds it."""
    from semiseg.config import load_config
    from semiseg.train.step import TrainStep

    device = resolve_device(args.device)
    cfg = load_config(
        None,
        [
            f"task={args.task}",
            f"data.nclass={args.nclass}",
            f"data.crop_size={args.crop}",
            f"data.batch_size={args.batch}",
            f"model.encoder={args.encoder}",
            "model.weights=null",
            f"method.name={args.method}",
            f"method.extras=[{','.join(args.extras)}]",
            f"method.teacher={args.teacher}",
            f"train.amp={args.amp}",
            f"train.compile={args.compile}",
            f"optim.fused={'null' if args.fused == 'auto' else args.fused}",
        ],
    )
    torch.manual_seed(0)
    total_iters = 1000
    step = TrainStep.from_config(cfg, device, total_iters)
    for extra in step.method.extras:
        if hasattr(extra, "add_snapshot"):  # PrevMatch: a populated store, as after a few epochs
            for epoch in range(args.prevmatch_snapshots):
                extra.add_snapshot(step.model, epoch)
    n_images = get_task(cfg.task).num_images
    needs_unlabeled = METHODS[args.method].needs_unlabeled
    labeled = _synthetic_batch(n_images, args.batch if needs_unlabeled else args.batch * 2, args.crop,
                               args.nclass, device, labeled=True)  # fmt: skip
    unlabeled = _synthetic_batch(n_images, args.batch, args.crop, args.nclass, device, labeled=False)
    unlabeled = unlabeled if needs_unlabeled else None
    iteration = iter(range(total_iters // 2, total_iters))  # mid-run: PrevMatch's lambda is at its peak
    step.model.train()

    def one_step() -> None:
        float(step(labeled, unlabeled, next(iteration))["loss"])  # read back, as a log point does

    out = _header(args, "train_step", device)
    out.update(impl="ours", teacher=args.teacher, uses_ema=step.ema is not None, compile=args.compile)
    # where the non-finite check reads the loss: "device" (fused: at log points) or "host" (every step). The
    # benchmark itself reads the loss after every step, as a log point would, so both are timed alike.
    out.update(
        fused=bool(step.optimizer.defaults.get("fused")),
        nonfinite_check="device" if step.deferred_check else "host",
    )
    memory = PeakMemory(device)
    if device.type != "cuda":
        out["baseline_rss_mb"] = round(memory.baseline_mb, 1)
    with memory.measure(out, "step"):
        # the compilation happens in the first step (and in the first at each new shape)
        if args.compile != "off":
            out["compile_note"] = step.compile_note
            started = time.perf_counter()
            one_step()
            out["first_step_s"] = round(time.perf_counter() - started, 2)
        out["step_s"] = round(median_seconds(one_step, device, args.warmup, args.iters), 4)
    with torch.compiler.set_stance("force_eager"):  # count the model's FLOPs on the same maths, uncompiled
        out.update(utilisation(one_step, out["step_s"], device, args))
    return out


# ---------------------------------------------------------------------------------------------------------
# The official step (imported from a local checkout, never vendored)


@contextlib.contextmanager
def _cuda_calls_are_identity(enabled: bool):
    """The official complementary dropout calls `.cuda()`; on CPU make it a no-op for this block only."""
    if not enabled:
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


# The official repository's script per task: its folder, and who makes the pseudo-labels there.
OFFICIAL_SCRIPTS = {"segmentation": ("", "ema"), "change_detection": ("remote-sensing", "student")}


def _import_official_dpt(repo: Path, task: str):
    root = repo / OFFICIAL_SCRIPTS[task][0]
    if not (root / "model" / "semseg" / "dpt.py").is_file():
        raise SystemExit(
            f"--official-repo {repo}: {root / 'model/semseg/dpt.py'} not found; point it at a checkout of "
            "LiheYoung/UniMatch-V2"
        )
    sys.path.insert(0, str(root))
    from model.semseg.dpt import DPT  # type: ignore[import-not-found]

    return DPT


def bench_official(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    DPT = _import_official_dpt(Path(args.official_repo).expanduser().resolve(), args.task)
    features, out_channels = OFFICIAL_SIZES[args.encoder]
    torch.manual_seed(0)
    model = DPT(
        encoder_size=args.encoder, nclass=args.nclass, features=features, out_channels=out_channels
    ).to(device)
    model_ema = copy.deepcopy(model).eval()
    for p in model_ema.parameters():
        p.requires_grad = False
    lr, lr_multi, tau = 5e-6, 40.0, 0.95
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": [p for n, p in model.named_parameters() if "backbone" not in n], "lr": lr * lr_multi},
        ],
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=0.01,
    )
    official_teacher = OFFICIAL_SCRIPTS[args.task][1]
    b, c = args.batch, args.crop
    dates = get_task(args.task).num_images

    def images() -> list[torch.Tensor]:  # normalised float, as the official loader hands them over
        return [torch.randn(b, 3, c, c, device=device) for _ in range(dates)]

    x, u_w, s1_src, s2_src = images(), images(), images(), images()
    mask_x = torch.randint(0, args.nclass, (b, c, c), device=device)
    ignore = torch.zeros(b, c, c, dtype=torch.long, device=device)
    box1 = torch.zeros(b, c, c, dtype=torch.long, device=device)
    box1[:, c // 4 : c // 2, c // 4 : c // 2] = 1
    box2 = box1.flip(-1).clone()
    state = {"iteration": 0}

    def mix(t: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        where = box.unsqueeze(1).expand(t.shape) == 1 if t.dim() == 4 else box == 1
        t[where] = t.flip(0)[where]
        return t

    def unlabeled_ce(pred, plabel, conf, ign):
        loss = F.cross_entropy(pred, plabel, ignore_index=255, reduction="none")
        loss = loss * ((conf >= tau) & (ign != 255))
        return loss.sum() / (ign != 255).sum().item()

    def iteration() -> None:
        with torch.no_grad():
            teacher = model if official_teacher == "student" else model_ema
            pred_u_w = teacher(*u_w).detach()
            conf_u_w, mask_u_w = pred_u_w.softmax(dim=1).max(dim=1)
        s1 = [mix(t, box1) for t in s1_src]
        s2 = [mix(t, box2) for t in s2_src]
        model.train()
        pred_x = model(*x)
        pred_s1, pred_s2 = model(*[torch.cat((a, z)) for a, z in zip(s1, s2)], comp_drop=True).chunk(2)
        t1 = [mix(t, box1) for t in (mask_u_w, conf_u_w, ignore)]
        t2 = [mix(t, box2) for t in (mask_u_w, conf_u_w, ignore)]
        loss_x = F.cross_entropy(pred_x, mask_x, ignore_index=255)
        loss_u = (unlabeled_ce(pred_s1, *t1) + unlabeled_ce(pred_s2, *t2)) / 2.0
        loss = (loss_x + loss_u) / 2.0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        it = state["iteration"]
        new_lr = lr * (1 - it / 1000) ** 0.9
        optimizer.param_groups[0]["lr"] = new_lr
        optimizer.param_groups[1]["lr"] = new_lr * lr_multi
        ratio = min(1 - 1 / (it + 1), 0.996)
        with torch.no_grad():
            for p, p_ema in zip(model.parameters(), model_ema.parameters()):
                p_ema.copy_(p_ema * ratio + p.detach() * (1 - ratio))
            for buf, buf_ema in zip(model.buffers(), model_ema.buffers()):
                buf_ema.copy_(buf_ema * ratio + buf.detach() * (1 - ratio))
        state["iteration"] += 1

    out = _header(args, "train_step", device)
    out.update(impl="official", official_repo=str(args.official_repo), teacher=official_teacher)
    memory = PeakMemory(device)
    if device.type != "cuda":
        out["baseline_rss_mb"] = round(memory.baseline_mb, 1)
    with _cuda_calls_are_identity(device.type != "cuda"), memory.measure(out, "step"):
        out["step_s"] = round(median_seconds(iteration, device, args.warmup, args.iters), 4)
    with _cuda_calls_are_identity(device.type != "cuda"):
        out.update(utilisation(iteration, out["step_s"], device, args))
    return out


# ---------------------------------------------------------------------------------------------------------
# The change-detection tile loader


def write_tile_tree(root: Path, n: int, size: int = 256, seed: int = 0) -> list[str]:
    """`n` synthetic A/B/label PNG tiles (random texture, blob-shaped change) under `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    names = []
    for i in range(n):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, size / 4)]
        change = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        b = a.copy()
        b[change] = 255 - b[change]
        name = f"tile_{i:04d}.png"
        Image.fromarray(a).save(root / "A" / name)
        Image.fromarray(b).save(root / "B" / name)
        Image.fromarray(change.astype(np.uint8) * 255).save(root / "label" / name)
        names.append(name)
    return names


def bench_loader(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per batch of the labeled change-tile loader (crop 252), after the first `workers` batches.

    The first batches are skipped because all workers start together: they arrive almost at once and would
    make the loader look faster than its steady state.
    """
    from torch.utils.data import DataLoader

    from semicd.data.tiles import ChangeTileDataset, cd_geometry

    device = resolve_device(args.device)
    skip = max(1, args.workers)
    n_batches = skip + args.loader_batches
    with tempfile.TemporaryDirectory(prefix="semicd-loader-bench-") as tmp:
        names = write_tile_tree(Path(tmp), n_batches * args.batch)
        ds = ChangeTileDataset(tmp, names, "train_l", cd_geometry(252), seed=0)
        t0 = time.perf_counter()
        single = [ds[i] for i in range(min(8, len(ds)))]
        per_sample = (time.perf_counter() - t0) / len(single)
        loader = DataLoader(
            ds,
            batch_size=args.batch,
            shuffle=False,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        stamps = []
        for sample in loader:
            sample["images"][0].to(device, non_blocking=True)
            stamps.append(time.perf_counter())
    timed = stamps[skip - 1 :]
    out = {
        "bench": "loader",
        "dataset": "ChangeTileDataset(train_l)",
        "tile": 256,
        "crop": 252,
        "batch": args.batch,
        "workers": args.workers,
        **environment(device),
        "batches_timed": len(timed) - 1,
        "seconds_per_batch": round((timed[-1] - timed[0]) / max(len(timed) - 1, 1), 4),
        "seconds_per_sample_main_process": round(per_sample, 4),
    }
    return out


# ---------------------------------------------------------------------------------------------------------
# The training loop: loaders and step together


def write_change_split(root: Path, n_labeled: int, n_unlabeled: int, n_eval: int = 2) -> Path:
    """A LEVIR-style tree under `root` (`write_tile_tree`) with its split lists; returns the split folder."""
    names = write_tile_tree(root, n_labeled + n_unlabeled + n_eval)
    split = root / "split"
    split.mkdir()
    parts = {"labeled": names[:n_labeled], "unlabeled": names[n_labeled : n_labeled + n_unlabeled]}
    for part, listed in parts.items():
        (split / f"{part}.txt").write_text("\n".join(listed) + "\n")
    (root / "test.txt").write_text("\n".join(names[-n_eval:]) + "\n")
    return split


def sample_costs(ds: Any, n: int) -> dict[str, float]:
    """Median seconds per training sample in this process: reading and decoding (`read`), the random geometry
    (rescale, pad, crop, flips), and the whole `__getitem__` (the rest is the copy into tensors). What a worker
    spends, so `sample_s x batch / workers` is roughly the loader's time per batch."""
    from semiseg.data.geometry import random_geometry

    read, geometry, total = [], [], []
    for i in range(min(n, len(ds))):
        t0 = time.perf_counter()
        images, label, valid = ds.read(i)
        t1 = time.perf_counter()
        extra = [] if valid is None else [valid.astype(np.uint8) * 255]  # as CropDataset does
        random_geometry(images + extra, label, ds.geometry, ds.rng(i, 0))
        t2 = time.perf_counter()
        ds[(0, i)]
        t3 = time.perf_counter()
        read.append(t1 - t0)
        geometry.append(t2 - t1)
        total.append(t3 - t2)
    return {
        "sample_read_s": round(statistics.median(read), 5),
        "sample_geometry_s": round(statistics.median(geometry), 5),
        "sample_s": round(statistics.median(total), 5),
    }


def bench_loop(args: argparse.Namespace) -> dict[str, Any]:
    """The training iteration end to end: `TrainLoaders.steps` (persistent workers, pinned memory, one batch ahead
    on the device) feeding `TrainStep.accumulated`, as `semiseg.train.loop` drives them, on synthetic 256 px change
    tiles; beside it the same step on one pre-loaded batch, and the time blocked waiting for the next batch.

    The first `warmup + 2 x workers` iterations are not timed: the workers start then, and the batches they load
    ahead while the first steps run would make the loader look faster than its steady state.
    """
    from torch.utils.data import default_collate

    from semiseg.config import load_config
    from semiseg.data.build import build
    from semiseg.methods.base import Batch
    from semiseg.train.distributed import DistInfo
    from semiseg.train.loop import TrainLoaders
    from semiseg.train.state import seed_all
    from semiseg.train.step import TrainStep

    device = resolve_device(args.device)
    warmup = args.warmup + 2 * args.workers
    n_steps = warmup + args.loop_iters
    needs_unlabeled = METHODS[args.method].needs_unlabeled
    with tempfile.TemporaryDirectory(prefix="semicd-loop-bench-") as tmp:
        n_tiles = max(args.batch * 8, 4)  # epochs of 8 steps: the timed steps cross epoch boundaries
        split = write_change_split(Path(tmp), n_labeled=max(args.batch, 2), n_unlabeled=n_tiles)
        cfg = load_config(
            None,
            [
                "task=change_detection", "data.dataset=levir_cd", f"data.root={tmp}", f"data.split={split}",
                f"data.crop_size={args.crop}", f"data.batch_size={args.batch}", f"data.workers={args.workers}",
                f"data.nsample={n_tiles * 2}", f"model.encoder={args.encoder}", "model.weights=null",
                f"method.name={args.method}", f"method.extras=[{','.join(args.extras)}]",
                f"method.teacher={args.teacher}", f"train.amp={args.amp}", f"train.compile={args.compile}",
                f"optim.fused={'null' if args.fused == 'auto' else args.fused}",
            ],
        )  # fmt: skip
        seed_all(cfg.train.seed * 1000)  # the trainer's order: seed, data, loaders, step
        data = build(cfg, "fit")
        loaders = TrainLoaders(data, cfg, DistInfo(), device)
        total_iters = 1000
        step = TrainStep.from_config(cfg, device, total_iters)
        step.model.train()
        iteration = iter(range(total_iters // 2, total_iters))  # mid-run, as the bare step benchmark

        def one_batch(ds: Any, b: int) -> Batch:
            return Batch.from_loader(default_collate([ds[(0, i)] for i in range(b)]), device)

        labeled = one_batch(data.labeled, loaders.batch_l)
        unlabeled = one_batch(data.unlabeled, loaders.batch_u) if needs_unlabeled else None
        pre_loaded = [(labeled, unlabeled)] * loaders.accumulate

        def bare() -> None:
            float(step.accumulated(pre_loaded, next(iteration))["loss"])  # read back, as a log point does

        bare_s = median_seconds(bare, device, args.warmup, args.iters)

        def steps(loaders: TrainLoaders) -> Iterator[list]:  # epoch after epoch, as the trainer's loop
            for epoch in range(n_steps):
                yield from loaders.steps(epoch, 0)

        waits, iters = [], []
        stream = steps(loaders)
        for _ in range(n_steps):
            t0 = time.perf_counter()
            micro_batches = next(stream)
            t1 = time.perf_counter()
            float(step.accumulated(micro_batches, next(iteration))["loss"])
            sync(device)
            waits.append(t1 - t0)
            iters.append(time.perf_counter() - t0)
        stream.close()
        costs = sample_costs(data.labeled, 16)
        accumulate = loaders.accumulate
        del loaders, stream  # the persistent workers end here, before the folder they read goes
    loop_s, wait_s = statistics.median(iters[warmup:]), statistics.median(waits[warmup:])
    out = _header(args, "train_loop", device)
    out.update(
        dataset="ChangeTileDataset", tile=256, workers=args.workers, accumulate=accumulate,
        loop_iters=args.loop_iters, loop_warmup=warmup, loop_iter_s=round(loop_s, 4), bare_step_s=round(bare_s, 4),
        loop_over_step=round(loop_s / bare_s, 3), loader_wait_s=round(wait_s, 6),
        loader_wait_share=round(wait_s / loop_s, 3), **costs,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        run = {"ours": bench_ours, "official": bench_official, "loader": bench_loader, "loop": bench_loop}
        run = run[args.worker]
        print(json.dumps(run(args)), flush=True)
        return
    passthrough = list(argv if argv is not None else sys.argv[1:])
    wanted = ([] if args.no_step else ["ours"]) + (["official"] if args.official_repo else [])
    wanted += (["loader"] if args.loader else []) + (["loop"] if args.loop else [])
    if not wanted:
        raise SystemExit("nothing to measure: drop --no-step, or add --loader / --loop / --official-repo")
    for result in run_workers(Path(__file__).resolve(), [[w] for w in wanted], passthrough):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
