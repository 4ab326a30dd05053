"""One optimiser step of any method on any task: the only place in the toolkit that calls `backward()`.

The trainer loop, `tools/bench_train_step.py` and external parity checks all drive this same object, so what is
measured and checked is what trains.

    cfg = load_config("configs/levir_cd.yaml", ["model.weights=null"])   # or any config
    step = TrainStep.from_config(cfg, device, total_iters)
    logs = step(labeled, unlabeled, iteration)

`labeled` and `unlabeled` are `semiseg.methods.base.Batch` objects (uint8 images, one tensor per date; long
labels with 255 = ignore; `ignore` 255 where padded), or the sample dicts a DataLoader yields, which are moved to
the step's device; `unlabeled` is None for supervised training. `iteration` is the
0-based index of this optimiser step in the whole run; it sets the learning rate, the EMA ratio and schedules
such as PrevMatch's λ. The returned logs are tensors (plus the learning rate) so that no value is read back from
the accelerator here: the caller reads them only when it logs.

The order is the official UniMatch V2 one, and the parity checks rely on it:
1. learning rates for `iteration`: poly(iteration - 1) (the official loop updates the rate after each step, so
   step `it` runs with the rate computed at `it - 1`, and step 0 with the base rate), encoder × 1, rest × lr_multi;
2. the method's step under autocast: teacher pseudo-labels on the weak view, strong views (photometric noise,
   CutMix), student forwards of the labeled batch, then of the stacked strong views (with complementary
   dropout), losses;
3. a non-finite loss on any process stops every process before anything is updated (one host sync);
4. backward (scaled for fp16; the gradients were zeroed before step 2), optional clipping, optimiser step;
5. the EMA update with α = min(1 − 1/(iteration + 1), ema_decay).

With a fused optimiser (`optim.fused`, the default on CUDA) and no fp16 scaler, step 3 needs no host sync: the
non-finite flag stays on the device and is handed to the fused AdamW kernel, which then skips the update (weights,
moments, step count); the EMA skips it too (α = 1). The flag is read by `check_finite` at the trainer's log
points, which raises `NonFiniteLossError` naming the first bad iteration. Between the bad step and that read, no
update reaches the weights from a bad step; later good steps do train, so the saved state is the good one.
Reading the flag every step would make the host wait for the accelerator to finish the step before queueing the
next: on a GPU that idles it between steps.

With `train.accumulate` = n, steps 2-4's backward run once per micro-batch (loss / n, gradients adding up, DDP's
exchange only on the last), then clipping, the optimiser and the EMA once: `TrainStep.accumulated`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from semiseg.config import Config, model_spec
from semiseg.devices import AMP_DTYPES
from semiseg.errors import SemisegError
from semiseg.methods.base import Batch, Method, Models
from semiseg.models.compile import compile_problem, compile_regions
from semiseg.models.segmentor import Segmentor, build_model
from semiseg.registry import build_method
from semiseg.task import get_task
from semiseg.train.distributed import DistInfo, broadcast_flag
from semiseg.train.ema import EMA
from semiseg.train.optim import build_optimizer, lr_for_step, set_lr


class NonFiniteLossError(SemisegError):
    """The loss of a step was NaN or infinite (on some process); nothing was updated."""

    def __init__(self, iteration: int, logs: dict[str, Any]) -> None:
        self.iteration, self.logs = iteration, logs
        super().__init__(f"the loss became non-finite at iteration {iteration} ({format_logs(logs)})")


def format_logs(logs: dict[str, Any]) -> str:
    """`key=value ...` with 3 significant digits. Reads tensors back from the device: call at log points only."""
    return " ".join(f"{k}={float(v):.3g}" for k, v in logs.items())


class TrainStep:
    """Holds what one step touches (model, EMA, method, optimiser, scaler) and runs steps; see the module doc."""

    def __init__(
        self,
        model: Segmentor,
        method: Method,
        optimizer: torch.optim.Optimizer,
        cfg: Config,
        total_iters: int,
        device: torch.device,
        ema: EMA | None = None,
        dist: DistInfo | None = None,
    ) -> None:
        self.model, self.method, self.optimizer, self.ema = model, method, optimizer, ema
        self.cfg, self.total_iters, self.device = cfg, total_iters, device
        self.dist = dist or DistInfo()
        if cfg.train.amp == "fp16" and device.type != "cuda":
            raise SemisegError("train.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
        self.amp_dtype = AMP_DTYPES.get(cfg.train.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
        student: nn.Module = model
        if self.dist.enabled:
            student = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        teacher = ema.model if ema is not None and cfg.method.teacher == "ema" else model
        self.models = Models(student=student, teacher=teacher, raw_student=model)
        self.primary_metric = get_task(cfg.task).primary_metric
        # The fp16 scaler hands its own overflow flag to the optimiser, so fp16 keeps the synchronous check.
        self.deferred_check = bool(optimizer.defaults.get("fused")) and not self.scaler.is_enabled()
        self._first_bad: torch.Tensor | None = None  # iteration of the first skipped step, -1 while none
        self._bad_logs: dict[str, torch.Tensor] = {}  # that step's logs
        self.compile_note: str | None = None  # what `train.compile` did, for the run log

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        device: torch.device,
        total_iters: int,
        dist: DistInfo | None = None,
        pretrained: bool = True,
    ) -> TrainStep:
        """Build the model, method, EMA and optimiser of a run; the encoder starts from `cfg.model.weights` unless
        `pretrained` is False (a resume, whose checkpoint replaces every weight anyway). The method is built
        before the model, so the model's random initialisation draws from the seeded generator in the same order
        in every run."""
        spec = model_spec(cfg)
        method = build_method(cfg, spec.mean, spec.std)
        fusion = get_task(cfg.task).fusion
        weights = cfg.model.weights if pretrained else None
        rgb_bands = None if cfg.model.rgb_bands is None else tuple(cfg.model.rgb_bands)
        model = build_model(spec, cfg.data.nclass, fusion, weights, rgb_bands).to(device)
        if cfg.model.freeze_encoder:
            model.freeze_encoder()  # before the optimiser is built: its encoder group stays empty
        ema = EMA(model, cfg.method.ema_decay) if method.uses_ema else None
        step = cls(
            model, method, build_optimizer(model, cfg.optim, device), cfg, total_iters, device, ema, dist
        )
        if cfg.train.compile != "off":
            step.compile_note = compile_step_models(step, cfg.train.compile)
        return step

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def __call__(
        self, labeled: Batch | dict, unlabeled: Batch | dict | None, iteration: int
    ) -> dict[str, Any]:
        return self.accumulated([(labeled, unlabeled)], iteration)

    def _no_sync(self, last: bool) -> Any:
        """DDP averages gradients across processes in backward; on all but the last micro-batch of a step that
        exchange is skipped, so it happens once per optimiser step, over the summed gradients."""
        student = self.models.student
        if last or not isinstance(student, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return student.no_sync()

    def accumulated(
        self, micro_batches: Sequence[tuple[Batch | dict, Batch | dict | None]], iteration: int
    ) -> dict[str, Any]:
        """One optimiser step over several micro-batches (`train.accumulate`): each micro-batch's loss, divided
        by their number, is backpropagated and the gradients add up, so the step sees the mean of the
        micro-batches' losses, exactly what DDP's gradient average gives one micro-batch per process (the model
        has no BatchNorm, and the teacher, learning rate and EMA change only between optimiser steps). Each
        micro-batch keeps its own loss normalisation and its own CutMix partners, as each GPU of the official runs did.
        The learning rate, the method's schedules and the EMA advance once per call. Logs are the micro-batches'
        means. One micro-batch is the plain step of the module doc."""
        cfg, n = self.cfg, len(micro_batches)
        set_lr(self.optimizer, lr_for_step(cfg.optim, iteration, self.total_iters), cfg.optim.lr_multi)
        self.method.set_progress(iteration, self.total_iters)
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, Any] = {}
        step_bad: torch.Tensor | None = None
        for i, (labeled, unlabeled) in enumerate(micro_batches):
            if isinstance(labeled, dict):
                labeled = Batch.from_loader(labeled, self.device)
            if isinstance(unlabeled, dict):
                unlabeled = Batch.from_loader(unlabeled, self.device)
            with self._no_sync(last=i == n - 1):
                with self._autocast():
                    result = self.method.step(self.models, labeled, unlabeled)
                if self.deferred_check:  # on the device, read at log points (module doc)
                    bad = ~torch.isfinite(result.loss.detach())
                    step_bad = bad if step_bad is None else step_bad | bad
                # One host sync per micro-batch, on purpose: a bad update must never reach the weights.
                elif broadcast_flag(not torch.isfinite(result.loss).item(), self.dist, self.device):
                    raise NonFiniteLossError(iteration, {"loss": result.loss.detach(), **result.logs})
                self.scaler.scale(result.loss if n == 1 else result.loss / n).backward()
            micro_logs = {"loss": result.loss.detach(), **result.logs}
            if n == 1:
                logs = micro_logs
            else:
                logs = {key: logs.get(key, 0.0) + value / n for key, value in micro_logs.items()}
        if cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        skip = None
        if step_bad is not None:
            skip = self._skip_flag(step_bad, iteration, logs)
            self.optimizer.found_inf, self.optimizer.grad_scale = skip, None  # read by the fused kernel
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf, self.optimizer.grad_scale
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, iteration, skip)
        return {**logs, "lr": self.optimizer.param_groups[0]["lr"]}

    def _skip_flag(self, step_bad: torch.Tensor, iteration: int, logs: dict[str, Any]) -> torch.Tensor:
        """1.0 where this step must be skipped (a non-finite loss on any process), as a device tensor; records the
        first such iteration and its logs, all without reading anything back."""
        skip = step_bad.float()
        if self.dist.enabled:  # queued on the device like the gradient exchange; no host wait with NCCL
            torch.distributed.all_reduce(skip, op=torch.distributed.ReduceOp.MAX)
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        first = (self._first_bad < 0) & (skip > 0)
        self._first_bad = torch.where(first, iteration, self._first_bad)
        for key, value in logs.items():
            if isinstance(value, torch.Tensor):
                old = self._bad_logs.get(key, torch.zeros_like(value))
                self._bad_logs[key] = torch.where(first, value.detach(), old)
        return skip

    def check_finite(self) -> None:
        """Raise `NonFiniteLossError` if a step since the start was skipped for a non-finite loss. With the fused
        optimiser this reads one value back from the device (a host sync): the trainer calls it at log points
        and before it evaluates or saves. Without it, the step already checked, and this reads nothing."""
        if self._first_bad is not None and (iteration := int(self._first_bad)) >= 0:
            raise NonFiniteLossError(iteration, self._bad_logs)


def compile_step_models(step: TrainStep, mode: str) -> str:
    """Compile the student and its EMA copy region by region (`semiseg.models.compile`); returns the sentence
    the run log gets: what was compiled, or why nothing was (then one `warnings.warn` too)."""
    problem = compile_problem(step.device, mode)
    if problem is not None:
        message = f"train.compile={mode} cannot work here ({problem}); training uncompiled"
        warnings.warn(message, stacklevel=2)
        return "warning: " + message
    count = compile_regions(step.model, mode)
    if step.ema is not None:  # the teacher: its passes are a good share of a semi-supervised step
        compile_regions(step.ema.model, mode)
    return (
        f"train.compile={mode}: {count} regions compiled (encoder blocks and head); the first steps compile them, "
        "evaluation runs uncompiled"
    )
