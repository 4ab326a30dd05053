"""Build models and load any checkpoint the toolkit knows, inferring architecture from the weights.

Formats:
- ours, training (`latest.pt` / `best.pt`): {"format": "semiseg-checkpoint", "model", "ema", "config", "meta", ...};
- ours, export: `<name>.safetensors` + `<name>.yaml` (encoder, nclass, task, fusion, normalisation, classes);
- official UniMatch V2 (segmentation and remote-sensing): {"model", "model_ema", ...} with `module.` prefixes,
  `backbone.*` DINOv2 keys and `head.*` DPT keys — or such a state dict on its own.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from semiseg.augment import IMAGENET_MEAN, IMAGENET_STD
from semiseg.errors import SemisegError
from semiseg.models.encoder import ENCODER_SPECS, check_keys, read_state_dict
from semiseg.models.segmentor import Segmentor

TASK_FUSION = {"segmentation": "identity", "change_detection": "absdiff"}

# (ours, official) key patterns for the DPT head; official refinenet4.resConfUnit1 is never used and is dropped.
_HEAD_KEY_MAP = [
    (r"head\.project\.(\d)\.", lambda m: f"head.projects.{m[1]}."),
    (r"head\.resize\.(\d)\.", lambda m: f"head.resize_layers.{m[1]}."),
    (r"head\.reduce\.(\d)\.", lambda m: f"head.scratch.layer{int(m[1]) + 1}_rn."),
    (r"head\.fusion\.(\d)\.skip_unit\.", lambda m: f"head.scratch.refinenet{int(m[1]) + 1}.resConfUnit1."),
    (r"head\.fusion\.(\d)\.unit\.", lambda m: f"head.scratch.refinenet{int(m[1]) + 1}.resConfUnit2."),
    (r"head\.fusion\.(\d)\.out_conv\.", lambda m: f"head.scratch.refinenet{int(m[1]) + 1}.out_conv."),
    (r"head\.output\.(\d)\.", lambda m: f"head.scratch.output_conv.{m[1]}."),
]
_OFFICIAL_HEAD_KEY_MAP = [
    (r"head\.projects\.(\d)\.", lambda m: f"head.project.{m[1]}."),
    (r"head\.resize_layers\.(\d)\.", lambda m: f"head.resize.{m[1]}."),
    (r"head\.scratch\.layer(\d)_rn\.", lambda m: f"head.reduce.{int(m[1]) - 1}."),
    (r"head\.scratch\.refinenet(\d)\.resConfUnit1\.", lambda m: f"head.fusion.{int(m[1]) - 1}.skip_unit."),
    (r"head\.scratch\.refinenet(\d)\.resConfUnit2\.", lambda m: f"head.fusion.{int(m[1]) - 1}.unit."),
    (r"head\.scratch\.refinenet(\d)\.out_conv\.", lambda m: f"head.fusion.{int(m[1]) - 1}.out_conv."),
    (r"head\.scratch\.output_conv\.(\d)\.", lambda m: f"head.output.{m[1]}."),
]


def _rename(key: str, table: list) -> str:
    for pattern, repl in table:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return key


def build_model(
    encoder: str, nclass: int, task: str = "segmentation", weights: str | None = None
) -> Segmentor:
    """A fresh model for `task`, with encoder weights from `weights` (path, `hub`, or None for random init)."""
    if task not in TASK_FUSION:
        raise SemisegError(f"unknown task {task!r}: choose one of {', '.join(TASK_FUSION)}")
    model = Segmentor(encoder, nclass, TASK_FUSION[task])
    model.encoder.load_pretrained(weights)
    return model


def to_official_state_dict(model: Segmentor) -> dict[str, torch.Tensor]:
    """Our weights in the official UniMatch V2 layout (`backbone.*`, `head.scratch.*`), without `module.`."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.vit."):
            key = "backbone." + key[len("encoder.vit.") :]
            if model.encoder.spec.swiglu:
                key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        else:
            key = _rename(key, _HEAD_KEY_MAP)
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
            key = _rename(key, _OFFICIAL_HEAD_KEY_MAP)
        out[key] = value
    return out


