"""What every method shares: the batch type, normalisation, the labeled loss, and teacher pseudo-labels.

A method never looks at how many images a sample has: it hands the `images` tuple to the model and to the
augmenter, so the same code trains a segmenter (one image) and a change detector (before, after).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from semiseg.config import Config
from semiseg.methods.losses import cross_entropy, ohem_cross_entropy
from semiseg.models.normalize import normalize


@dataclass
class Batch:
    images: tuple[torch.Tensor, ...]  # uint8 B x C x H x W, one per date
    label: torch.Tensor  # B x H x W long, 255 = ignore
    ignore: torch.Tensor  # B x H x W, 255 where padded

    @classmethod
    def from_loader(cls, sample: dict, device: torch.device) -> Batch:
        return cls(
            images=tuple(x.to(device, non_blocking=True) for x in sample["images"]),
            label=sample["label"].to(device, non_blocking=True).long(),
            ignore=sample["ignore"].to(device, non_blocking=True),
        )


@dataclass
class StepOutput:
    """The loss to minimise and what to log. Log values stay tensors (or plain floats): reading a tensor's
    value waits for the accelerator, so the trainer converts them only when it actually logs."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class Models:
    """The networks a step may use. `teacher` is the EMA copy or the student itself (`teacher: student`)."""

    student: nn.Module
    teacher: nn.Module
    raw_student: nn.Module  # without the DDP wrapper, for no-grad teacher passes


class Method:
    """Base class: `step(models, labeled, unlabeled) -> StepOutput`. Subclasses set the two flags below.

    `mean`/`std` are the model's input normalisation; `extras` are extra loss terms (`extras.py`) that the
    method combines with its own and whose state and epoch hooks it forwards.
    """

    needs_unlabeled = False
    uses_ema = False

    def __init__(
        self, cfg: Config, mean: Sequence[float], std: Sequence[float], extras: Sequence[Any] = ()
    ) -> None:
        self.cfg = cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.extras = list(extras)
        for extra in self.extras:
            extra.bind(self)

    def norm(self, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(normalize(x, self.mean, self.std) for x in images)

    def labeled_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m = self.cfg.method
        if m.loss == "ohem":
            return ohem_cross_entropy(logits, label, m.ohem_thresh, m.ohem_min_kept)
        return cross_entropy(logits, label)

    @torch.no_grad()
    def pseudo_labels(self, teacher: nn.Module, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """(confidence, pseudo-label, probabilities) from the teacher on the weak view."""
        probs = teacher(*self.norm(images)).float().softmax(1)
        conf, plabel = probs.max(1)
        return conf, plabel, probs

    iteration = 0  # set by TrainStep before each step (schedules such as PrevMatch's λ need it)
    total_iters = 1

    def set_progress(self, iteration: int, total_iters: int) -> None:
        self.iteration, self.total_iters = iteration, total_iters

    def step(self, models: Models, labeled: Batch, unlabeled: Batch | None) -> StepOutput:
        raise NotImplementedError

    def on_epoch_end(self, model: nn.Module, epoch: int, scores: dict[str, dict] | None) -> None:
        """Called after each epoch (with the evaluation scores when one ran); extras hook in here."""
        for extra in self.extras:
            extra.on_epoch_end(model, epoch, scores)

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (e.g. PrevMatch's snapshots), per extra."""
        return {extra.name: extra.state_dict() for extra in self.extras}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for extra in self.extras:
            if extra.name in state:
                extra.load_state_dict(state[extra.name])
