"""Configuration: YAML in, validated dataclasses out, `--set a.b=value` overrides in between.

Configuration is data validated in exactly one place: unknown keys and wrong types are errors that name the key
(and the nearest valid one), so a typo never silently falls back to a default. Code downstream only sees typed
dataclasses, never raw dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from semiseg.errors import SemisegError


@dataclass
class DataConfig:
    dataset: str = "pascal"  # pascal|cityscapes|ade20k|coco|folder|levir_cd|whu_cd|change_tiles|geotiff_pair
    root: str | None = None
    split: str | None = (
        None  # a split name under datasets/<dataset>/, or a folder with labeled/unlabeled/val lists
    )
    nclass: int = 21
    crop_size: int = 518
    batch_size: int = 4  # per process, for labeled and unlabeled loaders alike (official rule)
    workers: int = 4
    unlabeled_root: str | None = None  # unlabeled images from another folder / dataset (large-scale setting)
    unlabeled_list: str | None = None
    val_list: str | None = None  # override the split's val list (e.g. test.txt for change detection)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = None  # None: scale relative to each image's own size (official)
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: bool = False
    classes: list[str] | None = None
    nsample: int | None = (
        None  # supervised only: labeled samples per epoch (official 3000 VOC/Cityscapes, ...)
    )
    # geotiff_pair only (change detection straight from a scene); see semicd/data/geotiff_pair.py
    before: str | None = None
    after: str | None = None
    label: str | None = None  # label raster (0/255 or 0/1) or vector file of change polygons
    window: int = 256
    bands: list[int] | None = None
    min_valid: float = 0.5
    areas: dict[str, str] | None = (
        None  # {labeled|unlabeled|val: polygon file}; else seeded random window split
    )
    fractions: tuple[float, float] = (0.1, 0.2)  # labeled / val windows when no areas (the rest is unlabeled)


@dataclass
class ModelConfig:
    encoder: str = "base"  # tiny|small|base|large|giant
    weights: str | None = None  # path to dinov2_vit*14_pretrain.pth, "hub", or null (random init)


@dataclass
class PrevMatchConfig:
    max_snapshots: int = 8
    trigger: Literal["every_k_epochs", "best_val"] = "every_k_epochs"
    every_k: int = 1
    max_ensemble: int = 3
    conf_thresh: float = 0.9
    snapshot_device: Literal["cpu", "device"] = "cpu"


@dataclass
class MaskMatchConfig:
    mask_ratio: float = 0.7
    block_size: int = 28
    weight: float = 1.0
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    multiscale_plabels: bool = True  # the base method's pseudo-labels use the multi-scale ensemble too


@dataclass
class MethodConfig:
    name: Literal["supervised", "fixmatch", "unimatch_v2"] = "unimatch_v2"
    conf_thresh: float = 0.95
    teacher: Literal["ema", "student"] = "ema"
    extras: list[str] = field(default_factory=list)  # prevmatch, maskmatch
    ema_decay: float = 0.996
    comp_drop: bool = True  # unimatch_v2: complementary dropout on the strong views' features
    grayscale_p: float | None = None  # None: 0.2 for segmentation, 0 for change detection (official)
    loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200000
    prevmatch: PrevMatchConfig = field(default_factory=PrevMatchConfig)
    maskmatch: MaskMatchConfig = field(default_factory=MaskMatchConfig)


@dataclass
class OptimConfig:
    lr: float = 5.0e-6
    lr_multi: float = 40.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    poly_power: float = 0.9


@dataclass
class TrainConfig:
    epochs: int = 60
    max_iters: int | None = None  # stop after this many iterations (the LR schedule still spans `epochs`)
    eval_every: int = 1  # epochs
    amp: Literal["none", "bf16", "fp16"] = "none"
    seed: int = 0
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    log_every: int = 20  # iterations
    save_every: int = 1  # epochs
    grad_clip: float | None = None


@dataclass
class EvalConfig:
    mode: Literal["original", "sliding_window"] = "original"
    window: int = 798
    stride: int = 532
    flip_tta: bool = False
    model: Literal["student", "ema", "both"] = "both"


@dataclass
class Config:
    task: Literal["segmentation", "change_detection"] = "segmentation"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


KNOWN_EXTRAS = ("prevmatch", "maskmatch")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _nearest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type hint `hint`, converting where YAML is loose (int for float, list for tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SemisegError as err:
                errors.append(str(err))
        raise SemisegError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise SemisegError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SemisegError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SemisegError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SemisegError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise SemisegError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SemisegError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SemisegError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SemisegError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # split names such as 92 or 1464 are numbers to YAML
        if not isinstance(value, str):
            raise SemisegError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            prefix = f"{where}." if where else ""
            raise SemisegError(f"unknown config key {prefix}{key}{_nearest(key, names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], yaml-parsed value)."""
    if "=" not in text:
        raise SemisegError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise SemisegError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SemisegError(f"--set {text}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def validate(cfg: Config) -> Config:
    """Cross-field checks that a type system cannot express."""
    if cfg.data.crop_size % 14:
        raise SemisegError(
            f"data.crop_size must be a multiple of 14 (DINOv2 patch size), got {cfg.data.crop_size}"
        )
    if cfg.data.nclass < 1:
        raise SemisegError(f"data.nclass must be positive, got {cfg.data.nclass}")
    if cfg.task == "change_detection" and cfg.data.nclass != 2:
        raise SemisegError(
            f"change detection has 2 classes (unchanged, changed); data.nclass is {cfg.data.nclass}"
        )
    for extra in cfg.method.extras:
        if extra not in KNOWN_EXTRAS:
            raise SemisegError(f"unknown method extra {extra!r}{_nearest(extra, KNOWN_EXTRAS)}")
    if cfg.method.extras and cfg.method.name == "supervised":
        raise SemisegError("method.extras need a semi-supervised base method (fixmatch or unimatch_v2)")
    if cfg.eval.mode == "sliding_window" and (cfg.eval.window % 14 or cfg.eval.stride <= 0):
        raise SemisegError("eval.window must be a multiple of 14 and eval.stride positive")
    if cfg.train.epochs < 1:
        raise SemisegError("train.epochs must be at least 1")
    if not 0.0 <= cfg.method.conf_thresh <= 1.0:
        raise SemisegError("method.conf_thresh must lie in [0, 1]")
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    return validate(_build(Config, raw or {}, ""))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply `--set` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SemisegError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise SemisegError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise SemisegError(f"{path} must hold a mapping at top level")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config atomically (it documents what a run did, so it must never be half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
