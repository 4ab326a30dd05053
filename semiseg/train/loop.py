"""The training loop shared by every method and every task.

Read `_fit` top to bottom: build everything (or resume), then for each epoch: steps (`TrainStep`), evaluation,
epoch hooks, checkpoints. Methods only compute a loss; datasets only return samples; `TrainStep` owns the update;
this file owns the schedule. Values are read back from the accelerator only at log points.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from semiseg.config import Config
from semiseg.data.build import DataBundle, build
from semiseg.errors import SemisegError
from semiseg.inference import evaluate
from semiseg.methods.base import Batch
from semiseg.models.specs import EncoderSpec
from semiseg.task import Task, get_task
from semiseg.train.distributed import DistInfo, cleanup, init_distributed
from semiseg.train.pictures import EvalPictures
from semiseg.train.run_folder import RunFolder
from semiseg.train.run_log import RunLog
from semiseg.train.sampler import EpochSampler, ShardSampler
from semiseg.train.signals import RunInterrupted, StopRequest
from semiseg.train.state import (
    SAMPLE_KEYING,
    TrainState,
    check_resume,
    checkpoint_payload,
    gather_rng,
    load_checkpoint,
    restore,
    save_atomic,
    seed_all,
)
from semiseg.train.step import NonFiniteLossError, TrainStep, format_logs


def train(cfg: Config, out: str | Path, progress: bool | None = None, force: bool = False) -> dict[str, Any]:
    """Train (or resume, when `out/latest.pt` exists) and return the final state and best metrics.

    `force`: resume even when the method or the schedule's length changed (`semiseg.train.state.check_resume`).
    SIGTERM or Ctrl-C stop after the current step with the state saved (`RunInterrupted`); run again to resume.
    Under DDP the processes agree on a stop at log points (`train.log_every`) and at the end of each epoch.
    """
    info, device = init_distributed(cfg.train.device)
    folder = RunFolder(Path(out), info.is_main)
    try:
        with StopRequest() as stop:
            return _fit(cfg, folder, info, device, progress, force, stop)
    finally:
        folder.close()
        cleanup(info)


def micro_batches_per_step(cfg: Config, world_size: int) -> int:
    """How many micro-batches make one optimiser step: `train.accumulate`, or what `train.global_batch` needs on
    `world_size` processes of `data.batch_size` each."""
    t, b = cfg.train, cfg.data.batch_size
    if t.global_batch is None:
        return t.accumulate
    per_micro_step = b * world_size
    if t.global_batch % per_micro_step:
        raise SemisegError(
            f"train.global_batch={t.global_batch} is not a multiple of data.batch_size x processes = {b} x "
            f"{world_size}: choose a batch size (or process count) that divides it"
        )
    return t.global_batch // per_micro_step


class TrainLoaders:
    """The labeled and unlabeled streams: one deterministic, resumable sampler and one DataLoader each, per run.

    The labeled list is repeated to the unlabeled length by the dataset (official rule), so one epoch is one
    pass over the unlabeled set; supervised runs take twice the batch from the labeled set alone.

    Each stream's DataLoader is built once and its workers persist across epochs: the epoch reaches them inside
    every sampler key `(epoch, index)`, not through `set_epoch` on a dataset copy they would never see. A
    worker's crops come from the per-sample numpy Generators of `semiseg.data.sample`, so which worker (and
    which worker seed) loads a sample never changes what it is.
    """

    def __init__(self, data: DataBundle, cfg: Config, info: DistInfo, device: torch.device) -> None:
        self.data, self.cfg, self.device = data, cfg, device
        bs = cfg.data.batch_size
        self.accumulate = micro_batches_per_step(cfg, info.world_size)
        self.batch_u = bs
        self.batch_l = bs if data.unlabeled is not None else bs * 2
        self.sampler_l = EpochSampler(len(data.labeled), cfg.train.seed, info.rank, info.world_size)
        self.sampler_u = None
        if data.unlabeled is not None:
            self.sampler_u = EpochSampler(len(data.unlabeled), cfg.train.seed + 1, info.rank, info.world_size)
        self.batches_per_epoch = (
            len(self.sampler_u) // bs if self.sampler_u else len(self.sampler_l) // self.batch_l
        )
        self.iters_per_epoch = self.batches_per_epoch // self.accumulate  # optimiser steps
        if self.iters_per_epoch < 1:
            raise SemisegError(
                f"fewer training samples per process than one optimiser step ({self.accumulate} x "
                f"{self.batch_l}): lower data.batch_size or train.accumulate/global_batch, or add data"
            )
        self.streams = [(self.sampler_l, self.data.labeled, self.batch_l)]
        if self.sampler_u is not None:
            self.streams.append((self.sampler_u, self.data.unlabeled, self.batch_u))
        workers = cfg.data.workers
        self.loaders = [
            self._loader(ds, b, sampler, workers, True, stream, persistent=workers > 0)
            for stream, (sampler, ds, b) in enumerate(self.streams)
        ]
        # Host-to-device copies of the next batch run on their own CUDA stream, beside the current step.
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _loader(
        self, ds: Any, batch_size: int, sampler: Any, workers: int, drop_last: bool, key: int,
        persistent: bool = False,
    ) -> DataLoader:  # fmt: skip
        # A loader draws a seed for its workers when it is iterated (a persistent one: once, when its workers
        # start). From its own generator, keyed on the run's seed and the stream, that draw leaves the global
        # generator the training step draws from alone, so a run resumed mid-epoch (whose loaders start at another
        # moment) draws what the uninterrupted run drew. The worker seed itself decides no sample: it seeds only
        # torch, numpy's and Python's global generators inside the workers, which the datasets never draw from (a
        # sample's geometry comes from a numpy Generator keyed on (seed, stream, index, epoch)). That is why one
        # loader per run, whose worker seed no longer follows the epoch as the per-epoch loaders' did (keyed on
        # 2 x epoch + stream), draws exactly the same batches.
        return DataLoader(
            ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=persistent,
            # Each worker keeps two batches ready (torch's default, said here on purpose): enough to hide one slow
            # read behind the others without holding many batches of shared memory per worker.
            prefetch_factor=2 if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + key),
        )  # fmt: skip

    def _fetch(self, iterators: list[Iterator[dict]]) -> list[Batch]:
        """The next batch of every stream, its copy to the device started (on the copy stream on CUDA)."""
        samples = [next(it) for it in iterators]
        if self.copy_stream is None:
            return [Batch.from_loader(s, self.device) for s in samples]
        with torch.cuda.stream(self.copy_stream):
            return [Batch.from_loader(s, self.device) for s in samples]

    def _ready(self, batches: list[Batch]) -> list[Batch]:
        """Make the step's stream wait for the copies of `batches`, and tell the allocator it uses their memory."""
        if self.copy_stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.copy_stream)
            for batch in batches:
                for t in (*batch.images, batch.label, batch.ignore):
                    t.record_stream(current)
        return batches

    def epoch(self, epoch: int, start: int, end: int | None = None) -> Iterator[tuple[Batch, Batch | None]]:
        """Batches `start`, `start + 1`, ..., `end - 1` (default: to the epoch's last) of epoch `epoch`; earlier
        ones are skipped without being loaded, later ones are not loaded.

        The next batch is fetched and sent to the device before the current one is handed out: with pinned memory
        and non-blocking copies on their own CUDA stream, its copy runs while the current step computes, and the
        step then finds it on the device instead of waiting for it. On CPU the same code only reorders the work.
        It changes no draw: which samples come is decided by the samplers, what they are by their keys, and
        neither fetching nor copying draws from any generator. A consumer that stops early (train.max_iters, a
        signal) leaves this one batch fetched in vain, beside what the workers had read ahead (two batches each).
        """
        end = self.batches_per_epoch if end is None else end
        iterators = []
        for (sampler, _, b), loader in zip(self.streams, self.loaders, strict=True):
            # Before iter(): that is when a loader, persistent or not, takes the sampler's order.
            sampler.set_epoch(epoch, start * b)
            iterators.append(iter(loader))
        upcoming = self._fetch(iterators) if start < end else []
        for i in range(start, end):
            batches = self._ready(upcoming)
            upcoming = self._fetch(iterators) if i + 1 < end else []
            yield batches[0], (batches[1] if len(batches) > 1 else None)

    def steps(self, epoch: int, start: int) -> Iterator[list[tuple[Batch, Batch | None]]]:
        """The micro-batches of optimiser steps `start`, `start + 1`, ... of epoch `epoch`, `accumulate` per step
        (a last incomplete group is dropped, as a last incomplete batch is)."""
        batches = self.epoch(epoch, start * self.accumulate, self.iters_per_epoch * self.accumulate)
        for _ in range(start, self.iters_per_epoch):
            yield [next(batches) for _ in range(self.accumulate)]

    def val_loader(self, info: DistInfo) -> DataLoader:
        sampler = ShardSampler(len(self.data.val), info.rank, info.world_size)
        return self._loader(self.data.val, 1, sampler, min(self.cfg.data.workers, 2), False, -1)


