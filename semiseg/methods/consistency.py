"""Weak-to-strong consistency: FixMatch (one strong view) and UniMatch V2 (two views + complementary dropout).

The two differ only in the number of strong views and in whether the student's forward of the stacked views
applies complementary channel dropout, so they are one class with two settings rather than two trainers.
"""

from __future__ import annotations

import torch

from semiseg.augment import StrongViews, mix_with_reversed
from semiseg.config import Config
from semiseg.methods.base import Batch, Method, Models, StepOutput
from semiseg.methods.losses import pseudo_label_loss


class Consistency(Method):
    needs_unlabeled = True

    def __init__(
        self, cfg: Config, mean: tuple[float, ...], std: tuple[float, ...], n_views: int, comp_drop: bool
    ) -> None:
        super().__init__(cfg, mean, std)
        self.n_views = n_views
        self.comp_drop = comp_drop
        self.uses_ema = True  # kept and evaluated even when the student makes the pseudo-labels (official CD)
        grayscale = cfg.method.grayscale_p
        if grayscale is None:
            grayscale = 0.2 if cfg.task == "segmentation" else 0.0
        self.strong = StrongViews(grayscale_p=grayscale, mean=mean, std=std)

    def step(self, models: Models, labeled: Batch, unlabeled: Batch | None) -> StepOutput:
        assert unlabeled is not None
        tau = self.cfg.method.conf_thresh
        conf, plabel, _ = self.pseudo_labels(models.teacher, unlabeled.images)

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
        loss = (loss_x + loss_u) / 2.0

        valid = unlabeled.ignore != 255
        mask_ratio = ((conf >= tau) & valid).sum() / valid.sum().clamp_min(1)
        return StepOutput(
            loss, {"loss_x": loss_x.item(), "loss_u": float(loss_u.detach()), "mask_ratio": mask_ratio.item()}
        )
