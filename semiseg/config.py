"""Configuration: YAML in, validated dataclasses out, `--set a.b=value` overrides in between.

Configuration is data validated in exactly one place: unknown keys and wrong types are errors that name the key
(and the nearest valid one), so a typo never silently falls back to a default. Code downstream only sees typed
dataclasses, never raw dicts.

How a config is resolved, lowest layer first:

1. the schema defaults below;
2. the task's defaults (`semiseg.task.Task.defaults`, e.g. change detection's 0.8-1.2 rescale and 2 classes),
   then the chosen dataset's (e.g. Cityscapes' 19 classes);
3. the config file, after the file it names as `base:` (a path relative to the file; bases may chain), so a
   config holds only what differs from its base;
4. `--set` overrides.

A null value means "the default" for keys that cannot be null. A `data.*` option that the chosen dataset does
not read is refused, never ignored. Every key's meaning lives in its `doc` below; `configs/README.md` is
generated from it (`python tools/config_docs.py`), so the two cannot drift.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from semiseg.errors import SemisegError, did_you_mean
from semiseg.models.specs import ENCODER_SPECS, EncoderSpec, encoder_names, encoder_spec, is_encoder_name
from semiseg.registry import EXTRAS, METHODS
from semiseg.task import DatasetSpec, Task, get_task, tasks


def _opt(default: Any, doc: str) -> Any:
    """A config field with its documentation (read by `config_reference`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    dataset: str | None = _opt(None, "which dataset (see the table above); each task has its default")
    root: str | None = _opt(None, "dataset root (layouts: `datasets/README.md`)")
    split: str | None = _opt(
        None,
        "a split name under `datasets/<dataset>/` (change detection: also `<root>/splits/<name>`) or a folder "
        "with `labeled.txt`, `unlabeled.txt` and `val.txt` (val may sit in the parent folder, as in the "
        "official repository)",
    )
    nclass: int | None = _opt(None, "number of classes; masks hold values in [0, nclass) or 255 (ignore)")
    crop_size: int = _opt(518, "training crop side in px, a multiple of the encoder's patch size (14)")
    batch_size: int = _opt(
        4, "per process, for the labeled and the unlabeled loader alike (supervised runs use twice this)"
    )
    workers: int = _opt(4, "DataLoader worker processes per loader")
    unlabeled_root: str | None = _opt(None, "unlabeled images from another folder (large-scale setting)")
    unlabeled_list: str | None = _opt(None, "unlabeled list to use instead of the split's `unlabeled.txt`")
    val_list: str | None = _opt(
        None,
        "evaluation list: a path, or a list name (change-detection tiles: `test`, the official protocol, by "
        "default; `val` for honest model selection)",
    )
    ratio_range: tuple[float, float] = _opt((0.5, 2.0), "random rescale range, relative to each image's size")
    base_size: int | None = _opt(None, "if set, rescale the long side to `ratio × base_size` instead")
    hflip: float = _opt(0.5, "probability of a horizontal flip of a training crop")
    vflip: float = _opt(0.0, "probability of a vertical flip (ours; off in the official recipes)")
    rot90: bool = _opt(False, "random 0/90/180/270° rotations (ours; off in the official recipes)")
    classes: list[str] | None = _opt(None, "class names for logs and outputs (default: the dataset's)")
    nsample: int | None = _opt(
        None,
        "supervised runs: labeled crops per epoch, the list being repeated (official: 3000 Pascal, Cityscapes, "
        "LEVIR-CD and WHU-CD; 6000 ADE20K; 30000 COCO). Semi-supervised runs repeat the labeled list to the "
        "unlabeled count instead",
    )
    ignore_mask_values: list[int] = _opt([], "mask values to read as ignore (255), e.g. an 'unknown' class")
    before: str | None = _opt(None, "the earlier-date GeoTIFF of the scene")
    after: str | None = _opt(None, "the later-date GeoTIFF, on the same grid")
    label: str | list[str] | None = _opt(
        None,
        "a label raster (0/255 or 0/1) on the same grid, or vector file(s) of change polygons; in a review file "
        "(`status` field, from `semicd pseudolabels`) only `accepted` polygons count",
    )
    window: int = _opt(256, "side in px of the training windows laid over the scene")
    bands: list[int] | None = _opt(
        None,
        "1-based bands to read from GeoTIFFs (scenes: default the first as many as the model takes; GeoTIFF tiles: "
        "every non-alpha band; OSCD: positions in B01..B12 with B8A, default all 13); predict reuses them",
    )
    mean: list[float] | None = _opt(
        None,
        "per-band input mean after scaling to 0..1, one value per band the model takes (default: the encoder's "
        "pretraining statistics, 3 RGB bands); other band counts need it: `semicd band-stats` measures it",
    )
    std: list[float] | None = _opt(None, "per-band input std, as `data.mean` (both or neither)")
    min_valid: float = _opt(0.5, "skip windows valid (not nodata) in both dates for less than this fraction")
    stretch: str = _opt(
        "auto",
        "how non-8-bit bands reach 0..255: auto (uint8 as is, else shared), shared (2-98 % percentiles of both "
        "dates pooled), per-date, none (clip), fixed:MIN,MAX (every band) or fixed:MIN,MAX;MIN,MAX;... (one pair "
        "per band, as `semicd band-stats` writes it); predict reuses it unless --stretch is given",
    )
    areas: dict[str, str | list[str]] | None = _opt(
        None,
        "`{labeled: file(s), unlabeled: file(s), val: file(s)}` polygon files assigning windows by their centre; "
        "a review file's accepted polygons add every window they touch",
    )
    fractions: tuple[float, float] = _opt(
        (0.1, 0.2),
        "without `areas`: seeded random labeled / val fractions of the windows (the rest unlabeled)",
    )


@dataclass
class ModelConfig:
    encoder: str = _opt(
        "base",
        "DINOv2: `small`, `base`, `large`, `giant`; with registers: `small_reg` ... `giant_reg`; DINOv3 (patch 16): "
        "`dinov3_small`, `dinov3_small_plus`, `dinov3_base`, `dinov3_large`, `dinov3_large_sat` (satellite "
        "pretraining); `tiny`, `tiny_reg`, `tiny_dinov3` (ours, tests and demos); timm names are accepted too",
    )
    weights: str | None = _opt(
        None,
        "encoder weights: an official file (`dinov2_vit*14_pretrain.pth`, `dinov3_vit*16_pretrain_*.pth`), a timm "
        "state dict or safetensors, local or `hf://OWNER/REPO/PATH[@REV]` on the Hugging Face hub, `hub` (timm hub: "
        "the Hugging Face cache, else downloaded once) or null (random init)",
    )
    rgb_bands: list[int] | None = _opt(
        None,
        "with other than 3 input bands: the 1-based input positions of red, green, blue, which keep the pretrained "
        "RGB filters (default: the first three; [] when none is visible light); the other bands start from the mean "
        "RGB filter × 3/bands",
    )
    freeze_encoder: bool = _opt(
        False,
        "train only the fusion and head: the encoder gets no gradients and no optimiser state (the official "
        "`lock_backbone`; its ADE20K config file sets it, its frozen-encoder ablation uses it)",
    )


@dataclass
class PrevMatchConfig:
    max_snapshots: int = _opt(
        8,
        "store size; the oldest snapshot leaves first (official: 8, 5 on COCO/ADE20K: the datasets' defaults)",
    )
    trigger: Literal["best_val", "every_k_epochs"] = _opt(
        "best_val",
        "`best_val` (official): a snapshot when the evaluated student's primary metric is a new best, so the store "
        "spans many epochs; with `data.val_list: test` that selects on the test set (a warning says so). "
        "`every_k_epochs`: a snapshot after every `every_k`-th epoch (needs no evaluation)",
    )
    every_k: int = _opt(1, "epochs between snapshots for `every_k_epochs`")
    warmup_epochs: int = _opt(
        0,
        "no snapshot before this many epochs are done, whatever the trigger (official: 0, 5 on COCO/ADE20K: the "
        "datasets' defaults); new bests during the warm-up still raise the bar",
    )
    lambda_schedule: Literal["per_epoch", "per_iteration"] = _opt(
        "per_epoch",
        "λ of the term, a triangle over training: `per_epoch` (official) holds it for an epoch, e/(E/2) rising "
        "then 1 − (e − E/2)/(E − E/2) falling (E/2 rounded down); `per_iteration` is the same triangle, smooth",
    )
    conf_mode: Literal["pixelwise", "pixelavg"] = _opt(
        "pixelwise",
        "how the snapshots' confidence weighs the term: `pixelwise`, pixels at least `conf_thresh` (official); "
        "`pixelavg`, the mean confidence instead of a threshold (official on Cityscapes: its dataset default)",
    )
    max_ensemble: int = _opt(
        3, "at most this many snapshots per iteration (k ~ U{1..k_max}, Dirichlet weights)"
    )
    conf_thresh: float = _opt(0.9, "confidence threshold of the previous-guidance pseudo-labels")
    snapshot_device: Literal["cpu", "device"] = _opt(
        "cpu",
        "`cpu`: snapshots in host memory (pinned on CUDA), the drawn ones copied each iteration; `device`: all "
        "on the accelerator (no copies; `max_snapshots` × model size of its memory)",
    )


@dataclass
class MaskMatchConfig:
    mask_ratio: float = _opt(0.7, "fraction of grid blocks hidden per image, in [0, 1)")
    block_size: int = _opt(
        28, "block side in px, a multiple of the patch size (blocks align with the patch grid)"
    )
    weight: float = _opt(1.0, "λ of the masked-consistency term")
    scales: list[float] = _opt(
        [0.75, 1.0, 1.25], "teacher input scales; probabilities resized back to the crop and averaged"
    )
    multiscale_plabels: bool = _opt(
        True, "the base method's pseudo-labels use the multi-scale ensemble too (false: only the masked term)"
    )


@dataclass
class MethodConfig:
    name: str = _opt(
        "unimatch_v2",
        "`supervised`, `fixmatch` (one strong view), `unimatch_v2` (two views + complementary dropout)",
    )
    conf_thresh: float = _opt(0.95, "pseudo-label confidence threshold τ")
    teacher: Literal["ema", "student"] = _opt(
        "ema",
        "who makes the pseudo-labels: the EMA model or the online student; the EMA is kept and evaluated either way",
    )
    extras: list[str] = _opt([], "extra terms on top of fixmatch / unimatch_v2: `prevmatch`, `maskmatch`")
    ema_decay: float = _opt(0.996, "EMA cap: α = min(1 − 1/(it+1), ema_decay)")
    comp_drop: bool = _opt(
        True, "unimatch_v2: complementary channel dropout on the two strong views' features"
    )
    grayscale_p: float = _opt(0.2, "strong-view grayscale probability")
    loss: Literal["ce", "ohem"] = _opt("ce", "labeled loss: cross-entropy or OHEM (Cityscapes)")
    ohem_thresh: float = _opt(0.7, "OHEM: keep pixels whose true-class probability is at most this")
    ohem_min_kept: int = _opt(200000, "OHEM: keep at least this many pixels")
    prevmatch: PrevMatchConfig = field(
        default_factory=PrevMatchConfig, metadata={"doc": "see `method.prevmatch`"}
    )
    maskmatch: MaskMatchConfig = field(
        default_factory=MaskMatchConfig, metadata={"doc": "see `method.maskmatch`"}
    )


@dataclass
class OptimConfig:
    lr: float = _opt(5.0e-6, "encoder learning rate (scale linearly with the global batch)")
    lr_multi: float = _opt(40.0, "learning-rate multiplier for every other parameter (fusion, head)")
    weight_decay: float = _opt(0.01, "AdamW weight decay, on all parameters")
    betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas")
    poly_power: float = _opt(
        0.9, "poly schedule lr·(1 − it/total)^power, updated every iteration, no warm-up"
    )
    fused: bool | None = _opt(
        None,
        "AdamW as one fused kernel per step, which also skips a step with a non-finite loss on the device, so the "
        "check needs no wait for the accelerator (the run stops at the next log point; with train.amp=fp16 the "
        "check stays synchronous); null: fused on CUDA, PyTorch's default (the official code's) elsewhere; false "
        "keeps the official arithmetic bit for bit",
    )


@dataclass
class TrainConfig:
    epochs: int = _opt(60, "epochs (one epoch is one pass over the unlabeled set)")
    max_iters: int | None = _opt(
        None, "stop after this many iterations (the schedule still spans `epochs`); run again to resume"
    )
    eval_every: int = _opt(1, "epochs between evaluations")
    amp: Literal["none", "bf16", "fp16"] = _opt(
        "none", "autocast: `none` (fp32, as the paper), `bf16`, `fp16` (CUDA)"
    )
    seed: int = _opt(0, "seed of every random draw")
    device: str = _opt("auto", "`auto`, `cpu`, `cuda` or `cuda:N`")
    log_every: int = _opt(
        20,
        "iterations between logged training losses; values (and, with a fused optimiser, the non-finite check) are "
        "read back from the accelerator only then, and under DDP the processes agree on a stop signal then",
    )
    compile: Literal["off", "default", "max-autotune"] = _opt(
        "off",
        "torch.compile each encoder block and the head (`max-autotune`: longer compile, tuned kernels, no CUDA "
        "graphs); the first steps take longer while it compiles; evaluation runs uncompiled; where no compiler "
        "backend works (checked on a small model first) it trains uncompiled after one warning",
    )
    save_every: int = _opt(1, "epochs between `latest.pt` saves")
    grad_clip: float | None = _opt(None, "clip the gradient norm to this (null: no clipping)")
    accumulate: int = _opt(
        1,
        "micro-batches of `data.batch_size` per optimiser step, gradients added up (DDP exchanges them once per "
        "step): the step of a run with `accumulate` times more processes, exactly (no BatchNorm in the model)",
    )
    global_batch: int | None = _opt(
        None,
        "samples per optimiser step over all processes, in units of `data.batch_size` (official: 16 Pascal/COCO, "
        "8 Cityscapes/ADE20K/LEVIR-CD/WHU-CD); sets `accumulate` to global_batch / (batch_size × processes), which "
        "must be a whole number, so one config gives the official step on any GPU count. Null: no accumulation "
        "beyond `accumulate`",
    )


@dataclass
class EvalConfig:
    mode: Literal["original", "sliding_window"] = _opt(
        "original",
        "`original`: resize to the nearest multiple of the patch, predict, resize back; `sliding_window`: "
        "`window` px windows every `stride` px, softmax summed",
    )
    window: int = _opt(798, "sliding-window side in px, a multiple of the patch size")
    stride: int = _opt(532, "sliding-window stride in px")
    flip_tta: bool = _opt(False, "average with the horizontally flipped prediction")
    model: Literal["student", "ema", "both"] = _opt("both", "which model(s) to evaluate during training")


@dataclass
class Config:
    task: str = _opt(
        "segmentation", "the task: `segmentation` or `change_detection` (`semiseg` / `semicd` set it)"
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# `data.*` keys every dataset reads; a dataset lists the others it reads in its `DatasetSpec.keys`.
COMMON_DATA_KEYS = frozenset(
    {"dataset", "nclass", "crop_size", "batch_size", "workers", "ratio_range", "base_size", "hflip", "vflip",
     "rot90", "classes", "nsample", "mean", "std"}
)  # fmt: skip


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _accepts_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


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
        if isinstance(value, bool) and ("off" if value is False else "on") in args:
            value = "off" if value is False else "on"  # YAML 1.1 reads a bare off/on as a boolean
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
            raise SemisegError(f"unknown config key {prefix}{key}{did_you_mean(key, names)}")
    kwargs = {
        k: _coerce(v, hints[k], f"{where}.{k}" if where else k)
        for k, v in values.items()
        if v is not None or _accepts_none(hints[k])  # null on a key that cannot be null: the default
    }
    return cls(**kwargs)


def _schema_paths() -> tuple[frozenset[str], frozenset[str]]:
    """(dotted paths of sections, dotted paths of keys that may be null), read from the schema."""
    sections, nullable = set(), set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                sections.add(path)
                walk(hints[f.name], f"{path}.")
            elif _accepts_none(hints[f.name]):
                nullable.add(path)

    walk(Config, "")
    return frozenset(sections), frozenset(nullable)


SECTIONS, NULLABLE = _schema_paths()


def deep_merge(base: dict[str, Any], over: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`over` on top of `base`: config sections merge key by key; any value (a list, a mapping such as
    `data.areas`, a null) replaces the one below it."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        path = f"{prefix}{key}"
        if path in SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _drop_defaulted_nulls(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A null on a key that cannot be null means "the default" (the task's or dataset's, else the schema's): drop
    it so the defaults below show through. Old resolved configs wrote `grayscale_p: null` for exactly that."""
    out = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if path in SECTIONS and isinstance(value, dict):
            out[key] = _drop_defaulted_nulls(value, f"{path}.")
        elif value is not None or path in NULLABLE or path in SECTIONS:
            out[key] = value
    return out


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


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        if path == ["base"]:
            raise SemisegError(
                "base is read from config files only: write `base: other.yaml` in the config you pass"
            )
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


# ---------------------------------------------------------------------------------------------------------
# Checks a type system cannot express


def _check_data_keys(
    raw: dict[str, Any], defaults: dict[str, Any], dataset: str, spec: DatasetSpec, task: Task
) -> None:
    """Refuse `data.*` options the chosen dataset would not read, which would otherwise be silently ignored.

    An option counts as given when it differs from its default, so a resolved config (which lists every key)
    loads back as it is.
    """
    schema = DataConfig()
    given = set()
    for key, value in (raw.get("data") or {}).items():
        if not hasattr(schema, key) or value is None:
            continue  # unknown keys get their own error from the schema
        default = (defaults.get("data") or {}).get(key, getattr(schema, key))
        if _to_plain(value) != _to_plain(default):
            given.add(key)
    stray = sorted(given - COMMON_DATA_KEYS - spec.keys)
    if not stray:
        return
    key = stray[0]
    readers = [(t, n) for t in tasks().values() for n, s in t.datasets.items() if key in s.keys]
    here = [n for t, n in readers if t is task]
    if here:
        where = f"it is read by data.dataset={' / '.join(here)}"
    elif readers:
        owner = readers[0][0]
        where = f"it is read by {owner.title} datasets ({', '.join(n for _, n in readers)}: use `{owner.command}`)"
    else:
        where = "no dataset reads it"
    raise SemisegError(
        f"data.{key} does not apply to data.dataset={dataset} ({where}); remove it or set it to null"
    )


def _check_ranges(cfg: Config) -> None:
    d, m, t, o = cfg.data, cfg.method, cfg.train, cfg.optim
    positive = {
        "data.batch_size": d.batch_size, "train.epochs": t.epochs, "train.eval_every": t.eval_every,
        "train.log_every": t.log_every, "train.save_every": t.save_every,
        "method.prevmatch.max_snapshots": m.prevmatch.max_snapshots, "method.prevmatch.every_k": m.prevmatch.every_k,
        "method.prevmatch.max_ensemble": m.prevmatch.max_ensemble, "data.window": d.window,
    }  # fmt: skip
    if m.prevmatch.warmup_epochs < 0:
        raise SemisegError(
            f"method.prevmatch.warmup_epochs must be 0 or more, got {m.prevmatch.warmup_epochs}"
        )
    positive["train.accumulate"] = t.accumulate
    if t.global_batch is not None:
        positive["train.global_batch"] = t.global_batch
        if t.accumulate != 1:
            raise SemisegError(
                "set train.global_batch or train.accumulate, not both (global_batch sets accumulate)"
            )
    if t.max_iters is not None:
        positive["train.max_iters"] = t.max_iters
    for key, value in positive.items():
        if value < 1:
            raise SemisegError(f"{key} must be at least 1, got {value}")
    if d.workers < 0:
        raise SemisegError(f"data.workers must be 0 or more, got {d.workers}")
    if o.lr <= 0 or o.lr_multi <= 0:
        raise SemisegError(f"optim.lr and optim.lr_multi must be positive, got {o.lr} and {o.lr_multi}")
    lo, hi = d.ratio_range
    if not 0 < lo <= hi:
        raise SemisegError(f"data.ratio_range must be [low, high] with 0 < low <= high, got {[lo, hi]}")
    fractions = {
        "data.hflip": d.hflip, "data.vflip": d.vflip, "data.min_valid": d.min_valid,
        "method.conf_thresh": m.conf_thresh, "method.ema_decay": m.ema_decay, "method.grayscale_p": m.grayscale_p,
        "method.prevmatch.conf_thresh": m.prevmatch.conf_thresh,
    }  # fmt: skip
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise SemisegError(f"{key} must lie in [0, 1], got {value}")
    if not 0.0 <= m.maskmatch.mask_ratio < 1.0:
        raise SemisegError(f"method.maskmatch.mask_ratio must lie in [0, 1), got {m.maskmatch.mask_ratio}")
    if not m.maskmatch.scales or any(s <= 0 for s in m.maskmatch.scales):
        raise SemisegError(f"method.maskmatch.scales must be positive numbers, got {m.maskmatch.scales}")
    if m.maskmatch.weight < 0:
        raise SemisegError(f"method.maskmatch.weight must be non-negative, got {m.maskmatch.weight}")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise SemisegError(f"train.grad_clip must be positive (or null for no clipping), got {t.grad_clip}")
    if any(f < 0 for f in d.fractions) or sum(d.fractions) > 1:
        raise SemisegError(
            f"data.fractions (labeled, val) must be in [0, 1] and sum to at most 1, got {list(d.fractions)}"
        )


def validate(cfg: Config, task: Task | None = None) -> Config:
    """Cross-field checks: names against their registries, sizes against the encoder, task constraints."""
    task = task or get_task(cfg.task)
    if not is_encoder_name(cfg.model.encoder):
        raise SemisegError(
            f"model.encoder: unknown encoder {cfg.model.encoder!r}{did_you_mean(cfg.model.encoder, encoder_names(aliases=True))}; "
            f"choose one of {', '.join(ENCODER_SPECS)}"
        )
    spec = model_spec(cfg)
    spec.check_side(cfg.data.crop_size, "data.crop_size")
    if cfg.method.name not in METHODS:
        raise SemisegError(
            f"method.name: {cfg.method.name!r} is not one of {', '.join(map(repr, METHODS))}"
            f"{did_you_mean(cfg.method.name, METHODS)}"
        )
    for extra in cfg.method.extras:
        if extra not in EXTRAS:
            raise SemisegError(
                f"unknown method extra {extra!r}{did_you_mean(extra, EXTRAS)}; choose from {', '.join(EXTRAS)}"
            )
    if cfg.method.extras and not METHODS[cfg.method.name].needs_unlabeled:
        raise SemisegError("method.extras need a semi-supervised base method (fixmatch or unimatch_v2)")
    if "maskmatch" in cfg.method.extras:
        spec.check_side(cfg.method.maskmatch.block_size, "method.maskmatch.block_size")
    if cfg.eval.mode == "sliding_window":
        spec.check_side(cfg.eval.window, "eval.window")
        if cfg.eval.stride <= 0:
            raise SemisegError(f"eval.stride must be positive, got {cfg.eval.stride}")
    if cfg.data.nclass is None:
        raise SemisegError(
            f"data.nclass is not set: dataset {cfg.data.dataset!r} needs the number of classes (--set data.nclass=N)"
        )
    if cfg.data.nclass < 1:
        raise SemisegError(f"data.nclass must be positive, got {cfg.data.nclass}")
    if task.nclass is not None and cfg.data.nclass != task.nclass:
        raise SemisegError(f"{task.title} has {task.nclass} classes; data.nclass is {cfg.data.nclass}")
    if cfg.data.classes is not None and len(cfg.data.classes) != cfg.data.nclass:
        raise SemisegError(
            f"data.classes names {len(cfg.data.classes)} classes but data.nclass is {cfg.data.nclass}"
        )
    _check_ranges(cfg)
    return cfg


def model_spec(cfg: Config) -> EncoderSpec:
    """The encoder of a run with the input it is fed: the encoder's own statistics (RGB), or `data.mean`/`data.std`
    for other bands. `data.bands`, when set, must select as many bands."""
    from semiseg.models.bands import check_rgb_bands

    d, spec = cfg.data, encoder_spec(cfg.model.encoder)
    if (d.mean is None) != (d.std is None):
        raise SemisegError("set data.mean and data.std together (one value per band each), or neither")
    if d.mean is not None:
        spec = spec.with_input(tuple(d.mean), tuple(d.std))
    if d.bands is not None and len(d.bands) != spec.bands:
        hint = "set data.mean/data.std for them (`semicd band-stats` measures both)" if d.mean is None else ""
        raise SemisegError(
            f"data.bands selects {len(d.bands)} band(s) but the model takes {spec.bands} (one per data.mean value)"
            + (f": {hint}" if hint else "")
        )
    if cfg.model.rgb_bands is not None:
        check_rgb_bands(cfg.model.rgb_bands, spec.bands)
    if spec.bands != 3 and "bands" not in get_task(cfg.task).dataset(d.dataset).keys:
        raise SemisegError(
            f"data.dataset={d.dataset} reads RGB images only, but data.mean gives {spec.bands} bands: other band "
            "counts need a dataset that reads bands (change_tiles with GeoTIFF tiles, geotiff_pair, oscd)"
        )
    return spec


# ---------------------------------------------------------------------------------------------------------
# Loading


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Resolve a raw config (as read from YAML, bases applied) over the task's and the dataset's defaults."""
    raw = copy.deepcopy(raw or {})
    if not isinstance(raw.get("data", {}), (dict, type(None))):
        raise SemisegError("data: expected a mapping")
    task_name = raw.get("task") or Config.task
    if not isinstance(task_name, str):
        raise SemisegError(f"task: expected a task name, got {task_name!r}")
    task = get_task(task_name)
    raw = _drop_defaulted_nulls(raw)
    layered = deep_merge({}, dict(task.defaults))
    dataset = (raw.get("data") or {}).get("dataset") or (layered.get("data") or {}).get("dataset")
    spec = task.dataset(dataset)
    layered = deep_merge(layered, dict(spec.defaults))
    _check_data_keys(raw, layered, str(dataset), spec, task)
    merged = deep_merge(layered, raw)
    merged["task"] = task.name
    merged.setdefault("data", {})["dataset"] = dataset
    cfg = _build(Config, merged, "")
    if cfg.data.nclass is None:
        cfg.data.nclass = task.nclass  # a task that fixes its classes needs no count from the user
    return validate(cfg, task)


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with the file it names as `base:` (relative to itself) merged underneath."""
    path = Path(path).expanduser()
    if not path.is_file():
        named_by = f" (named as base by {_chain[-1]})" if _chain else ""
        raise SemisegError(f"config file not found: {path}{named_by}")
    if path.resolve() in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path.resolve()))
        raise SemisegError(f"config bases form a cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SemisegError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SemisegError(f"{path} must hold a mapping at top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise SemisegError(f"{path}: base must be the path of another config file, got {base!r}")
    parent = read_config_file(path.parent / base, (*_chain, path.resolve()))
    return deep_merge(parent, raw)


def load_config(
    path: str | Path | None,
    overrides: typing.Sequence[str] | None = None,
    task: str | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Read a YAML config (or start from `base`, a config as a dict, or the defaults when `path` is None) and
    apply `--set` overrides.

    `task`: the task the caller serves (the `semicd` command passes `change_detection`); a config naming
    another task is refused, one naming none gets this one. `base`: e.g. the config a checkpoint was trained
    with, so evaluating it needs only the data's location.
    """
    raw = read_config_file(path) if path is not None else copy.deepcopy(base or {})
    raw = apply_overrides(raw, overrides or [])
    if task is not None:
        named = raw.get("task")
        if named is not None and named != task:
            raise SemisegError(
                f"this command is for {get_task(task).title}, but the config says task: {named} "
                f"(use `{get_task(named).command}` for it)"
            )
        raw["task"] = task
    return config_from_dict(raw)


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config atomically (it documents what a run did, so it must never be half-written)."""
    from semiseg.io import write_text_atomic

    write_text_atomic(path, config_yaml(cfg))


# ---------------------------------------------------------------------------------------------------------
# The reference documentation (configs/README.md), generated from the schema


_SECTIONS: tuple[tuple[str, type], ...] = (
    ("", Config), ("data", DataConfig), ("model", ModelConfig), ("method", MethodConfig),
    ("method.prevmatch", PrevMatchConfig), ("method.maskmatch", MaskMatchConfig), ("optim", OptimConfig),
    ("train", TrainConfig), ("eval", EvalConfig),
)  # fmt: skip


_MISSING = object()


def lookup(tree: Any, dotted: str, default: Any = None) -> Any:
    """`tree["a"]["b"]` for `a.b` in nested dicts (a config as a dict), or `default` where the path is absent."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def _show(value: Any) -> str:
    return (
        "`"
        + yaml.safe_dump(_to_plain(value), default_flow_style=True).strip().removesuffix("...").strip()
        + "`"
    )


def config_reference(known_tasks: typing.Sequence[Task]) -> str:
    """Markdown reference of every task's datasets, every method, and every key: its default (and where a task or
    dataset changes it), its meaning, and which datasets read it."""
    lines = ["### Tasks and their datasets", "", "| task | `data.dataset` | what |", "|---|---|---|"]
    for task in known_tasks:
        for name, spec in task.datasets.items():
            lines.append(f"| `{task.name}` ({task.command}) | `{name}` | {spec.summary} |")
    lines += ["", "### Methods", "", "| `method.name` | what |", "|---|---|"]
    lines += [f"| `{name}` | {info.summary} |" for name, info in METHODS.items()]
    lines += ["", f"Extras (`method.extras`): {', '.join(f'`{e}`' for e in EXTRAS)}."]
    for prefix, cls in _SECTIONS:
        lines += ["", f"### `{prefix or 'top level'}`", "", "| key | default | meaning |", "|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            dotted = f"{prefix}.{f.name}" if prefix else f.name
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = [_show(default)]
            for task in known_tasks:
                value = lookup(dict(task.defaults), dotted, _MISSING)
                if value is not _MISSING and value != _to_plain(default):
                    shown.append(f"{task.title}: {_show(value)}")
                for name, spec in task.datasets.items():
                    value = lookup(dict(spec.defaults), dotted, _MISSING)
                    if value is not _MISSING:
                        shown.append(f"{name}: {_show(value)}")
            doc = f.metadata["doc"]
            if prefix == "data" and f.name not in COMMON_DATA_KEYS:
                readers = [n for t in known_tasks for n, s in t.datasets.items() if f.name in s.keys]
                doc += f" (read by {', '.join(f'`{r}`' for r in readers)})"
            lines.append(f"| `{f.name}` | {'; '.join(shown)} | {doc} |")
    return "\n".join(lines) + "\n"
