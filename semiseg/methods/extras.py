"""Extra loss terms that ride on a consistency method (PrevMatch, MaskMatch, ...).

An extra never re-implements the step: it sees the step's context (teacher pseudo-labels, strong views, their
CutMix boxes and mixed targets, the student's predictions) and returns one more loss term with its weight λ.
The method combines them as (Lx + Lu + Σ λ_i·L_i) / (2 + Σ λ_i), which is PrevMatch's published form and reduces
to the base loss when every λ is 0.

Extras are listed by name in `semiseg.registry.EXTRAS`; `semiseg.registry.build_method` instantiates the
configured ones and the method binds them to itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from semiseg.augment import StrongView
from semiseg.methods.base import Batch, Models


@dataclass
class StepContext:
    """Everything one consistency step computed, handed to each extra."""

    models: Models
    labeled: Batch
    unlabeled: Batch
    conf: torch.Tensor  # B x H x W teacher confidence on the weak view (before CutMix)
    plabel: torch.Tensor  # B x H x W teacher pseudo-label (before CutMix)
    probs: torch.Tensor  # B x K x H x W teacher probabilities
    views: list[StrongView] = field(default_factory=list)  # strong views (images already CutMixed) and boxes
    targets: list[tuple[torch.Tensor, ...]] = field(
        default_factory=list
    )  # per view: mixed (plabel, conf, ignore)
    pred_s: tuple[torch.Tensor, ...] = ()  # student logits per strong view
    iteration: int = 0
    total_iters: int = 1


class Extra:
    """Base class of an extra term. Override what you need; defaults do nothing."""

    name = "extra"
    norm = None  # the base method's normalisation, set by `bind`

    def bind(self, method: Any) -> None:
        """Called once by the method that carries this extra: extras that run a model see the same input."""
        self.norm = method.norm

    def normed(self, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.norm is None:
            raise RuntimeError(
                f"{self.name} was not bound to its method (Consistency calls extra.bind(self))"
            )
        return self.norm(images)

    def pseudo_labels(
        self, models: Models, images: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        """Return (conf, plabel, probs) to replace the teacher's single-scale pseudo-labels, or None."""
        return None

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, float, dict[str, torch.Tensor | float]] | None:
        """(term, λ, logs) or None when the extra has nothing to add this step."""
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int, scores: dict[str, dict] | None) -> None:
        """Called by the trainer after each epoch (and its evaluation, when one ran)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
