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

With `train.accumulate` = n, steps 2-4's backward run once per micro-batch (loss / n, gradients adding up, DDP's
exchange only on the last), then clipping, the optimiser and the EMA once: `TrainStep.accumulated`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from semiseg.config import Config, model_spec
from semiseg.devices import AMP_DTYPES
from semiseg.errors import SemisegError
from semiseg.methods.base import Batch, Method, Models
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
        return cls(model, method, build_optimizer(model, cfg.optim), cfg, total_iters, device, ema, dist)

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
        for i, (labeled, unlabeled) in enumerate(micro_batches):
            if isinstance(labeled, dict):
                labeled = Batch.from_loader(labeled, self.device)
            if isinstance(unlabeled, dict):
                unlabeled = Batch.from_loader(unlabeled, self.device)
            with self._no_sync(last=i == n - 1):
                with self._autocast():
                    result = self.method.step(self.models, labeled, unlabeled)
                # One host sync per micro-batch, on purpose: a bad update must never reach the weights.
                if broadcast_flag(not torch.isfinite(result.loss).item(), self.dist, self.device):
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
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, iteration)
        return {**logs, "lr": self.optimizer.param_groups[0]["lr"]}
