"""What each encoder is: its family, size, patch, the input it expects and the DPT head that goes with it.

This is the one place that knows patch sizes (14 for DINOv2, 16 for DINOv3) and input normalisation (the mean/std
per band each encoder was pretrained with). Crop sizes, windows, padding, evaluation resizing, MaskMatch's blocks
and every normalisation ask a spec (or a model built from one) instead of hard-coding either.

Families:
- `dinov2`: the official UniMatch V2 encoders. Built by our `DinoV2` subclass of timm's ViT so that position
  embeddings are resampled exactly as the official code does (official checkpoints give identical logits).
- `dinov2_reg`: DINOv2 with four register tokens (timm `vit_*_patch14_reg4_dinov2`), built by timm as it is.
- `dinov3`: DINOv3 (timm `vit_*_patch16_dinov3`: rotary position embeddings, four registers, patch 16). The
  `sat` variant was pretrained on satellite imagery (SAT-493M) and expects its own mean/std.

Register and class tokens never reach the head: timm's `forward_intermediates` returns only the patch tokens.

Plain data, no torch: configuration checks read it without loading the deep-learning stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from semiseg.errors import SemisegError, did_you_mean

# DINOv2 and DINOv3 (web) were pretrained on RGB images normalised with the ImageNet statistics.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# DINOv3 SAT-493M (Maxar RGB satellite imagery) uses these instead (timm's pretrained config, Meta's release).
SAT493M_MEAN: tuple[float, float, float] = (0.430, 0.411, 0.296)
SAT493M_STD: tuple[float, float, float] = (0.213, 0.156, 0.143)
# Licences of the pretrained weights; a model fine-tuned from them carries the notice into its checkpoint.
DINOV2_LICENSE = "Apache-2.0 (DINOv2 weights, Meta)"
DINOV3_LICENSE = (
    "DINOv3 License (Meta; https://ai.meta.com/resources/models-and-libraries/dinov3-license/): "
    "read its terms before redistributing weights or outputs"
)
FAMILIES = ("dinov2", "dinov2_reg", "dinov3")
MAX_BANDS = 16


@dataclass(frozen=True)
class HeadSpec:
    """DPT head widths: `features` inside the fusion blocks, `out_channels` of the four projected taps."""

    features: int
    out_channels: tuple[int, int, int, int]


@dataclass(frozen=True)
class EncoderSpec:
    """A ViT encoder: width, depth, heads, the four tapped blocks (0-based, output after the block), how to
    build it, where its pretrained weights live on the timm hub, the head it pairs with, and the input it expects.

    `arch` is the timm model that builds the `dinov2_reg` / `dinov3` families; `arch_overrides` shrink it for
    our tiny test encoders. `pretrain_grid` is the token grid DINOv2's position embeddings were trained at
    (518 px / 14 = 37); they are resampled for other input sizes (DINOv3's rotary embeddings need no grid).
    `mean`/`std` hold one value per input band: a spec for N-band imagery is the same encoder `with_input` other
    statistics (`bands` follows from them).
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
    family: str = "dinov2"
    arch: str | None = None
    arch_overrides: tuple[tuple[str, object], ...] = ()
    summary: str = ""

    @property
    def bands(self) -> int:
        """Input channels: one mean/std pair per band."""
        return len(self.mean)

    def with_input(self, mean: tuple[float, ...], std: tuple[float, ...]) -> EncoderSpec:
        """The same encoder fed with other per-band statistics (and so, possibly, another band count)."""
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != len(std) or not 1 <= len(mean) <= MAX_BANDS:
            raise SemisegError(
                f"the input needs one mean and one std per band (1 to {MAX_BANDS} bands), got {len(mean)} means "
                f"and {len(std)} stds"
            )
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise SemisegError(
                f"every band's mean must be a number and every std a positive number, got {list(mean)} and {list(std)}"
            )
        return replace(self, mean=mean, std=std)

    def check_side(self, side: int, what: str) -> None:
        """Refuse a size the encoder cannot take, proposing the nearest one that works."""
        p = self.patch_size
        if side <= 0 or side % p:
            nearest = sorted({max(p, side // p * p), max(p, (side // p + 1) * p)})
            raise SemisegError(
                f"{what} must be a positive multiple of {p} (the {self.name} encoder's patch size), got {side}; "
                f"use {' or '.join(map(str, nearest))}"
            )


def _heads() -> dict[int, HeadSpec]:
    """The official DPT widths per encoder width (shared by every family of that width)."""
    return {
        384: HeadSpec(64, (48, 96, 192, 384)),
        768: HeadSpec(128, (96, 192, 384, 768)),
        1024: HeadSpec(256, (256, 512, 1024, 1024)),
        1536: HeadSpec(384, (1536, 1536, 1536, 1536)),
    }


_HEAD = _heads()
# Tapped blocks per depth: the official UniMatch V2 choice for DINOv2, kept for the other families of that depth
# (DINOv3's own dense heads tap the same evenly spaced blocks).
_TAPS = {4: (0, 1, 2, 3), 12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}
_TINY = dict(dim=48, depth=4, heads=3, taps=_TAPS[4], head=HeadSpec(16, (12, 24, 48, 48)))
_TINY_OVERRIDES = (("embed_dim", 48), ("depth", 4), ("num_heads", 3))
_LETTER = {"small": "S", "base": "B", "large": "L", "giant": "g"}
_WIDTH = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "giant": (1536, 40, 24)}


def _dinov2(size: str, registers: bool) -> EncoderSpec:
    dim, depth, heads = _WIDTH[size]
    suffix = "_reg4" if registers else ""
    arch = f"vit_{size}_patch14{suffix}_dinov2"
    return EncoderSpec(
        f"{size}_reg" if registers else size, dim, depth, heads, _TAPS[depth], _HEAD[dim],
        hub_name=f"{arch}.lvd142m", swiglu=size == "giant", weights_license=DINOV2_LICENSE,
        family="dinov2_reg" if registers else "dinov2", arch=arch if registers else None,
        summary=f"DINOv2 ViT-{_LETTER[size]}/14{' + 4 registers' if registers else ''} (LVD-142M)",
    )  # fmt: skip


def _dinov3(size: str, dim: int, heads: int, depth: int, sat: bool = False) -> EncoderSpec:
    arch = f"vit_{size}_patch16_dinov3"
    label = {"small": "S", "small_plus": "S+", "base": "B", "large": "L"}[size]
    return EncoderSpec(
        f"dinov3_{size}{'_sat' if sat else ''}", dim, depth, heads, _TAPS[depth], _HEAD[dim],
        hub_name=f"{arch}.{'sat493m' if sat else 'lvd1689m'}", weights_license=DINOV3_LICENSE, patch_size=16,
        pretrain_grid=16, mean=SAT493M_MEAN if sat else IMAGENET_MEAN, std=SAT493M_STD if sat else IMAGENET_STD,
        family="dinov3", arch=arch,
        summary=f"DINOv3 ViT-{label}/16 ({'SAT-493M satellite' if sat else 'LVD-1689M web'} images)",
    )  # fmt: skip


ENCODER_SPECS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        # The `tiny_*` encoders are ours: each family's code path at a size that trains in seconds on a CPU, for
        # tests and demos. They have no pretrained weights.
        EncoderSpec("tiny", **_TINY, summary="ours: DINOv2 layout, width 48, 4 blocks (tests, demos)"),
        EncoderSpec("tiny_reg", **_TINY, family="dinov2_reg", arch="vit_small_patch14_reg4_dinov2",
                    arch_overrides=_TINY_OVERRIDES, summary="ours: DINOv2 + registers layout, tiny"),
        EncoderSpec("tiny_dinov3", **_TINY, family="dinov3", arch="vit_small_patch16_dinov3", patch_size=16,
                    pretrain_grid=16, arch_overrides=_TINY_OVERRIDES, summary="ours: DINOv3 layout, tiny"),
        *(_dinov2(size, registers) for registers in (False, True) for size in _WIDTH),
        _dinov3("small", 384, 6, 12),
        _dinov3("small_plus", 384, 6, 12),
        _dinov3("base", 768, 12, 12),
        _dinov3("large", 1024, 16, 24),
        _dinov3("large", 1024, 16, 24, sat=True),
    )
}  # fmt: skip

# timm names (with or without the pretrained tag) lead to our entry, so `model.encoder` accepts either.
_ALIASES: dict[str, str] = {}
for _spec in ENCODER_SPECS.values():
    if _spec.hub_name:
        _ALIASES[_spec.hub_name] = _spec.name
        _ALIASES.setdefault(_spec.hub_name.split(".")[0], _spec.name)


def encoder_names(aliases: bool = False) -> list[str]:
    """Our encoder names (and, with `aliases`, the timm names that select them)."""
    return list(ENCODER_SPECS) + (list(_ALIASES) if aliases else [])


def is_encoder_name(name: str) -> bool:
    return name in ENCODER_SPECS or name in _ALIASES


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of an encoder by our name (`base`, `dinov3_large_sat`...) or by its timm name."""
    if name in ENCODER_SPECS:
        return ENCODER_SPECS[name]
    if name in _ALIASES:
        return ENCODER_SPECS[_ALIASES[name]]
    raise SemisegError(
        f"unknown encoder {name!r}{did_you_mean(name, encoder_names(aliases=True))}; choose one of "
        f"{', '.join(ENCODER_SPECS)} (or a timm name such as vit_large_patch16_dinov3.sat493m)"
    )
