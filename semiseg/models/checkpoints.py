"""Load any checkpoint the toolkit knows, inferring the architecture from the weights; export for release.

Formats:
- ours, training (`latest.pt` / `best.pt`): {"format": "semiseg-checkpoint", "model", "ema", "config", "meta", ...};
- ours, export: `<name>.safetensors` + `<name>.yaml` (encoder, nclass, task, fusion, normalisation, classes);
- official UniMatch V2 (segmentation and remote-sensing): {"model", "model_ema", ...} with `module.` prefixes,
  `backbone.*` DINOv2 keys and `head.*` DPT keys — or such a state dict on its own.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from semiseg.errors import SemisegError
from semiseg.hub import resolve_path
from semiseg.io import atomic_paths
from semiseg.models.encoder import check_keys, read_state_dict
from semiseg.models.segmentor import Segmentor
from semiseg.models.specs import ENCODER_SPECS, EncoderSpec, encoder_spec, is_encoder_name
from semiseg.task import get_task, infer_task

# Marks our training checkpoints (`latest.pt`, `best.pt`); the name predates the two-task layout and is kept so
# every checkpoint ever written still loads. FORMAT_VERSION counts changes of what they hold (0.1 wrote none: 1).
CHECKPOINT_FORMAT = "semiseg-checkpoint"
FORMAT_VERSION = 2
SAFETENSORS_META_KEY = "semicd"

# Our DPT head names each part for what it does; the official layout keeps DPT's original names. One table,
# read in both directions: (our prefix, official prefix, official index minus ours).
_HEAD_KEYS = [
    ("head.project.{}.", "head.projects.{}.", 0),
    ("head.resize.{}.", "head.resize_layers.{}.", 0),
    ("head.reduce.{}.", "head.scratch.layer{}_rn.", 1),
    ("head.fusion.{}.skip_unit.", "head.scratch.refinenet{}.resConfUnit1.", 1),
    ("head.fusion.{}.unit.", "head.scratch.refinenet{}.resConfUnit2.", 1),
    ("head.fusion.{}.out_conv.", "head.scratch.refinenet{}.out_conv.", 1),
    ("head.output.{}.", "head.scratch.output_conv.{}.", 0),
]


def _rename_head(key: str, to_official: bool) -> str:
    for ours, official, shift in _HEAD_KEYS:
        src, dst = (ours, official) if to_official else (official, ours)
        match = re.match(re.escape(src).replace(re.escape("{}"), r"(\d+)"), key)
        if match:
            index = int(match[1]) + (shift if to_official else -shift)
            return dst.format(index) + key[match.end() :]
    return key


def to_official_state_dict(model: Segmentor) -> dict[str, torch.Tensor]:
    """Our weights in the official UniMatch V2 layout (`backbone.*`, `head.scratch.*`), without `module.`."""
    if model.spec.family != "dinov2":
        raise SemisegError(
            f"the official UniMatch V2 layout holds DINOv2 encoders only; {model.encoder_size} is {model.spec.family}"
        )
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.vit."):
            key = "backbone." + key[len("encoder.vit.") :]
            if model.encoder.spec.swiglu:
                key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        else:
            key = _rename_head(key, to_official=True)
        out[key] = value
    return out


def from_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official UniMatch V2 weights (with or without `module.`) in our layout."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("backbone."):
            if key == "backbone.mask_token":
                continue
            key = "encoder.vit." + key[len("backbone.") :]
            key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        elif key.startswith("head.scratch.refinenet4.resConfUnit1."):
            continue  # unused by the official forward: the deepest fusion step has no skip input
        else:
            key = _rename_head(key, to_official=False)
        out[key] = value
    return out


def _family_of(state: dict[str, torch.Tensor]) -> str:
    """Which encoder family wrote these weights: DINOv3 has no absolute position embedding, registers add
    `reg_token`."""
    if "encoder.vit.pos_embed" not in state:
        return "dinov3"
    return "dinov2_reg" if "encoder.vit.reg_token" in state else "dinov2"


def infer_architecture(
    state: dict[str, torch.Tensor], name: str | None = None
) -> tuple[EncoderSpec, int, int]:
    """(encoder spec, class count, input bands) from weights in our layout.

    `name` is the encoder the checkpoint records (ours do); official checkpoints record none, and are matched by
    family, width, depth and patch size (several DINOv3 entries share those: the first, i.e. the web-image one,
    is taken; the normalisation recorded with the weights, if any, decides the input anyway).
    """
    patch = state.get("encoder.vit.patch_embed.proj.weight")
    if patch is None or "head.output.2.weight" not in state:
        raise SemisegError("weights hold no ViT encoder + DPT head (no patch embedding / output conv found)")
    dim, bands, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.vit\.blocks\.(\d+)\.", k)))
    nclass = int(state["head.output.2.weight"].shape[0])
    family = _family_of(state)
    candidates = [encoder_spec(name)] if name and is_encoder_name(name) else list(ENCODER_SPECS.values())
    for spec in candidates:
        if (spec.family, spec.dim, spec.depth, spec.patch_size) == (family, dim, depth, patch_size):
            return spec, nclass, bands
    raise SemisegError(
        f"no known encoder{f' named {name!r}' if name else ''} is a {family} ViT of width {dim}, {depth} blocks "
        f"and patch {patch_size}"
    )


def _load_weights(model: Segmentor, state: dict[str, torch.Tensor], source: str) -> None:
    check_keys(state, model.state_dict(), what=f"checkpoint {source}")
    model.load_state_dict(state, strict=True)


def _read_checkpoint_file(path: Path) -> Any:
    if not path.is_file():
        raise SemisegError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise SemisegError(f"{path} is not a readable checkpoint: the file is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SemisegError(
            f"{path} is not a readable checkpoint: not a PyTorch file, or it stores Python objects beyond tensors "
            "and plain values, which safe (weights_only) loading refuses"
        ) from None
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:120]  # some errors (an empty file) have none
        raise SemisegError(
            f"{path} is not a readable checkpoint ({type(err).__name__}{': ' + detail if detail else ''})"
        ) from None


def _weights_and_meta(path: Path, which: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The chosen weights (in our layout) and whatever metadata the file records, for every known format."""
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".yaml")
        if sidecar.is_file():
            return read_state_dict(path), yaml.safe_load(sidecar.read_text()) or {}
        embedded = _safetensors_metadata(path)
        if embedded is None:
            raise SemisegError(
                f"{path} records no metadata and its {sidecar.name} is missing: put it beside the file"
            )
        return read_state_dict(path), embedded
    obj = _read_checkpoint_file(path)
    if not isinstance(obj, dict):
        raise SemisegError(f"{path} is not a checkpoint (found {type(obj).__name__})")
    if obj.get("format") == CHECKPOINT_FORMAT:
        meta = dict(obj.get("meta", {}))
        meta.setdefault("config", obj.get("config"))  # how it was trained: the defaults of eval and predict
        if which == "auto":
            which = "model" if meta.get("best_source") == "student" else "ema"
        return obj["ema" if which == "ema" and obj.get("ema") is not None else "model"], meta
    if "model" in obj or "model_ema" in obj:
        key = "model_ema" if which in ("ema", "auto") and "model_ema" in obj else "model"
        return from_official_state_dict(obj[key]), {}
    if any(k.removeprefix("module.").startswith("backbone.") for k in obj):
        return from_official_state_dict(obj), {}
    if any(k.startswith("encoder.vit.") for k in obj):
        return obj, {}
    raise SemisegError(f"{path} holds no model weights this toolkit knows (keys: {', '.join(list(obj)[:4])})")


