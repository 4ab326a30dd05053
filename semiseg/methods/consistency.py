"""Weak-to-strong consistency: FixMatch (one strong view) and UniMatch V2 (two views + complementary dropout).

The two differ only in the number of strong views and in whether the student's forward of the stacked views
applies complementary channel dropout, so they are one class with two settings rather than two trainers.
Optional extras (PrevMatch, MaskMatch) add loss terms from the same step context (see `extras.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from semiseg.augment import StrongViews, mix_with_reversed
from semiseg.config import Config
from semiseg.methods.base import Batch, Method, Models, StepOutput
from semiseg.methods.extras import Extra, StepContext
from semiseg.methods.losses import pseudo_label_loss


class Consistency(Method):
    needs_unlabeled = True
    uses_ema = True  # kept and evaluated even when the student makes the pseudo-labels (official CD)

    def __init__(
        self,
        cfg: Config,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        n_views: int,
        comp_drop: bool,
        extras: list[Extra] | None = None,
    ) -> None:
        super().__init__(cfg, mean, std)
        self.n_views = n_views
        self.comp_drop = comp_drop
        self.extras = extras or []
        grayscale = cfg.method.grayscale_p
        if grayscale is None:
            grayscale = 0.2 if cfg.task == "segmentation" else 0.0
        self.strong = StrongViews(grayscale_p=grayscale, mean=mean, std=std)
        for extra in self.extras:
            extra.bind(self)

    def teacher_labels(self, models: Models, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        for extra in self.extras:
            out = extra.pseudo_labels(models, images)
            if out is not None:
                return out
        return self.pseudo_labels(models.teacher, images)

    def step(self, models: Models, labeled: Batch, unlabeled: Batch | None) -> StepOutput:
        assert unlabeled is not None
        tau = self.cfg.method.conf_thresh
        conf, plabel, probs = self.teacher_labels(models, unlabeled.images)

        views = [self.strong(unlabeled.images) for _ in range(self.n_views)]
        targets = [mix_with_reversed(v.box, plabel, conf, unlabeled.ignore) for v in views]
        n_dates = len(unlabeled.images)
        stacked = tuple(torch.cat([v.images[d] for v in views]) for d in range(n_dates))

        pred_x = models.student(*self.norm(labeled.images))
        pred_s = models.student(*stacked, comp_drop=self.comp_drop).chunk(self.n_views)

        loss_x = self.labeled_loss(pred_x, labeled.label)
        loss_u = (
            sum(pseudo_label_loss(p, pl, c, ig, tau) for p, (pl, c, ig) in zip(pred_s, targets))
            / self.n_views
        )
        valid = unlabeled.ignore != 255
        mask_ratio = ((conf >= tau) & valid).sum() / valid.sum().clamp_min(1)
        logs = {"loss_x": loss_x.item(), "loss_u": float(loss_u.detach()), "mask_ratio": mask_ratio.item()}

        numerator, denominator = loss_x + loss_u, 2.0
        if self.extras:
            ctx = StepContext(
                models,
                labeled,
                unlabeled,
                conf,
                plabel,
                probs,
                views,
                targets,
                pred_s,
                self.iteration,
                self.total_iters,
            )
            for extra in self.extras:
                out = extra.loss(ctx)
                if out is None:
                    continue
                term, weight, extra_logs = out
                numerator = numerator + weight * term
                denominator += weight
                logs.update(extra_logs)
        return StepOutput(numerator / denominator, logs)

    # ---- hooks the trainer calls -----------------------------------------------------------------------
    def on_epoch_end(self, model: nn.Module, epoch: int, scores: dict[str, dict] | None) -> None:
        for extra in self.extras:
            extra.on_epoch_end(model, epoch, scores)

    def state_dict(self) -> dict[str, Any]:
        return {extra.name: extra.state_dict() for extra in self.extras}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for extra in self.extras:
            if extra.name in state:
                extra.load_state_dict(state[extra.name])
