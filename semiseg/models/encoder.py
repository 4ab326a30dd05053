"""The encoder: a ViT from timm returning four tapped layers, for every family in `semiseg.models.specs`.

DINOv2 (the official UniMatch V2 encoders) is built by our `DinoV2` subclass. Why a subclass rather than
`timm.create_model(..., dynamic_img_size=True)`: timm resamples the 37x37 position embeddings with an antialiased
bicubic resize to the exact token grid, whereas the official DINOv2 code (and so every UniMatch V2 checkpoint) uses
a plain bicubic resize driven by a scale factor with a +0.1 offset. The two differ enough to move logits, so we
override that one method and keep everything else timm's (blocks, SDPA attention, weight layout). DINOv2 with
registers and DINOv3 are built by timm as they are (`timm.create_model`): no official checkpoint depends on their
details, and timm's resampling matches their own code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from semiseg.errors import SemisegError
from semiseg.models.bands import adapt_patch_embedding
from semiseg.models.specs import EncoderSpec, encoder_spec


def resample_pos_embed_official(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resample (1, 1 + 37*37, C) position embeddings to a grid_h x grid_w token grid, as official DINOv2 does.

    Bicubic, no antialias, driven by `scale_factor = (grid + 0.1) / 37` (not by the output size): the sampling
    positions depend on the scale factor, which is why this must not be replaced by a size-driven resize.
    """
    n = pos_embed.shape[1] - 1
    side = int(round(n**0.5))
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    dtype = pos_embed.dtype
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos,
        scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
        mode="bicubic",
        antialias=False,
    )
    if patch_pos.shape[-2:] != (
        grid_h,
        grid_w,
    ):  # cannot happen for integer grids; guards against float drift
        raise RuntimeError(
            f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}"
        )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)


