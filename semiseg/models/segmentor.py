"""Segmentor = encoder -> fuse -> (complementary dropout) -> DPT head, for one image or a bi-temporal pair.

The only thing that differs between segmentation and change detection is `fusion`: `identity` for one image,
`absdiff` (|f_A - f_B| per tapped layer, encoder shared and run once on both dates stacked in the batch) for two.
The model knows the structure of its input; tasks only say which fusion they need.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.errors import SemisegError
from semiseg.hub import is_hub_path, resolve_path
from semiseg.models.dpt import DPTHead
from semiseg.models.encoder import Encoder
from semiseg.models.specs import EncoderSpec, encoder_spec
from semiseg.task import FUSIONS


def complementary_masks(
    batch: int, channels: int, device: torch.device, keep_fraction: float = 0.5
) -> torch.Tensor:
    """Masks for complementary channel dropout over a batch of `batch` = 2 x B features (two stacked views).

    m1 in {0, 2} per (image, channel) with p = 0.5 and m2 = 2 - m1, so the two views of an image see disjoint
    channel halves (each rescaled by 2). For int(B * keep_fraction) random images both masks are 1 (no dropout).
    Returns a (2B, C, 1, 1) tensor to broadcast over space and over all tapped layers.
    """
    if batch % 2:
        raise ValueError(f"complementary dropout needs an even batch (two stacked views), got {batch}")
    half = batch // 2
    m1 = torch.randint(0, 2, (half, channels), device=device).float() * 2.0
    m2 = 2.0 - m1
    kept = torch.randperm(half, device=device)[: int(half * keep_fraction)]
    m1[kept] = 1.0
    m2[kept] = 1.0
    return torch.cat([m1, m2])[:, :, None, None]


class Segmentor(nn.Module):
    """`forward(*images, comp_drop=False)` -> logits at input resolution.

    Each image is B x C x H x W float, normalised with `self.mean` / `self.std`, H and W multiples of
    `self.patch_size`. With `comp_drop=True` the batch must be two stacked strong views (`cat(s1, s2)`), and
    complementary dropout is applied to the fused features.
    """

    def __init__(self, encoder_size: str | EncoderSpec, nclass: int, fusion: str = "identity") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise SemisegError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
        if nclass < 1:
            raise SemisegError(f"nclass must be positive, got {nclass}")
        spec = encoder_size if isinstance(encoder_size, EncoderSpec) else encoder_spec(encoder_size)
        self.spec = spec
        self.encoder_size = spec.name
        self.nclass = nclass
        self.fusion = fusion
        # The input this model expects; a loaded checkpoint may replace them with what it was trained with.
        self.mean, self.std = tuple(spec.mean), tuple(spec.std)
        self.encoder = Encoder(spec)
        self.head = DPTHead(spec.dim, nclass, spec.head)
        # Channels-last convolutions are what oneDNN and cuDNN run fastest: measured -19 % (bf16) / -9 % (fp32)
        # for a DINOv2-S forward+backward on CPU. Same maths; only the memory layout of the head's weights.
        self.head.to(memory_format=torch.channels_last)

    @property
    def num_images(self) -> int:
        return FUSIONS[self.fusion]

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    def features(self, *images: torch.Tensor) -> list[torch.Tensor]:
        if len(images) != self.num_images:
            raise SemisegError(
                f"this model takes {self.num_images} image(s) per sample ({self.fusion} fusion), got {len(images)}"
            )
        h, w = images[0].shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise SemisegError(
                f"input sides must be multiples of {p} (the encoder's patch size), got {h}x{w}; "
                f"resize or pad the images to {-(-h // p) * p}x{-(-w // p) * p}"
            )
        if self.fusion == "identity":
            return self.encoder(images[0])
        a, b = images
        if a.shape != b.shape:
            raise SemisegError(
                f"before and after images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        stacked = self.encoder(torch.cat([a, b]))
        return [(f_a - f_b).abs() for f_a, f_b in (f.chunk(2) for f in stacked)]

    def forward(self, *images: torch.Tensor, comp_drop: bool = False) -> torch.Tensor:
        feats = self.features(*images)
        if comp_drop:
            mask = complementary_masks(feats[0].shape[0], feats[0].shape[1], feats[0].device).to(
                feats[0].dtype
            )
            feats = [f * mask for f in feats]
        logits = self.head(feats)
        return F.interpolate(logits, size=images[0].shape[-2:], mode="bilinear", align_corners=True)

    def freeze_encoder(self) -> None:
        """Stop training the encoder (the official `lock_backbone`): its parameters stop requiring gradients, so
        backward never reaches them and `param_groups` leaves them out of the optimiser (no AdamW state)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder params, everything else): the two learning-rate groups of the official recipe."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc_ids]
        return enc, rest


def build_model(
    encoder: str | EncoderSpec,
    nclass: int,
    fusion: str = "identity",
    weights: str | None = None,
    rgb_bands: tuple[int, ...] | None = None,
) -> Segmentor:
    """A fresh model, with encoder weights from `weights` (a file, `hf://OWNER/REPO/PATH[@REV]`, `hub`, or None
    for random init).

    `encoder` is a name or a spec (`spec.with_input(mean, std)` for other bands); `rgb_bands` says which input
    bands are red, green, blue when RGB weights are adapted to them (see `semiseg.models.bands`).
    """
    model = Segmentor(encoder, nclass, fusion)
    weights = str(resolve_path(weights)) if is_hub_path(weights) else weights  # hf://... -> the cached file
    model.encoder.load_pretrained(weights, rgb_bands)
    return model