def load_model(path: str | os.PathLike, task: str | None = None, which: str = "auto") -> Segmentor:
    """Load any checkpoint the toolkit knows and return a ready (eval-mode, CPU) model.

    `path`: a local file or `hf://OWNER/REPO/PATH[@REVISION]` on the Hugging Face hub (`semiseg.hub`).
    `task` (a task name such as `segmentation` or `change_detection`) is checked against the checkpoint when
    it records one, and inferred from the weights otherwise (official checkpoints do not record it; see
    `semiseg.task.infer_task`). `which` picks `ema` (the teacher) or `model` (the student) when the file holds
    both; `auto` takes the one that scored best in our checkpoints, and the EMA in official ones.
    The returned model carries `model.meta`: task, nclass, encoder, patch size, mean, std, classes, source hash;
    `model.mean` / `model.std` are the normalisation it was trained with.
    """
    path = resolve_path(path)  # a local file, or hf://OWNER/REPO/PATH[@REV] from the Hugging Face cache
    state, meta = _weights_and_meta(path, which)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SemisegError(f"{path}: the weights entry is not a tensor dict")
    base, nclass, bands = infer_architecture(state, meta.get("encoder"))
    spec = base.with_input(*_normalisation(meta, base, bands, path))
    recorded = meta.get("task")
    if task is not None and recorded is not None and task != recorded:
        raise SemisegError(f"{path} is a {recorded} checkpoint, but a {task} model was asked for")
    resolved = get_task(task or recorded) if (task or recorded) else infer_task(nclass=nclass)
    if resolved.nclass is not None and nclass != resolved.nclass:
        raise SemisegError(
            f"{path} predicts {nclass} classes, but {resolved.title} models predict {resolved.nclass}"
        )
    model = Segmentor(spec, nclass, resolved.fusion)
    _load_weights(model, state, str(path))
    meta.update(
        task=resolved.name,
        nclass=nclass,
        encoder=spec.name,
        patch_size=spec.patch_size,
        mean=list(model.mean),
        std=list(model.std),
        source_sha256=file_sha256(path),
    )
    meta.setdefault("classes", list(resolved.classes or [str(i) for i in range(nclass)]))
    model.meta = meta
    return model.eval()


