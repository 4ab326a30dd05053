"""What each encoder is: its size, its patch, the input it expects and the DPT head that goes with it.

This is the one place that knows the patch size (14 for DINOv2) and the input normalisation (ImageNet mean/std
per band, what DINOv2 was pretrained with). Crop sizes, windows, padding, evaluation resizing, MaskMatch's
blocks and every normalisation ask a spec (or a model built from one) instead of hard-coding either, so an
encoder with another patch (DINOv3: 16) or other bands (multispectral) is one new entry here.

Plain data, no torch: configuration checks read it without loading the deep-learning stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from semiseg.errors import SemisegError

# DINOv2 was pretrained on RGB images normalised with the ImageNet statistics, so its inputs must be too.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Meta released the DINOv2 weights under the Apache License 2.0; models fine-tuned from them carry that notice.
DINOV2_LICENSE = "Apache-2.0 (DINOv2 weights, Meta)"


@dataclass(frozen=True)
class HeadSpec:
    """DPT head widths: `features` inside the fusion blocks, `out_channels` of the four projected taps."""

    features: int
    out_channels: tuple[int, int, int, int]


@dataclass(frozen=True)
class EncoderSpec:
    """A ViT encoder: width, depth, heads, the four tapped blocks (0-based, output after the block), where
    its pretrained weights live on the timm hub, the head it pairs with, and the input it expects.

    `pretrain_grid` is the token grid the position embeddings were trained at (518 px / 14 = 37 for DINOv2);
    they are resampled for other input sizes.
    """

    name: str
    dim: int
    depth: int
    heads: int
    taps: tuple[int, int, int, int]
    head: HeadSpec
    hub_name: str | None = None
    swiglu: bool = False
    weights_license: str | None = None  # of the pretrained weights `hub_name` names
    patch_size: int = 14
    pretrain_grid: int = 37
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def bands(self) -> int:
        """Input channels: one mean/std pair per band."""
        return len(self.mean)

    def check_side(self, side: int, what: str) -> None:
        """Refuse a size the encoder cannot take, proposing the nearest one that works."""
        p = self.patch_size
        if side <= 0 or side % p:
            nearest = sorted({max(p, side // p * p), max(p, (side // p + 1) * p)})
            raise SemisegError(
                f"{what} must be a positive multiple of {p} (the {self.name} encoder's patch size), got {side}; "
                f"use {' or '.join(map(str, nearest))}"
            )


ENCODER_SPECS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        # `tiny` is ours: the same code path at a size that trains in seconds on a CPU, for tests and demos.
        EncoderSpec("tiny", 48, 4, 3, (0, 1, 2, 3), HeadSpec(16, (12, 24, 48, 48))),
        EncoderSpec(
            "small", 384, 12, 6, (2, 5, 8, 11), HeadSpec(64, (48, 96, 192, 384)), "vit_small_patch14_dinov2.lvd142m",
            weights_license=DINOV2_LICENSE,
        ),
        EncoderSpec(
            "base", 768, 12, 12, (2, 5, 8, 11), HeadSpec(128, (96, 192, 384, 768)), "vit_base_patch14_dinov2.lvd142m",
            weights_license=DINOV2_LICENSE,
        ),
        EncoderSpec(
            "large", 1024, 24, 16, (4, 11, 17, 23), HeadSpec(256, (256, 512, 1024, 1024)),
            "vit_large_patch14_dinov2.lvd142m", weights_license=DINOV2_LICENSE,
        ),
        EncoderSpec(
            "giant", 1536, 40, 24, (9, 19, 29, 39), HeadSpec(384, (1536, 1536, 1536, 1536)),
            "vit_giant_patch14_dinov2.lvd142m", swiglu=True, weights_license=DINOV2_LICENSE,
        ),
    )
}  # fmt: skip


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODER_SPECS:
        raise SemisegError(f"unknown encoder size {name!r}: choose one of {', '.join(ENCODER_SPECS)}")
    return ENCODER_SPECS[name]
