"""DINOv2 encoder: timm's ViT with the official position-embedding resampling and four tapped layers.

Why a subclass rather than `timm.create_model(..., dynamic_img_size=True)`: timm resamples the 37x37 position
embeddings with an antialiased bicubic resize to the exact token grid, whereas the official DINOv2 code (and so every
UniMatch V2 checkpoint) uses a plain bicubic resize driven by a scale factor with a +0.1 offset. The two differ
enough to move logits, so we override that one method and keep everything else timm's (blocks, SDPA attention,
weight layout).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from semiseg.errors import SemisegError
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
    """DINOv2 returning its four tapped layers, final-norm applied, CLS dropped, as B x C x H/p x W/p maps."""

    def __init__(self, size: str | EncoderSpec) -> None:
        super().__init__()
        spec = size if isinstance(size, EncoderSpec) else encoder_spec(size)
        self.size = spec.name
        self.spec = spec
        extra: dict = {}
        if spec.swiglu:
            # DINOv2-g's SwiGLU hidden width is (int(4 * dim * 2 / 3) + 7) // 8 * 8 = 4096 for dim 1536. timm's
            # packed SwiGLU takes the two gates as one fc1 of twice that width, hence mlp_ratio = 2 * 2.66667.
            extra = dict(mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
        self.vit = DinoV2(
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
    def load_pretrained(self, weights: str | None) -> None:
        """Load encoder weights from a local file (official DINOv2 or timm layout), a timm hub name, or nothing.

        `weights`: None (random init), a path to `dinov2_vit*14_pretrain.pth` / a timm state dict / safetensors,
        or `hub` (the timm hub name of this size) / any `timm:<name>` string (needs network the first time).
        """
        if weights in (None, "", "none", "random"):
            return
        if weights == "hub" or str(weights).startswith("timm:"):
            name = self.spec.hub_name if weights == "hub" else str(weights)[5:]
            if name is None:
                raise SemisegError(f"encoder size {self.size!r} has no pretrained weights on the hub")
            state = _hub_state_dict(name)
        else:
            state = read_state_dict(Path(weights))
        self.vit.load_state_dict(convert_official_dinov2(state, self.vit), strict=True)


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
    url = getattr(cfg, "url", None)
    source = f"download {url}" if url else "download the encoder's official weights"
    return f"{source} on a machine with network and pass its path as model.weights (or model.weights=null)"


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

    Also checks the key sets so a wrong file fails with the names of what is missing or unexpected.
    """
    out = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    check_keys(out, vit.state_dict(), what="encoder")
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