def _normalisation(
    meta: dict[str, Any], spec: EncoderSpec, bands: int, path: Path
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The recorded mean/std (else the encoder's), checked: one value per input band, every std positive."""
    try:
        mean = tuple(float(v) for v in meta.get("mean", spec.mean))
        std = tuple(float(v) for v in meta.get("std", spec.std))
    except (TypeError, ValueError):
        raise SemisegError(f"{path}: its mean/std are not lists of numbers") from None
    if "mean" not in meta and bands != spec.bands:
        raise SemisegError(
            f"{path} takes {bands} bands but records no mean/std for them (export it with its metadata)"
        )
    if len(mean) != bands or len(std) != bands:
        raise SemisegError(
            f"{path} records {len(mean)} means and {len(std)} stds, but its encoder takes {bands} bands"
        )
    if not all(math.isfinite(v) for v in mean + std):
        raise SemisegError(
            f"{path} records mean {list(mean)} and std {list(std)}: every value must be a number"
        )
    if min(std) <= 0:
        raise SemisegError(f"{path} records a std of {min(std)}: every std must be positive")
    return mean, std


def _safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata `export_model` also writes into the safetensors header (so the file is whole on its own)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(SAFETENSORS_META_KEY)
    except Exception:
        return None  # read_state_dict will say what is wrong with the file
    return yaml.safe_load(text) if text else None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def export_model(model: Segmentor, out: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write `<out>.safetensors` + `<out>.yaml` for release; both are published together, atomically."""
    from safetensors.torch import save_file

    out = Path(out).with_suffix(".safetensors")
    if not out.parent.is_dir():
        raise SemisegError(f"output folder does not exist: {out.parent}")
    info = model_card(model, meta)
    text = yaml.safe_dump(info, sort_keys=False)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_paths(out, out.with_suffix(".yaml")) as (tmp_weights, tmp_yaml):
        save_file(state, str(tmp_weights), metadata={SAFETENSORS_META_KEY: text})
        tmp_yaml.write_text(text)
    return out


def model_card(model: Segmentor, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What travels with released weights: what they are, how to feed them, where they came from."""
    import torch

    from semiseg.version import __version__

    recorded = dict(getattr(model, "meta", {}))
    card = {
        "format_version": FORMAT_VERSION,
        "task": recorded.get("task") or infer_task(model.fusion, model.nclass).name,
        "encoder": model.encoder_size,
        "nclass": model.nclass,
        "classes": recorded.get("classes", [str(i) for i in range(model.nclass)]),
        "bands": model.spec.bands,
        "patch_size": model.patch_size,
        "mean": list(model.mean),
        "std": list(model.std),
    }
    for key in (
        "crop_size",
        "training_data",
        "best",
        "pretrained_weights",
        "pretrained_license",
        "freeze_encoder",
        "input_bands",
        "rgb_bands",
        "stretch",
    ):
        if recorded.get(key) is not None:
            card[key] = recorded[key]
    # torch.__version__ is a str subclass, which weights_only loading refuses
    card.update(toolkit_version=__version__, torch_version=str(torch.__version__))
    card.update(extra or {})
    return card
