"""Weak-to-strong consistency: FixMatch (one strong view) and UniMatch V2 (two views + complementary dropout).

The two differ only in the number of strong views and in whether the student's forward of the stacked views
applies complementary channel dropout, so they are one class with two settings rather than two trainers.
Optional extras (PrevMatch, MaskMatch) add loss terms from the same step context (see `extras.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
        mean: Sequence[float],
        std: Sequence[float],
        n_views: int,
        comp_drop: bool,
        extras: Sequence[Extra] = (),
    ) -> None:
        super().__init__(cfg, mean, std, extras)
        self.n_views = n_views
        self.comp_drop = comp_drop
        # The grayscale probability is a task default (0 for change detection, where colour is the signal).
        self.strong = StrongViews(grayscale_p=cfg.method.grayscale_p, mean=mean, std=std)

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
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_ratio": mask_ratio}

        numerator, denominator = loss_x + loss_u, 2.0
        if self.extras:
            ctx = StepContext(
                models=models, labeled=labeled, unlabeled=unlabeled, conf=conf, plabel=plabel, probs=probs,
                views=views, targets=targets, pred_s=pred_s, iteration=self.iteration,
                total_iters=self.total_iters,
            )  # fmt: skip
            for extra in self.extras:
                out = extra.loss(ctx)
                if out is None:
                    continue
                term, weight, extra_logs = out
                numerator = numerator + weight * term
                denominator += weight
                logs.update(extra_logs)
        return StepOutput(numerator / denominator, logs)


def fixmatch(
    cfg: Config, mean: Sequence[float], std: Sequence[float], extras: Sequence[Extra] = ()
) -> Consistency:
    """FixMatch: one strong view, no complementary dropout."""
    return Consistency(cfg, mean, std, n_views=1, comp_drop=False, extras=extras)


def unimatch_v2(
    cfg: Config, mean: Sequence[float], std: Sequence[float], extras: Sequence[Extra] = ()
) -> Consistency:
    """UniMatch V2: two strong views, complementary channel dropout between them (`method.comp_drop`)."""
    return Consistency(cfg, mean, std, n_views=2, comp_drop=cfg.method.comp_drop, extras=extras)