def weights_notice(weights: str | None, spec: EncoderSpec) -> str | None:
    """The licence of the pretrained weights a run starts from, said once at the start (DINOv3's licence has
    terms on redistribution that a user must know before publishing a model)."""
    if not weights or not spec.weights_license:
        return None
    return f"pretrained weights {weights}: licence {spec.weights_license}"


def _fit(
    cfg: Config,
    folder: RunFolder,
    info: DistInfo,
    device: torch.device,
    progress: bool | None,
    force: bool,
    stop: StopRequest,
) -> dict:
    task, out = get_task(cfg.task), folder.out
    folder.check_free()  # another live run owns the folder: refuse before doing anything
    latest = out / "latest.pt"
    ckpt = load_checkpoint(latest) if latest.exists() else None
    seed_all(cfg.train.seed * 1000 + info.rank)
    data = build(cfg, "fit")  # bad data fails here
    loaders = TrainLoaders(data, cfg, info, device)
    total_iters = loaders.iters_per_epoch * cfg.train.epochs
    changes = check_resume(ckpt, cfg, latest, total_iters, force) if ckpt is not None else []
    step = TrainStep.from_config(
        cfg, device, total_iters, info, pretrained=ckpt is None
    )  # and bad weights here
    state = restore(ckpt, step, info) if ckpt is not None else TrainState(total_iters=total_iters)
    log = folder.open(cfg, changes, state.iteration if ckpt is not None else None)  # the first write to `out`
    if ckpt is not None:
        log.info(f"resumed from {latest} at epoch {state.epoch}, iteration {state.iteration}")
        if ckpt.get("sample_keying") != SAMPLE_KEYING:
            log.info(
                "note: this run began before training crops were keyed per stream; it resumes with the new keying"
            )
    log.info(
        f"{task.name} | {cfg.method.name}{''.join('+' + e for e in cfg.method.extras)} | "
        f"encoder {cfg.model.encoder} | {sum(p.numel() for p in step.model.parameters()) / 1e6:.1f}M params | "
        f"{loaders.iters_per_epoch} iters/epoch x {cfg.train.epochs} epochs | {info.world_size} process(es) on {device}"
        + (f" | {loaders.accumulate} micro-batches per step" if loaders.accumulate > 1 else "")
    )
    spec = step.model.spec
    log.info(
        f"input: {spec.bands} band(s){f' (raster bands {cfg.data.bands})' if cfg.data.bands else ''}, patch "
        f"{spec.patch_size}, mean {[round(v, 4) for v in spec.mean]}, std {[round(v, 4) for v in spec.std]}"
    )
    if notice := weights_notice(cfg.model.weights, spec):
        log.info(notice)
    if step.compile_note:
        log.info(step.compile_note)
    if step.ema is not None and cfg.method.teacher == "student":
        log.info(
            "the student makes the pseudo-labels: the EMA model is kept and evaluated for information only"
        )

    def save(path: Path) -> None:
        rng = gather_rng(info)  # collective: every rank calls save()
        if info.is_main:
            save_atomic(checkpoint_payload(cfg, step, state, data.classes, rng, data.input_bands), path)

    def nonfinite(err: NonFiniteLossError, epoch: int) -> SemisegError:
        save(out / "nonfinite.pt")
        return SemisegError(
            f"{err} in epoch {epoch}: lower optim.lr or use train.amp=none; the last good state is in "
            f"{latest.name}"
        )

    val_loader = loaders.val_loader(info)
    pictures = None
    if log.writer is not None:  # the main process, with TensorBoard: fixed samples, read once, no random draw
        pictures = EvalPictures(
            data.val, data.unlabeled, cfg.data.nclass, cfg.method.conf_thresh,
            dict(mode=cfg.eval.mode, window=cfg.eval.window, stride=cfg.eval.stride, flip_tta=cfg.eval.flip_tta),
        )  # fmt: skip
    show_bar = info.is_main and (progress if progress is not None else sys.stderr.isatty())
    bar = _progress(total_iters, state.iteration, show_bar)  # over the whole run, so its ETA is the run's
    stopped_early, logs = False, {}
    for epoch in range(state.epoch, cfg.train.epochs):
        start, t0 = state.batch_in_epoch, time.time()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{cfg.train.epochs}")
        step.model.train()
        for b, micro_batches in enumerate(loaders.steps(epoch, start), start=start):
            try:
                logs = step.accumulated(micro_batches, state.iteration)
                state.iteration += 1
                state.batch_in_epoch = b + 1
                log_point = state.iteration % cfg.train.log_every == 0 or b == start
                if log_point:  # values leave the device here only
                    step.check_finite()
                    log.train_point(state.iteration, {k: float(v) for k, v in logs.items()})
                    if bar is not None:
                        bar.set_postfix_str(format_logs(logs))
            except NonFiniteLossError as err:
                raise nonfinite(err, epoch) from None
            if bar is not None:
                bar.update(1)
            if cfg.train.max_iters is not None and state.iteration >= cfg.train.max_iters:
                stopped_early = True
                break
            # Under DDP asking every process is a collective and a host sync: done at log points only.
            if (log_point or not info.enabled) and stop.requested(info, device):
                break
        if info.enabled:  # every process agrees on a signal seen since the last log point before acting on it
            stop.requested(info, device)
        try:
            step.check_finite()  # before anything is evaluated, logged or saved
        except NonFiniteLossError as err:
            raise nonfinite(err, epoch) from None
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs}: {format_logs(logs)} ({time.time() - t0:.1f}s)")
        epoch_done = state.batch_in_epoch >= loaders.iters_per_epoch
        if stop.signum is not None and not epoch_done:  # mid-epoch: save where we are, nothing else
            save(latest)
            raise _interrupted(stop, state, latest, log)
        if epoch_done:
            state.epoch, state.batch_in_epoch = epoch + 1, 0
        due = epoch_done and (state.epoch % cfg.train.eval_every == 0 or state.epoch == cfg.train.epochs)
        scores, is_best = None, False
        if due or stopped_early:  # a mid-epoch stop is scored too, so best.pt always exists
            with _uncompiled(cfg):
                scores = _evaluate_all(cfg, task, step, val_loader, device)
            is_best = _record(
                task, log, state, scores, state.epoch + state.batch_in_epoch / loaders.iters_per_epoch
            )
            if pictures is not None:
                teacher = step.models.teacher if data.unlabeled is not None else None
                with _uncompiled(cfg):
                    pictures.write(log.writer, state.iteration, _evaluated_models(cfg, step), teacher, device)
        if epoch_done:
            step.method.on_epoch_end(step.model, state.epoch, scores)
        if scores is not None or stopped_early or state.epoch % cfg.train.save_every == 0:
            save(latest)
        if is_best:
            save(out / "best.pt")
        if stopped_early:
            log.info(
                f"stopped at train.max_iters={cfg.train.max_iters}; run again with the same --out to resume"
            )
            break
    if bar is not None:
        bar.close()
    log.plot_curves(task.primary_metric)
    log.close()
    return {"state": state, "best": dict(state.best)}


