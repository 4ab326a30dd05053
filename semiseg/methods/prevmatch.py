"""PrevMatch: pseudo-labels from a random ensemble of earlier student snapshots.

Why: the EMA teacher forgets what the student knew a few epochs ago; a second target made from frozen previous
students adds guidance that is diverse (a fresh random subset and Dirichlet weights every iteration) and
temporally stable. The term is the base method's unlabeled loss recomputed against that ensemble's pseudo-labels,
weighted by a triangle λ (0 → 1 over the first half of training, 1 → 0 over the second), so early, noisy
snapshots and the final epochs, when the student has converged, get little weight.

Cost choices (PrevMatch reports +20-25 % per iteration):
- snapshots are stored as state dicts (tensors only), never as module copies, and run through the live student
  module with `torch.func.functional_call`, which swaps the tensors in for one no-grad forward and swaps the
  student's own back: no second model in memory, no per-iteration copy when the snapshots live on the device;
- `snapshot_device: cpu` (default) keeps the up to `max_snapshots` copies in host memory (pinned when training on
  CUDA) and moves only the k ≤ `max_ensemble` drawn ones per iteration; `device` keeps them all on the
  accelerator (fastest, costs `max_snapshots` × model size of accelerator memory: ~390 MB each for DINOv2-B);
- checkpoints carry the snapshots (so a resume is exact), which makes `latest.pt` up to `max_snapshots` model
  sizes larger.

Randomness (the subset size k, the subset, the Dirichlet weights) comes from torch's global CPU generator, whose
state the trainer checkpoints, so a resumed run draws exactly what the uninterrupted run would have drawn.

Triggers (`prevmatch.trigger`), after `warmup_epochs` completed epochs (the base loss alone before):
- `best_val` (default, official): a snapshot when the evaluated *student's* metric (mIoU, or change IoU) is a new
  best; the student is what gets stored, so its score decides (when only the EMA is evaluated, `eval.model: ema`,
  the EMA's score is used instead). The official code does this on the validation split. The trainer evaluates on
  `data.val_list`, which the change-detection configs set to `test` (the official protocol): with `best_val` that
  would select snapshots on the test set, so the PrevMatch change-detection configs use `data.val_list: val` (a
  warning says so at start-up otherwise);
- `every_k_epochs`: a snapshot after every `every_k`-th epoch; needs no evaluation data at all.

Where we differ from the official PrevMatch code (wooseok-shin/PrevMatch, `prevmatch.py` and `prev_utils.py`),
and why:
- the official code adds the snapshot at the start of the epoch after the new best; we add it right after that
  evaluation, before the next step: the same weights at the same point of training;
- the official base method is UniMatch (V1) on DeepLabV3+, with three unlabeled terms (two strong views and a
  feature-perturbed weak view, weighted 0.25/0.25/0.5); the term here is the base method's own unlabeled loss
  (UniMatch V2: the two strong views, averaged) against the snapshots' pseudo-labels, so the two agree term by term
  where the streams exist;
- its single model is both the one scored and the one stored; with an EMA teacher we score the student, which is
  what is stored;
- its draws (k, the subset, the Dirichlet weights) come from numpy and Python's `random`; ours from torch's
  generator (same distributions), so a resume replays them;
- it evaluates every epoch; with `train.eval_every` > 1, `best_val` can only fire on evaluated epochs;
- the CutMix partner of a pseudo-label is the reversed batch (UniMatch V2's rule), not a second loader's batch;
- the snapshots' logits are summed in float32 even under autocast.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from semiseg.augment import mix_with_reversed
from semiseg.config import Config
from semiseg.methods.extras import Extra, StepContext
from semiseg.methods.losses import averaged_confidence_loss, pseudo_label_loss
from semiseg.task import get_task

Snapshot = dict[str, torch.Tensor]


def triangle_weight(iteration: int, total_iters: int) -> float:
    """λ(t) = 1 - |2t - 1| with t = iteration / total: 0 at the start, 1 half-way, 0 at the end, linear between."""
    t = min(max(iteration / max(total_iters, 1), 0.0), 1.0)
    return 1.0 - abs(2.0 * t - 1.0)


def epoch_triangle_weight(epoch: int, epochs: int) -> float:
    """λ for a whole 0-based `epoch`, as the official code steps it: e/h for e < h, else 1 − (e − h)/(E − h), with
    h = E // 2 (so λ is 0 in the first epoch, 1 at epoch h, and 1/(E − h) in the last)."""
    half = epochs // 2
    if epoch < half:
        return epoch / half
    return 1.0 - (epoch - half) / max(epochs - half, 1)


def dirichlet_weights(k: int) -> torch.Tensor:
    """k weights ~ Dirichlet(1, …, 1), drawn as normalised Exp(1) variables (Exp(1) = Gamma(1, 1)).

    Drawn on the CPU from torch's global generator so checkpointed RNG state replays them exactly.
    """
    draws = torch.empty(k, dtype=torch.float64).exponential_()
    return (draws / draws.sum()).float()


def draw_ensemble(n_snapshots: int, max_ensemble: int) -> tuple[list[int], torch.Tensor]:
    """(indices, weights): k ~ U{1..min(max_ensemble, n)} distinct snapshots and their Dirichlet weights."""
    k_max = min(max_ensemble, n_snapshots)
    k = int(torch.randint(1, k_max + 1, ()).item())
    indices = torch.randperm(n_snapshots)[:k].tolist()
    return indices, dirichlet_weights(k)


