"""Labeled data only: the baseline every semi-supervised number is compared with."""

from __future__ import annotations

from semiseg.methods.base import Batch, Method, Models, StepOutput


class Supervised(Method):
    def step(self, models: Models, labeled: Batch, unlabeled: Batch | None) -> StepOutput:
        loss = self.labeled_loss(models.student(*self.norm(labeled.images)), labeled.label)
        return StepOutput(loss, {"loss_x": loss.detach()})