def _interrupted(stop: StopRequest, state: TrainState, latest: Path, log: RunLog) -> RunInterrupted:
    message = (
        f"stopped by {stop.name} at iteration {state.iteration} (epoch {state.epoch}, batch {state.batch_in_epoch}); "
        f"the state is in {latest}: run the same command to resume"
    )
    log.info(message)
    log.close()
    return RunInterrupted(message, stop.signum)


def _uncompiled(cfg: Config) -> Any:
    """Evaluation runs the compiled regions eagerly: it sees whole images of many sizes, each of which would be
    compiled anew for a pass made once an epoch, while training repeats the same few shapes every step."""
    if cfg.train.compile == "off":
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def _progress(total: int, start: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, leave=False)


def _evaluate_all(
    cfg: Config, task: Task, step: TrainStep, loader: DataLoader, device: torch.device
) -> dict[str, dict]:
    """Scores of the student and/or EMA; runs on a forked RNG so evaluating never changes the training draws."""
    wanted = _evaluated_models(cfg, step)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return {
            name: evaluate(
                net,
                loader,
                cfg.data.nclass,
                task,
                mode=cfg.eval.mode,
                window=cfg.eval.window,
                stride=cfg.eval.stride,
                flip_tta=cfg.eval.flip_tta,
                device=device,
                autocast_dtype=torch.bfloat16 if cfg.train.amp == "bf16" else None,
                progress=False,
            )  # fmt: skip
            for name, net in wanted.items()
        }


def _evaluated_models(cfg: Config, step: TrainStep) -> dict[str, torch.nn.Module]:
    """The models each evaluation scores, by name: the student and/or the EMA copy (`eval.model`)."""
    wanted = {"student": step.model, "ema": step.ema.model if step.ema else None}
    return {k: v for k, v in wanted.items() if v is not None and cfg.eval.model in ("both", k)}


def _record(task: Task, log: RunLog, state: TrainState, scores: dict[str, dict], epoch: float) -> bool:
    """Log one evaluation (log.txt, metrics.csv, TensorBoard) and update the best; True if this is a new best.

    `epoch` is fractional after a mid-epoch stop (train.max_iters)."""
    key = task.primary_metric
    epoch = int(epoch) if float(epoch).is_integer() else round(epoch, 3)
    row: dict[str, Any] = {"epoch": epoch, "iteration": state.iteration}
    for source, s in scores.items():
        numbers = {k: v for k, v in s.items() if isinstance(v, (int, float))}
        row.update({f"{source}_{k}": round(float(v), 4) for k, v in numbers.items()})
        log.scalars(f"eval_{source}", numbers, state.iteration)
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
