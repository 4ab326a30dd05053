"""AdamW with the two learning-rate groups and the poly schedule of the official recipe."""

from __future__ import annotations

import torch

from semiseg.config import OptimConfig
from semiseg.errors import SemisegError
from semiseg.models.segmentor import Segmentor


def build_optimizer(
    model: Segmentor, cfg: OptimConfig, device: torch.device | None = None
) -> torch.optim.AdamW:
    """Encoder at `lr`, everything else (fusion, head) at `lr * lr_multi`; weight decay on all parameters.

    `cfg.fused` (None: fused on CUDA only) selects AdamW's fused kernel: one launch for all parameters instead of
    a few per tensor list, and it can skip a step from a flag on the device (`semiseg.train.step`). Elsewhere
    PyTorch's default implementation is kept, which is what the official code runs.

    A frozen encoder (`model.freeze_encoder`) leaves the first group empty, as the official code does: the group
    still exists, so the schedule sets both groups the same way and the logged learning rate is the encoder's."""
    encoder_params, other_params = model.param_groups()
    fused = cfg.fused if cfg.fused is not None else device is not None and device.type == "cuda"
    try:
        return _adamw(encoder_params, other_params, cfg, fused)
    except RuntimeError as err:  # e.g. fused on a device or dtype PyTorch has no fused kernel for
        raise SemisegError(
            f"optim.fused={cfg.fused}: {str(err).splitlines()[0]}; set optim.fused: null"
        ) from None


def _adamw(encoder_params: list, other_params: list, cfg: OptimConfig, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": cfg.lr},
            {"params": other_params, "lr": cfg.lr * cfg.lr_multi},
        ],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        fused=fused or None,  # None, not False: PyTorch then picks its default (foreach) implementation
    )


def poly_lr(base_lr: float, iteration: int, total_iters: int, power: float = 0.9) -> float:
    """lr · (1 - it/total)^power, clamped at 0 past the end."""
    frac = min(max(iteration, 0) / max(total_iters, 1), 1.0)
    return base_lr * (1.0 - frac) ** power


def lr_for_step(cfg: OptimConfig, iteration: int, total_iters: int) -> float:
    """The LR used by optimiser step `iteration` (0-based).

    The official loop sets poly(it) *after* step `it`, so step `it` runs with poly(it - 1) and step 0 with the
    base LR. We reproduce that exactly.
    """
    return poly_lr(cfg.lr, iteration - 1, total_iters, cfg.poly_power) if iteration > 0 else cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float, lr_multi: float) -> None:
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * lr_multi
