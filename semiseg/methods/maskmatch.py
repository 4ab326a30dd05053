"""MaskMatch: masked consistency and multi-scale teacher pseudo-labels (our reading of the paper's abstract).

Why: predicting the segmentation of an image whose patches are mostly hidden forces the student to use context
rather than local texture; the targets come from the teacher on the *complete* image, averaged over scales so
they are steadier than one forward pass.

Our choices, since only the abstract is confirmed (defaults in `method.maskmatch`):
- the mask is a grid of `block_size`-px square blocks (a multiple of the encoder's patch size, so every block
  covers whole ViT patches; blocks start at multiples of `block_size` from the top-left corner, the last row/column is cut at the
  crop border). Per image exactly round(`mask_ratio` × number of blocks) blocks, chosen at random, are masked;
  `mask_ratio_actual` logs the masked fraction of pixels (it differs from the ratio when border blocks are cut);
- masked pixels are set to 0 *after* normalisation, i.e. to the dataset mean colour, the least informative
  value for the encoder; the masked image is the weak view (no photometric noise, no CutMix), so the term
  isolates the effect of hiding;
- a change-detection pair is masked with the same blocks on both dates (a block hidden on one date only would
  look like a change);
- the term is CE(student(masked weak view), full-image pseudo-label) over every non-padded pixel (masked and
  visible), confidence-thresholded with `method.conf_thresh` and normalised like the base unlabeled loss
  (sum over confident pixels / all non-padded pixels); it enters the total with weight `weight`:
  (Lx + Lu + w·Lmask) / (2 + w);
- multi-scale pseudo-labels: for each scale s the weak images are resized to round(s × side / p) × p px
  (nearest multiple of the patch size p, at least p; bilinear, align_corners=False as for any image resize), run through
  the teacher, softmaxed, and the probabilities resized back to the crop (bilinear, align_corners=True, like the
  model's own output upsampling) and averaged. The masked-consistency term always uses them; with
  `multiscale_plabels: true` (default) the base method's strong-view targets use them too (one set of teacher
  passes serves both), otherwise the base keeps the single-scale teacher and the ensemble is computed for the
  masked term alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import Config
from semiseg.grid import round_to_multiple
from semiseg.methods.base import Models
from semiseg.methods.extras import Extra, StepContext
from semiseg.methods.losses import pseudo_label_loss
from semiseg.models.specs import encoder_spec


def block_mask(
    batch: int, height: int, width: int, block_size: int, ratio: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bool B x H x W mask, True where hidden: round(ratio × blocks) random grid blocks per image.

    Drawn on the CPU from torch's global generator (checkpointed, so a resume replays it), then moved.
    """
    grid_h, grid_w = -(-height // block_size), -(-width // block_size)
    n_blocks = grid_h * grid_w
    n_masked = int(round(ratio * n_blocks))
    ranks = torch.rand(batch, n_blocks).argsort(1).argsort(1)  # a random permutation per image
    blocks = (ranks < n_masked).view(batch, grid_h, grid_w)
    pixels = blocks.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)
    return pixels[:, :height, :width].to(device)


def apply_mask(images: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero the masked pixels of every (normalised) date with the same mask: 0 is the mean colour."""
    keep = (~mask).unsqueeze(1).to(images[0].dtype)
    return tuple(x * keep for x in images)


def scaled_side(side: int, scale: float, patch_size: int) -> int:
    """side × scale rounded to the nearest multiple of the patch size (halves up), at least one patch."""
    return round_to_multiple(side * scale, patch_size)


@torch.no_grad()
def multiscale_probs(
    teacher: nn.Module, images: tuple[torch.Tensor, ...], scales: list[float], patch_size: int
) -> torch.Tensor:
    """Mean over scales of the teacher's softmax on resized (normalised) images, back at the input size."""
    height, width = images[0].shape[-2:]
    total: torch.Tensor | None = None
    for scale in scales:
        size = (scaled_side(height, scale, patch_size), scaled_side(width, scale, patch_size))
        if size == (height, width):
            probs = teacher(*images).float().softmax(1)
        else:
            resized = tuple(F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in images)
            probs = teacher(*resized).float().softmax(1)
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=True)
        total = probs if total is None else total + probs
    assert total is not None, "no scales"
    return total / len(scales)


class MaskMatch(Extra):
    """Settings in `method.maskmatch` (checked by the configuration: a block is a whole number of patches)."""

    name = "maskmatch"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.method.maskmatch
        self.tau = cfg.method.conf_thresh
        self.patch_size = encoder_spec(cfg.model.encoder).patch_size

    def _ensemble(self, teacher: nn.Module, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        probs = multiscale_probs(teacher, self.normed(images), list(self.cfg.scales), self.patch_size)
        conf, plabel = probs.max(1)
        return conf, plabel, probs

    def pseudo_labels(
        self, models: Models, images: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        if not self.cfg.multiscale_plabels:
            return None
        return self._ensemble(models.teacher, images)

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, float, dict[str, torch.Tensor | float]] | None:
        images = ctx.unlabeled.images
        if self.cfg.multiscale_plabels or list(self.cfg.scales) == [1.0]:
            conf, plabel = ctx.conf, ctx.plabel  # already the (multi-scale) teacher's
        else:
            conf, plabel, _ = self._ensemble(ctx.models.teacher, images)
        b, _, h, w = images[0].shape
        mask = block_mask(b, h, w, self.cfg.block_size, self.cfg.mask_ratio, images[0].device)
        pred = ctx.models.student(*apply_mask(self.normed(images), mask))
        term = pseudo_label_loss(pred, plabel, conf, ctx.unlabeled.ignore, self.tau)
        logs = {"loss_mask": term.detach(), "mask_ratio_actual": mask.float().mean()}
        return term, self.cfg.weight, logs
