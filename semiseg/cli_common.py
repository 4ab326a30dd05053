"""Command-line plumbing shared by `semiseg` and `semicd`: one-line errors, and the commands both offer.

Only argparse and our error type are imported at module level: torch, timm and rasterio load inside the command
handlers, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from semiseg.errors import SemisegError

Handler = Callable[[argparse.Namespace], int | None]


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and turn user errors into one line on stderr and a non-zero exit code."""
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SemisegError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def write_run_record(path: Path, args: argparse.Namespace, result: dict | None = None) -> Path:
    """Write the command's resolved arguments (and its summary) as YAML beside its outputs, atomically."""
    import os

    import yaml

    record = {
        "command": f"{Path(sys.argv[0]).name} {getattr(args, 'command_name', '')}".strip(),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("handler", "command_name")},
    }
    if result is not None:
        record["result"] = json.loads(json.dumps(result, default=str))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp, path)
    return path


def add_config_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    p.add_argument("--config", required=config_required, help="YAML config (see configs/README.md)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.root=/data/VOC (repeatable; values parsed as YAML)",
    )  # fmt: skip


def load_cli_config(args: argparse.Namespace, task: str):
    from semiseg.config import load_config

    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "task" for o in overrides):
        overrides.insert(0, f"task={task}")
    return load_config(args.config, overrides)


def cmd_train(task: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        cfg = load_cli_config(args, task)
        if cfg.task != task:
            raise SemisegError(f"this command trains {task}; the config says task: {cfg.task}")
        from semiseg.engine.trainer import train

        result = train(cfg, Path(args.out))
        print(json.dumps({"out": str(args.out), "best": result["best"]}))
        return 0

    return handler


def cmd_eval(task: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from torch.utils.data import DataLoader

        from semiseg.config import config_from_dict
        from semiseg.data.build import build_datasets
        from semiseg.inference import evaluate
        from semiseg.models.loading import load_model
        from semiseg.predict_images import pick_device

        model = load_model(args.checkpoint, task=task, which=args.which)
        if args.config is None and not args.overrides:
            raise SemisegError(
                "say which data to score on: --config CONFIG and/or --set data.root=... data.split=..."
            )
        cfg = load_cli_config(args, task)
        raw = cfg.to_dict()
        raw["method"]["name"] = "supervised"  # only the evaluation list is needed
        if cfg.data.nclass != model.nclass:
            raise SemisegError(
                f"{args.checkpoint} predicts {model.nclass} classes but the config says data.nclass={cfg.data.nclass}"
            )
        cfg = config_from_dict(raw)
        data = build_datasets(cfg)
        device = pick_device(args.device)
        loader = DataLoader(data.val, batch_size=1, num_workers=min(cfg.data.workers, 4))
        scores = evaluate(
            model.to(device), loader, model.nclass,
            task="segmentation" if task == "segmentation" else "change",
            mode=args.mode or cfg.eval.mode, window=cfg.eval.window, stride=cfg.eval.stride,
            flip_tta=args.tta or cfg.eval.flip_tta, device=device, mean=model.meta["mean"], std=model.meta["std"],
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        if "iou_per_class" in scores:
            scores["iou_per_class"] = dict(zip(data.classes, scores["iou_per_class"]))
        print(json.dumps({"checkpoint": str(args.checkpoint), "images": len(data.val), **scores}, indent=2))
        return 0

    return handler


def cmd_export(task: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from semiseg.models.loading import export_model, load_model

        model = load_model(args.checkpoint, task=task, which=args.which)
        meta = {k: v for k, v in model.meta.items() if k in ("classes",)}
        path = export_model(model, args.out, meta)
        print(f"wrote {path} and {path.with_suffix('.yaml')}")
        return 0

    return handler


def add_common_commands(sub, task: str) -> None:
    name = "segmentation" if task == "segmentation" else "change detection"
    p = sub.add_parser("train", help=f"train a {name} model (resumes when --out holds latest.pt)")
    add_config_args(p, config_required=True)
    p.add_argument("--out", required=True, help="run folder: config.yaml, log.txt, metrics.csv, checkpoints")
    p.set_defaults(handler=cmd_train(task))

    p = sub.add_parser(
        "eval", help="score a checkpoint (ours or official UniMatch V2) on the evaluation list"
    )
    p.add_argument("--checkpoint", required=True)
    add_config_args(p, config_required=False)
    p.add_argument(
        "--which", choices=["auto", "ema", "model"], default="auto", help="teacher (ema) or student"
    )
    p.add_argument("--mode", choices=["original", "sliding_window"], default=None)
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=cmd_eval(task))

    p = sub.add_parser("export", help="write release weights: <out>.safetensors + <out>.yaml")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output path without extension")
    p.add_argument("--which", choices=["auto", "ema", "model"], default="auto")
    p.set_defaults(handler=cmd_export(task))
