"""Feed an encoder pretrained on RGB with C input bands (1..16): adapt its patch embedding.

The rule (`adapt_patch_embedding`):
- the filters of the bands that *are* red, green and blue (`rgb_bands`, 1-based positions in the input) are the
  pretrained RGB filters, unchanged: the model starts by seeing the visible bands exactly as it was pretrained;
- every other band starts from the mean RGB filter scaled by 3/C. The encoder's learning rate is small (the
  official recipe trains it 40x slower than the head), so a band started from zero would stay almost unused;
  starting from the mean filter makes each extra band contribute from the first step, and the 3/C factor keeps
  their sum at most one RGB filter's worth.
- without RGB bands (a single panchromatic or SAR band, two SAR polarisations...) every band is mean·3/C, so
  an image whose C bands all hold the same grey value x embeds exactly as the pretrained model embeds the grey
  RGB image (x, x, x).

Weights pretrained on C = 3 bands given to a 3-band RGB model are returned unchanged (same object).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from semiseg.errors import SemisegError


def default_rgb_bands(bands: int) -> tuple[int, ...]:
    """Which input bands are red, green, blue when the config does not say: the first three, when there are."""
    return (1, 2, 3) if bands >= 3 else ()


def check_rgb_bands(rgb_bands: Sequence[int], bands: int) -> tuple[int, ...]:
    rgb = tuple(int(b) for b in rgb_bands)
    if rgb and (len(rgb) != 3 or len(set(rgb)) != 3 or not all(1 <= b <= bands for b in rgb)):
        raise SemisegError(
            f"model.rgb_bands must be three different input band positions (red, green, blue) in 1..{bands}, "
            f"or [] when no band is visible light; got {list(rgb)}"
        )
    return rgb


def adapt_patch_embedding(weight: torch.Tensor, bands: int, rgb_bands: Sequence[int] | None) -> torch.Tensor:
    """(D, 3, p, p) RGB filters -> (D, bands, p, p) by the rule in the module docstring."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise SemisegError(
            f"pretrained patch embedding has {weight.shape[1] if weight.dim() == 4 else '?'} input bands; "
            "only RGB (3-band) weights can be adapted to other bands"
        )
    rgb = check_rgb_bands(default_rgb_bands(bands) if rgb_bands is None else rgb_bands, bands)
    if bands == 3 and rgb == (1, 2, 3):
        return weight
    mean_filter = weight.mean(dim=1, keepdim=True) * (3.0 / bands)
    out = mean_filter.repeat(1, bands, 1, 1)
    for channel, band in enumerate(rgb):
        out[:, band - 1] = weight[:, channel]
    return out.contiguous()