@torch.no_grad()
def ensemble_logits(
    model: nn.Module, snapshots: list[Snapshot], weights: torch.Tensor, images: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Σ_i w_i · logits of snapshot i on `images` (normalised), computed in float32 with `model` as the shell."""
    total: torch.Tensor | None = None
    for snapshot, w in zip(snapshots, weights.tolist()):
        logits = functional_call(model, snapshot, images).float()
        total = logits * w if total is None else total + logits * w
    assert total is not None, "ensemble of zero snapshots"
    return total


class PrevMatch(Extra):
    """Settings in `method.prevmatch` (ranges checked by the configuration)."""

    name = "prevmatch"

    def __init__(self, cfg: Config) -> None:
        p = cfg.method.prevmatch
        if p.trigger == "best_val" and cfg.data.val_list == "test":
            warnings.warn(
                "method.prevmatch.trigger=best_val with data.val_list=test selects snapshots on the test set; "
                "set data.val_list=val for an honest run",
                stacklevel=2,
            )
        self.cfg = p
        self.epochs = cfg.train.epochs
        self.metric = get_task(cfg.task).primary_metric
        self.snapshots: list[Snapshot] = []
        self.snapshot_epochs: list[int] = []
        self.best: float = 0.0  # official: a score must beat 0 to count as a best

    # ---- snapshot store ----------------------------------------------------------------------------------
    def _store_device(self, like: torch.Tensor) -> torch.device:
        return like.device if self.cfg.snapshot_device == "device" else torch.device("cpu")

    def _place_store(self, device: torch.device) -> None:
        """Put the store where it belongs for training on `device` (after a resume it arrives on the CPU).

        `device`: every snapshot on the accelerator, moved once. `cpu` while training on CUDA: pinned host
        memory, so the per-iteration copies of the drawn snapshots are asynchronous.
        """
        for i, snap in enumerate(self.snapshots):
            first = next(iter(snap.values()))
            if self.cfg.snapshot_device == "device" and first.device != device:
                self.snapshots[i] = {k: v.to(device) for k, v in snap.items()}
            elif self.cfg.snapshot_device == "cpu" and device.type == "cuda" and not first.is_pinned():
                self.snapshots[i] = {k: v.pin_memory() for k, v in snap.items()}

    def add_snapshot(self, model: nn.Module, epoch: int) -> None:
        """Append a frozen copy of `model`'s state (FIFO: the oldest leaves when the store is full)."""
        state = model.state_dict()
        device = self._store_device(next(iter(state.values())))
        self.snapshots.append({k: v.detach().to(device, copy=True) for k, v in state.items()})
        self.snapshot_epochs.append(epoch)
        while len(self.snapshots) > self.cfg.max_snapshots:
            self.snapshots.pop(0)
            self.snapshot_epochs.pop(0)

    def on_epoch_end(self, model: nn.Module, epoch: int, scores: dict[str, dict] | None) -> None:
        """`epoch`: epochs completed (1-based). The best score is tracked through the warm-up too, as officially,
        so the first snapshot after it needs a score above every earlier one."""
        warmed_up = epoch >= self.cfg.warmup_epochs
        if self.cfg.trigger == "every_k_epochs":
            if warmed_up and epoch % self.cfg.every_k == 0:
                self.add_snapshot(model, epoch)
            return
        if not scores:
            return
        source = scores.get("student") or next(iter(scores.values()))
        value = float(source[self.metric])
        if value > self.best:
            self.best = value
            if warmed_up:
                self.add_snapshot(model, epoch)

    def weight(self, iteration: int, total_iters: int) -> float:
        """λ at optimiser step `iteration` (0-based) of `total_iters`, per `lambda_schedule`."""
        if self.cfg.lambda_schedule == "per_iteration":
            return triangle_weight(iteration, total_iters)
        per_epoch = max(total_iters // max(self.epochs, 1), 1)
        return epoch_triangle_weight(min(iteration // per_epoch, self.epochs - 1), self.epochs)

    # ---- the loss term -------------------------------------------------------------------------------------
    def _on(self, snapshot: Snapshot, device: torch.device) -> Snapshot:
        return {k: v.to(device, non_blocking=True) for k, v in snapshot.items()}

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, float, dict[str, torch.Tensor | float]] | None:
        if not self.snapshots:
            return None  # before the first snapshot: the base loss alone
        weight = self.weight(ctx.iteration, ctx.total_iters)
        weak = self.normed(ctx.unlabeled.images)
        device = ctx.unlabeled.images[0].device
        self._place_store(device)
        indices, mix = draw_ensemble(len(self.snapshots), self.cfg.max_ensemble)
        chosen = [self._on(self.snapshots[i], device) for i in indices]
        logits = ensemble_logits(ctx.models.raw_student, chosen, mix, weak)
        conf_prev, plabel_prev = logits.softmax(1).max(1)
        terms = []
        for view, pred, (_, _, ignore_mixed) in zip(ctx.views, ctx.pred_s, ctx.targets):
            plabel_m, conf_m = mix_with_reversed(view.box, plabel_prev, conf_prev)
            if self.cfg.conf_mode == "pixelavg":
                terms.append(averaged_confidence_loss(pred, plabel_m, conf_m, ignore_mixed))
            else:
                terms.append(pseudo_label_loss(pred, plabel_m, conf_m, ignore_mixed, self.cfg.conf_thresh))
        term = sum(terms) / len(terms)
        logs = {
            "loss_prev": term.detach(),
            "lambda_prev": weight,
            "snapshots": float(len(self.snapshots)),
        }
        return term, weight, logs

    # ---- checkpointing (tensors and plain values only: loadable with weights_only=True) --------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "snapshots": list(self.snapshots),
            "epochs": list(self.snapshot_epochs),
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = [dict(s) for s in state.get("snapshots", [])]
        self.snapshot_epochs = list(state.get("epochs", []))
        best = state.get("best")
        self.best = 0.0 if best is None or not math.isfinite(best) else float(best)
