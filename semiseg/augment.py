"""On-device photometric strong augmentation and CutMix (UniMatch V2 / FixMatch strong views).

Geometry (rescale, crop, flip) is done in the DataLoader workers and shared by every image of a sample
(`semiseg.data.geometry`); normalisation uses the model's mean/std (`semiseg.models.normalize`). What is left for the training device is what the official code does per strong
view:

1. photometric noise, drawn independently for every image *and every date* (a before/after pair gets two
   draws, because real acquisitions differ in lighting independently):
   ColorJitter(0.5, 0.5, 0.5, 0.25) with p=0.8, RandomGrayscale p=0.2 (0 for change detection), Gaussian blur
   p=0.5 with sigma ~ U(0.1, 2.0). Imagery with other than 3 bands (multispectral, SAR) has no hue or
   saturation and no grey conversion: it gets the brightness and contrast jitter (the same factors for all of
   an image's bands, p=0.8) and the blur;
2. a CutMix box per sample, shared by all dates of the sample (so the mixed pair stays pixel-aligned with the
   mixed change pseudo-label), whose partner is the same batch reversed (`flip(0)`).

Everything runs batched on the images' device through kornia. Randomness: kornia draws its parameters from
torch's global CPU generator (we never move the kornia modules to the accelerator, so the draws do not depend
on the device). Pass a `torch.Generator` to `StrongAugment`/`StrongViews`/`cutmix_boxes` to make the draws a
pure function of that generator instead; without one, `torch.manual_seed` at start-up makes a run
reproducible.

Known differences from the official PIL pipeline (all deliberate, all small):
- the official blur is PIL `GaussianBlur(radius=sigma)` (an extended box blur approximating a Gaussian of std
  sigma, edge pixels extended); we use a true Gaussian with a 13 x 13 kernel, i.e. +/- 6 px = 3 sigma at the
  largest sigma 2.0, with replicated borders;
- kornia draws one random order of the four ColorJitter adjustments per call (per date), torchvision one per
  image;
- we work on float images in [0, 1] instead of re-quantising to uint8 after every PIL operation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from semiseg.errors import SemisegError
from semiseg.models.normalize import normalize

# Covers +/- 3 sigma at the largest blur sigma (2.0): 2 * ceil(3 * 2.0) + 1.
BLUR_KERNEL_SIZE = 13


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


class StrongAugment(nn.Module):
    """Photometric strong augmentation of a tuple of float [0, 1] images, a separate draw per image and date.

    The kornia modules are kept out of the nn.Module tree on purpose: `.to(device)` would otherwise move their
    random samplers to the accelerator and make a seeded run's draws depend on the device.
    """

    def __init__(
        self,
        jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_p: float = 0.5,
        blur_kernel_size: int = BLUR_KERNEL_SIZE,
        bands: int = 3,
    ) -> None:
        super().__init__()
        if blur_kernel_size % 2 == 0:
            raise SemisegError(f"blur kernel size must be odd, got {blur_kernel_size}")
        if bands != 3:  # hue, saturation and grey are defined for RGB only (see the module docstring)
            jitter, grayscale_p = (jitter[0], jitter[1], 0.0, 0.0), 0.0
        ops: list[nn.Module] = [K.ColorJitter(*jitter, p=jitter_p)]
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            ops.append(
                K.RandomGaussianBlur(
                    (blur_kernel_size, blur_kernel_size), blur_sigma, border_type="replicate", p=blur_p
                )
            )
        self._ops: tuple[nn.Module, ...] = tuple(ops)
        self.grayscale_p = grayscale_p
        self.bands = bands

    def _augment_one(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.bands:
            raise SemisegError(
                f"strong photometric augmentation was set up for B x {self.bands} x H x W images, got "
                f"{tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError("StrongAugment expects float images in [0, 1]; divide uint8 images by 255 first")
        for op in self._ops:
            x = op(x)
        return x

    def forward(
        self, images: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, ...]:
        """Augment every date of `images` with its own random draw; returns float [0, 1] images."""
        if generator is None:
            return tuple(self._augment_one(x) for x in images)
        # Kornia only draws from the global CPU generator: run it on a private, seeded copy of that state.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(_seed_from(generator))
            return tuple(self._augment_one(x) for x in images)


def cutmix_boxes(
    batch: int,
    size: int | tuple[int, int],
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    max_tries: int = 1000,
) -> Tensor:
    """Draw one CutMix box per sample; returns a bool B x H x W mask (True inside the box).

    Per sample, as in the official code: no box with probability 1 - p; else the box area is U(area) * H * W,
    the aspect r ~ U(ratio), w = int(sqrt(area / r)), h = int(sqrt(area * r)), the top-left corner uniform
    over the image. The area is drawn once and (r, corner) are redrawn until the box lies fully inside, like
    the official rejection loop (so large, elongated boxes are rarer than the raw ranges suggest). After
    `max_tries` failed draws (only possible for extreme settings) the box is clamped inside instead of looping
    forever.
    """
    h_img, w_img = (size, size) if isinstance(size, int) else size
    if not 0.0 <= p <= 1.0:
        raise SemisegError(f"cutmix probability must be in [0, 1], got {p}")
    g = generator

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, device=g.device if g else "cpu"))

    def randint(n: int) -> int:
        return int(torch.randint(0, n, (), generator=g, device=g.device if g else "cpu"))

    boxes = torch.zeros(batch, 4, dtype=torch.long)  # y0, x0, h, w
    for i in range(batch):
        if uniform(0.0, 1.0) >= p:
            continue
        box_area = uniform(*area) * h_img * w_img
        for _ in range(max_tries):
            r = uniform(*ratio)
            bw, bh = int(math.sqrt(box_area / r)), int(math.sqrt(box_area * r))
            x0, y0 = randint(w_img), randint(h_img)
            if x0 + bw <= w_img and y0 + bh <= h_img:
                break
        else:
            bw, bh = min(bw, w_img), min(bh, h_img)
            x0, y0 = min(x0, w_img - bw), min(y0, h_img - bh)
        boxes[i] = torch.tensor([y0, x0, bh, bw])
    boxes = boxes.to(device if device is not None else "cpu")
    ys = torch.arange(h_img, device=boxes.device).view(1, -1, 1)
    xs = torch.arange(w_img, device=boxes.device).view(1, 1, -1)
    y0, x0, bh, bw = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    return (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)


def _mix(box: Tensor, x: Tensor, partner: Tensor) -> Tensor:
    if x.shape != partner.shape:
        raise ValueError(f"cannot CutMix tensors of shapes {tuple(x.shape)} and {tuple(partner.shape)}")
    if x.shape[0] != box.shape[0] or x.shape[-2:] != box.shape[-2:]:
        raise ValueError(f"CutMix box {tuple(box.shape)} does not fit tensor {tuple(x.shape)}")
    mask = box.to(device=x.device, dtype=torch.bool)
    if x.dim() == 4:
        mask = mask.unsqueeze(1)
    return torch.where(mask, partner, x)


def mix_with_reversed(boxes: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """CutMix each tensor (B x H x W maps or B x C x H x W images) with its own batch reversed, as officially.

    Use it with the same `boxes` for the strong images of every date and for the pseudo-label, confidence and
    ignore maps, so that pixel i of the mixed image and pixel i of every mixed target come from the same
    sample.
    """
    return tuple(_mix(boxes, t, t.flip(0)) for t in tensors)


@dataclass(frozen=True)
class StrongView:
    """One strong view: normalised float images (one per date), already CutMixed, and the box used."""

    images: tuple[Tensor, ...]
    box: Tensor


class StrongViews:
    """Build strong views from the weak uint8 crops: photometric noise, normalisation, CutMix with `flip(0)`.

    Call it twice for UniMatch V2 (s1, s2 with independent noise and boxes), once for FixMatch. The method
    then mixes its pseudo-label, confidence and ignore maps with `mix_with_reversed(view.box, ...)`.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        grayscale_p: float = 0.2,
        cutmix_p: float = 0.5,
        augment: StrongAugment | None = None,
    ) -> None:
        self.augment = (
            augment if augment is not None else StrongAugment(grayscale_p=grayscale_p, bands=len(mean))
        )
        self.cutmix_p = cutmix_p
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, weak_images: Sequence[Tensor], generator: torch.Generator | None = None) -> StrongView:
        first = weak_images[0]
        for x in weak_images[1:]:
            if x.shape != first.shape:
                raise ValueError(
                    f"dates of one batch differ in shape: {tuple(x.shape)} vs {tuple(first.shape)}"
                )
        float01 = tuple(x.float() / 255.0 if x.dtype == torch.uint8 else x.float() for x in weak_images)
        noisy = self.augment(float01, generator=generator)
        normed = tuple(normalize(x, self.mean, self.std) for x in noisy)
        b, _, h, w = first.shape
        box = cutmix_boxes(b, (h, w), p=self.cutmix_p, generator=generator, device=first.device)
        return StrongView(images=mix_with_reversed(box, *normed), box=box)