def infer_architecture(state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(encoder size, class count) from weights in our layout."""
    if "encoder.vit.pos_embed" not in state or "head.output.2.weight" not in state:
        raise SemisegError("weights hold no DINOv2 encoder + DPT head (no pos_embed / output conv found)")
    dim = state["encoder.vit.pos_embed"].shape[-1]
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.vit\.blocks\.(\d+)\.", k)))
    for size, spec in ENCODER_SPECS.items():
        if spec.dim == dim and spec.depth == depth:
            return size, int(state["head.output.2.weight"].shape[0])
    raise SemisegError(f"no known encoder size has width {dim} and {depth} blocks")


def _load_weights(model: Segmentor, state: dict[str, torch.Tensor], source: str) -> None:
    check_keys(state, model.state_dict(), what=f"checkpoint {source}")
    model.load_state_dict(state, strict=True)


def _read_checkpoint_file(path: Path) -> Any:
    if not path.is_file():
        raise SemisegError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SemisegError(
            f"{path} is not a readable checkpoint: not a PyTorch file, or it stores Python objects beyond tensors "
            "and plain values, which safe (weights_only) loading refuses"
        ) from None
    except Exception as err:
        raise SemisegError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None


def load_model(path: str | os.PathLike, task: str | None = None, which: str = "auto") -> Segmentor:
    """Load any checkpoint the toolkit knows and return a ready (eval-mode, CPU) model.

    `task` (segmentation / change_detection) is checked against the checkpoint when it records one, and chosen
    from the weights otherwise (official checkpoints do not record it: 2 classes is taken as change detection).
    `which` picks `ema` (the teacher) or `model` (the student) when the file holds both; `auto` takes the one
    that scored best in our checkpoints, and the EMA in official ones.
    The returned model carries `model.meta`: task, nclass, encoder, mean, std, classes, source hash.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".yaml")
        if not sidecar.is_file():
            raise SemisegError(f"{path} needs its metadata file {sidecar.name} beside it")
        meta = yaml.safe_load(sidecar.read_text()) or {}
        state = read_state_dict(path)
    else:
        obj = _read_checkpoint_file(path)
        if not isinstance(obj, dict):
            raise SemisegError(f"{path} is not a checkpoint (found {type(obj).__name__})")
        if obj.get("format") == "semiseg-checkpoint":
            meta = dict(obj.get("meta", {}))
            if which == "auto":
                which = "model" if meta.get("best_source") == "student" else "ema"
            key = "ema" if which == "ema" and obj.get("ema") is not None else "model"
            state = obj[key]
        elif "model" in obj or "model_ema" in obj:
            key = "model_ema" if which in ("ema", "auto") and "model_ema" in obj else "model"
            state = from_official_state_dict(obj[key])
        elif any(k.removeprefix("module.").startswith("backbone.") for k in obj):
            state = from_official_state_dict(obj)
        elif any(k.startswith("encoder.vit.") for k in obj):
            state = obj
        else:
            raise SemisegError(
                f"{path} holds no model weights this toolkit knows (keys: {', '.join(list(obj)[:4])})"
            )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SemisegError(f"{path}: the weights entry is not a tensor dict")
    encoder, nclass = infer_architecture(state)
    recorded = meta.get("task")
    if task is not None and recorded is not None and task != recorded:
        raise SemisegError(f"{path} is a {recorded} checkpoint, but a {task} model was asked for")
    task = task or recorded or ("change_detection" if nclass == 2 else "segmentation")
    model = build_model(encoder, nclass, task)
    _load_weights(model, state, str(path))
    meta.update(
        task=task,
        nclass=nclass,
        encoder=encoder,
        mean=list(meta.get("mean", IMAGENET_MEAN)),
        std=list(meta.get("std", IMAGENET_STD)),
        source_sha256=file_sha256(path),
    )
    meta.setdefault("classes", [str(i) for i in range(nclass)])
    model.meta = meta
    return model.eval()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def export_model(model: Segmentor, out: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write `<out>.safetensors` + `<out>.yaml` for release; both written under temporary names, then renamed."""
    from safetensors.torch import save_file

    out = Path(out).with_suffix(".safetensors")
    if not out.parent.is_dir():
        raise SemisegError(f"output folder does not exist: {out.parent}")
    info = {
        "task": "change_detection" if model.fusion == "absdiff" else "segmentation",
        "encoder": model.encoder_size,
        "nclass": model.nclass,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    info.update(meta or {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_st = _tmp_name(out)
    tmp_yaml = _tmp_name(out.with_suffix(".yaml"))
    try:
        save_file(state, str(tmp_st))
        tmp_yaml.write_text(yaml.safe_dump(info, sort_keys=False))
        os.replace(tmp_st, out)
        os.replace(tmp_yaml, out.with_suffix(".yaml"))
    finally:
        for tmp in (tmp_st, tmp_yaml):
            tmp.unlink(missing_ok=True)
    return out


def _tmp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)