class DinoV2(VisionTransformer):
    """timm ViT whose `_pos_embed` follows the official DINOv2 resampling (see module docstring)."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = x.shape  # dynamic_img_size=True: patch_embed returns NHWC
        pos = resample_pos_embed_official(self.pos_embed, gh, gw)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, gh * gw, c)], dim=1)
        return self.pos_drop(x + pos.to(x.dtype))


class Encoder(nn.Module):
    """A ViT returning its four tapped layers, final norm applied, class and register tokens dropped, as
    B x C x H/p x W/p maps. `self.vit` is the timm model (its state-dict keys are timm's)."""

    def __init__(self, size: str | EncoderSpec) -> None:
        super().__init__()
        spec = size if isinstance(size, EncoderSpec) else encoder_spec(size)
        self.size = spec.name
        self.spec = spec
        self.vit = _build_vit(spec)
        self.embed_dim = spec.dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.vit.forward_intermediates(
            x,
            indices=list(self.spec.taps),
            norm=True,
            output_fmt="NCHW",
            intermediates_only=True,
            stop_early=True,
        )

    # ---- weights -------------------------------------------------------------------------------------------
    def load_pretrained(self, weights: str | None, rgb_bands: tuple[int, ...] | None = None) -> None:
        """Load encoder weights from a local file, the timm hub, or nothing (random init).

        `weights`: None (random init); a path to an official file (`dinov2_vit*14_pretrain.pth`,
        `dinov2_vit*14_reg4_pretrain.pth`, `dinov3_vit*16_pretrain_*.pth`), a timm state dict or a safetensors
        file; or `hub` (this encoder's timm hub name) / any `timm:<name>` (from the Hugging Face cache, else
        downloaded once). RGB weights are adapted to the model's bands (`semiseg.models.bands`).
        """
        if weights in (None, "", "none", "random"):
            return
        if weights == "hub" or str(weights).startswith("timm:"):
            name = self.spec.hub_name if weights == "hub" else str(weights)[5:]
            if name is None:
                raise SemisegError(f"encoder {self.size!r} has no pretrained weights on the hub")
            state = _hub_state_dict(name)
        else:
            state = _to_timm_layout(read_state_dict(Path(weights)), self.vit, self.spec)
        key = "patch_embed.proj.weight"
        reordered = rgb_bands is not None and tuple(rgb_bands) != (1, 2, 3)
        if key in state and (state[key].shape[1] != self.spec.bands or reordered):
            state = {**state, key: adapt_patch_embedding(state[key], self.spec.bands, rgb_bands)}
        check_keys(state, self.vit.state_dict(), what="encoder")
        self.vit.load_state_dict(state, strict=True)


def _build_vit(spec: EncoderSpec) -> nn.Module:
    """The timm model of `spec`'s family, at `spec.bands` input bands, random weights."""
    if spec.family == "dinov2":
        extra: dict = {}
        if spec.swiglu:
            # DINOv2-g's SwiGLU hidden width is (int(4 * dim * 2 / 3) + 7) // 8 * 8 = 4096 for dim 1536. timm's
            # packed SwiGLU takes the two gates as one fc1 of twice that width, hence mlp_ratio = 2 * 2.66667.
            extra = dict(mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
        return DinoV2(
            img_size=spec.pretrain_grid * spec.patch_size,
            patch_size=spec.patch_size,
            in_chans=spec.bands,
            embed_dim=spec.dim,
            depth=spec.depth,
            num_heads=spec.heads,
            init_values=1e-5,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
            **extra,
        )
    import timm

    size = {"img_size": spec.pretrain_grid * spec.patch_size} if spec.family == "dinov2_reg" else {}
    return timm.create_model(
        spec.arch, pretrained=False, in_chans=spec.bands, num_classes=0, global_pool="", dynamic_img_size=True,
        **size, **dict(spec.arch_overrides),
    )  # fmt: skip


def _to_timm_layout(
    state: dict[str, torch.Tensor], vit: nn.Module, spec: EncoderSpec
) -> dict[str, torch.Tensor]:
    """A weights file in timm's layout, whichever layout it came in (official DINOv2 / DINOv3 or timm's)."""
    if spec.family == "dinov2":
        return convert_official_dinov2(state, vit)
    if not any(k in state for k in ("register_tokens", "storage_tokens", "mask_token")):
        return state  # already timm's (check_keys names what does not fit)
    marker = {"dinov2_reg": "register_tokens", "dinov3": "storage_tokens"}[spec.family]
    if marker not in state:
        found = (
            "DINOv3"
            if "storage_tokens" in state
            else "DINOv2 with registers"
            if "register_tokens" in state
            else "DINOv2"
        )
        raise SemisegError(
            f"the weights file holds a {found} encoder, but model.encoder={spec.name} is {spec.family}"
        )
    return _timm_converted(state, vit, spec)


def _timm_converted(
    state: dict[str, torch.Tensor], vit: nn.Module, spec: EncoderSpec
) -> dict[str, torch.Tensor]:
    """Official DINOv2-reg / DINOv3 keys renamed by timm's own converters (they leave the patch embedding's band
    count alone: the RGB filters are adapted to the model's bands afterwards). timm's DINOv3 converter drops the
    attention `qkv.bias` of the models built without one, which is only right when the file's biases are zero:
    checked here. Its notes on stdout are silenced (they would break commands that print JSON)."""
    import contextlib
    import io

    import timm.models.eva as eva
    import timm.models.vision_transformer as vit_module

    if spec.family == "dinov3":
        biased = [k for k, v in state.items() if k.endswith("qkv.bias") and v.abs().max() > 0]
        if biased:
            raise SemisegError(
                f"this DINOv3 file has non-zero attention biases ({biased[0]}): it is a `_qkvb` variant, which "
                "this toolkit does not build; use the timm hub weights of the same model instead"
            )
    convert = vit_module.checkpoint_filter_fn if spec.family == "dinov2_reg" else eva.checkpoint_filter_fn
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return convert(state, vit)
    except (RuntimeError, KeyError, ValueError) as err:
        raise SemisegError(
            f"the weights file does not fit {spec.name} ({type(err).__name__}: {err})"
        ) from None


def _hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The weights timm publishes as `name`: from the local Hugging Face cache, else downloaded once.

    Offline, the hub client retries for tens of seconds before giving up; when the weights are not cached and the
    hub cannot be reached in a few seconds we stop at once and say how to get the file instead.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if not _hub_cached(cfg) and not _hub_reachable():
        raise SemisegError(f"model.weights=hub needs {name!r}, which is not cached and the hub cannot be reached "
                           f"(offline?): {_weights_hint(cfg)}")  # fmt: skip
    try:
        hub_model = timm.create_model(name, pretrained=True)
    except Exception as err:  # network errors come in many types; the message is what matters to the user
        raise SemisegError(
            f"could not fetch {name!r} from the hub ({type(err).__name__}): {_weights_hint(cfg)}"
        ) from None
    return hub_model.state_dict()


def _weights_hint(cfg) -> str:
    """Which file to fetch on a machine with network, and the two places it can go."""
    url = getattr(cfg, "url", None)
    repo = getattr(cfg, "hf_hub_id", None)
    if url:
        source = f"download {url}"
    elif repo:
        source = f"download https://huggingface.co/{repo}/resolve/main/model.safetensors"
    else:
        source = "download the encoder's official weights"
    cache = (
        f" (or fill the Hugging Face cache there with `hf download {repo}` and copy it here)" if repo else ""
    )
    return (
        f"{source} on a machine with network and pass its path as model.weights{cache}; model.weights=null "
        "trains from random weights"
    )


def _hub_cached(cfg) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return False
    return any(
        isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub within `timeout` seconds (never when the hub client is set offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a tensor dict from .pth/.pt (weights_only) or .safetensors, with user-facing errors."""
    if not path.is_file():
        raise SemisegError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise SemisegError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SemisegError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise SemisegError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def convert_official_dinov2(state: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """Map official DINOv2 keys onto timm's: drop `mask_token`, SwiGLU `w12`/`w3` become `fc1`/`fc2`.

    timm's own DINOv2 checkpoint filter does the same renaming, but it also resamples `pos_embed` (with
    antialiasing) whenever shapes differ, which would silently change a mismatched file instead of refusing it.

    The caller checks the key sets (after adapting the bands), so a wrong file fails naming what is missing.
    """
    out = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    return out


def check_keys(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """Raise a SemisegError naming missing/unexpected keys and shape mismatches (first few of each)."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(got[k].shape)} vs {tuple(want[k].shape)})"
        )
    if problems:
        raise SemisegError(f"{what} weights do not fit the model: " + "; ".join(problems))
