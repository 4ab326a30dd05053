"""Loss terms of the official recipe, each a small function with the exact normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels (255); 0 (with a graph) when every pixel is ignored."""
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 200000
) -> torch.Tensor:
    """Online hard example mining CE (Cityscapes recipe).

    Keeps the pixels whose probability of the true class is <= max(thresh, p_k), p_k being the min_kept-th smallest
    such probability; with fewer than min_kept valid pixels every valid pixel is kept.
    """
    valid = target != IGNORE
    num_valid = int(valid.sum())
    target = target.clone()
    if 0 < min_kept <= num_valid:
        with torch.no_grad():
            prob = logits.detach().float().softmax(1)
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            p_true = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
            p_true = torch.where(valid, p_true, torch.ones_like(p_true))
            kth = torch.kthvalue(p_true[valid], min(num_valid, min_kept)).values
            threshold = torch.maximum(kth, torch.tensor(thresh, device=kth.device))
            target[p_true > threshold] = IGNORE
    return cross_entropy(logits, target)


def pseudo_label_loss(
    logits: torch.Tensor,
    plabel: torch.Tensor,
    conf: torch.Tensor,
    ignore: torch.Tensor,
    conf_thresh: float,
) -> torch.Tensor:
    """Σ CE·[conf ≥ τ]·[ignore ≠ 255] / #[ignore ≠ 255].

    The denominator counts every non-padded pixel, not only the confident ones (official normalisation): the
    unlabeled loss shrinks when the teacher is unsure instead of being re-weighted up.
    """
    ce = F.cross_entropy(logits.float(), plabel, reduction="none")
    valid = ignore != IGNORE
    keep = (conf >= conf_thresh) & valid
    return (ce * keep).sum() / valid.sum().clamp_min(1)


def averaged_confidence_loss(
    logits: torch.Tensor, plabel: torch.Tensor, conf: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """PrevMatch's Cityscapes weighting (its `pixelavg` mode), exactly as the official code computes it:
    (Σ CE over every pixel of the batch) · (Σ_images mean confidence over the image's non-padded pixels)
    / #[ignore ≠ 255].

    No threshold: on Cityscapes most pixels are confident, so a mean confidence per image replaces the cut. Note
    what the official expression does, kept here for parity: the CE sum runs over the whole batch, padded pixels
    included, and multiplies the *sum* of the per-image mean confidences (B times a per-image weighting).
    """
    ce = F.cross_entropy(logits.float(), plabel, reduction="none")
    valid = (ignore != IGNORE).float()
    mean_conf = (conf.float() * valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    return ce.sum() * mean_conf.sum() / valid.sum().clamp_min(1)
