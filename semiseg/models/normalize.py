"""Turn images into the encoder's input: scale to [0, 1], subtract the mean and divide by the std per band.

The mean and std come from the encoder's spec (or, for a loaded checkpoint, from what it was trained with);
every caller passes them in, so there is one normalisation and one source of its constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from semiseg.errors import SemisegError


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """B x C x H x W images (uint8 0..255, or float 0..1) -> float, normalised per band.

    uint8 is divided by 255 first, so callers can hand over the raw dataset tensors; floats are taken as [0, 1].
    """
    if x.dim() != 4:
        raise ValueError(f"normalize expects B x C x H x W images, got shape {tuple(x.shape)}")
    if x.shape[1] != len(mean) or len(mean) != len(std):
        raise SemisegError(
            f"images have {x.shape[1]} channels but the normalisation has {len(mean)} means and "
            f"{len(std)} stds; select as many bands as the encoder takes"
        )
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
