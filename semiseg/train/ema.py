"""Exponential moving average of the student: the UniMatch V2 teacher."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_ratio(iteration: int, decay: float) -> float:
    """α = min(1 - 1/(it + 1), decay): a plain running mean early on (the EMA starts as the student), then `decay`."""
    return min(1.0 - 1.0 / (iteration + 1), decay)


class EMA:
    """Holds a frozen copy of the model and updates it in place: θ_ema = α·θ_ema + (1 - α)·θ."""

    def __init__(self, model: nn.Module, decay: float = 0.996) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int, skip: torch.Tensor | None = None) -> None:
        """θ_ema ← α·θ_ema + (1 − α)·θ. `skip` (a device flag, 1.0 for a skipped step) makes α = 1 there without
        reading the flag back; without it, the arithmetic is the official update's exactly."""
        alpha = ema_ratio(iteration, self.decay)
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        if skip is not None:
            # α and 1 − α are the official update's values (rounded once from Python floats); the product and the
            # sum are two roundings where the official `add_(alpha=)` may fuse them, so this path can differ from
            # it in the last bit (`optim.fused: false` keeps the official arithmetic exactly).
            keep = torch.where(skip > 0, 1.0, alpha).to(torch.float32)
            take = torch.where(skip > 0, 0.0, 1.0 - alpha).to(torch.float32)
            torch._foreach_mul_(ema_params, keep)
            torch._foreach_addcmul_(ema_params, params, [take] * len(params))
            for b_ema, b in zip(self.model.buffers(), model.buffers()):
                if b_ema.dtype.is_floating_point:
                    b_ema.mul_(keep).addcmul_(b.detach(), take)
                else:
                    b_ema.copy_(torch.where(skip > 0, b_ema, b.detach()))
            return
        torch._foreach_mul_(ema_params, alpha)
        torch._foreach_add_(ema_params, params, alpha=1.0 - alpha)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            if b_ema.dtype.is_floating_point:
                b_ema.mul_(alpha).add_(b.detach(), alpha=1.0 - alpha)
            else:
                b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
