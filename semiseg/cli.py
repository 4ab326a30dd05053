"""Command-line plumbing every task's command shares: the parser, one-line errors, and the commands each offers.

A task's front-end (`semiseg.segmentation.cli`, `semicd.cli`) calls `make_parser(task)` and adds its own
commands; everything here is worded from the `Task` (its command name and title), never from a task name.
Nothing heavy is imported at module level: torch, timm and rasterio load inside the command handlers, so `--help`
answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegError, one_line
from semiseg.task import Task
from semiseg.version import __version__

Handler = Callable[[argparse.Namespace], int | None]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (none shown for flags and options without one); the examples
    below a command keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (what was wrong and where the help is) and exit code 2, without the
    usage block that buries the reason."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and turn user errors into one line on stderr and a non-zero exit code.

    SIGTERM is handled like Ctrl-C (temporaries removed, earlier outputs untouched; see `semiseg.stopping`;
    training installs its own clean-stop handler on top). (Python already ignores SIGXFSZ, so a file-size limit
    fails the write with an error, not a kill.)
    """
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from semiseg import stopping

    stopping.reset()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, stopping.handle)
    try:
        return int(args.handler(args) or 0)
    except SemisegError as err:
        code = getattr(err, "exit_code", None)  # a clean stop on a signal is not an error in the input
        print(f"{parser.prog}: {'' if code else 'error: '}{one_line(err)}", file=sys.stderr)
        return code or 2
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted; temporary files removed, earlier outputs untouched", file=sys.stderr
        )
        return 130
    except stopping.Terminated as stop:
        print(
            f"{parser.prog}: stopped by {stop}; temporary files removed, earlier outputs untouched",
            file=sys.stderr,
        )
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------------
# option types: a bad value is refused by the parser, before anything loads


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def band_list(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3] (1-based band numbers)."""
    try:
        bands = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give 1-based band numbers separated by commas, e.g. 1,2,3"
        ) from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: band numbers start at 1")
    return bands


def device_name(text: str) -> str:
    """`auto`, `cpu`, `mps`, `cuda` or `cuda:N` (whether it exists is checked when the command runs)."""
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N")


def stretch_rule(text: str) -> str:
    from semiseg.geo.pair import parse_stretch  # light: rasterio only, no torch

    try:
        return str(parse_stretch(text))
    except SemisegError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def record_command(path: Path, args: argparse.Namespace, result: dict | None = None) -> Path:
    """Write what the command was asked (its resolved arguments) and its summary beside its outputs."""
    from semiseg.io import write_run_record

    arguments = {k: v for k, v in vars(args).items() if k not in ("handler", "command_name")}
    command = f"{Path(sys.argv[0]).name} {getattr(args, 'command_name', '')}".strip()
    return write_run_record(path, command, arguments, result)


def add_command(
    sub: Any, name: str, handler: Handler, help: str, example: str = ""
) -> argparse.ArgumentParser:
    epilog = "example:\n  " + example.replace("\n", "\n  ") if example else None
    p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)
    p.set_defaults(handler=handler, command_name=name)
    return p


def add_config_args(p: argparse.ArgumentParser, config_required: bool, hint: str = "") -> None:
    p.add_argument("--config", required=config_required, help=f"YAML config (see configs/README.md){hint}")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. --set data.root=/data/VOC data.split=92 (repeatable; values parsed as YAML)",
    )  # fmt: skip


def _load_config(args: argparse.Namespace, task: Task, base: dict | None = None):
    from semiseg.config import load_config

    return load_config(args.config, args.overrides, task=task.name, base=base)


# ---------------------------------------------------------------------------------------------------------
# train, eval, export


def cmd_train(task: Task) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        cfg = _load_config(args, task)
        if args.print_config:
            from semiseg.config import config_yaml

            print(config_yaml(cfg), end="")
            return 0
        if not args.out:
            raise SemisegError("--out is required: the run folder (config.yaml, logs, metrics, checkpoints)")
        from semiseg.train.loop import train

        result = train(cfg, Path(args.out), force=args.force)
        print(json.dumps({"out": str(args.out), "best": result["best"]}))
        return 0

    return handler


def cmd_eval(task: Task) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from torch.utils.data import DataLoader

        from semiseg.data.build import build
        from semiseg.devices import pick_device
        from semiseg.inference import evaluate
        from semiseg.models.checkpoints import load_model

        model = load_model(args.checkpoint, task=task.name, which=args.which)
        trained_with = model.meta.get("config")  # our checkpoints know their data; --config/--set change it
        if args.config is None and not args.overrides and trained_with is None:
            raise SemisegError(
                "say which data to score on: --config CONFIG and/or --set data.root=... data.split=..."
            )
        cfg = _load_config(args, task, base=trained_with)
        if cfg.data.nclass != model.nclass:
            raise SemisegError(
                f"{args.checkpoint} predicts {model.nclass} classes but the config says data.nclass={cfg.data.nclass}"
            )
        data = build(cfg, "eval")  # the evaluation list only: no training list is read or needed
        device = pick_device(args.device)
        loader = DataLoader(data.val, batch_size=1, num_workers=min(cfg.data.workers, 4))
        scores = evaluate(
            model.to(device), loader, model.nclass, task, mode=args.mode or cfg.eval.mode, window=cfg.eval.window,
            stride=cfg.eval.stride, flip_tta=args.tta or cfg.eval.flip_tta, device=device,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        if "iou_per_class" in scores:
            scores["iou_per_class"] = dict(zip(data.classes, scores["iou_per_class"]))
        print(json.dumps({"checkpoint": str(args.checkpoint), "images": len(data.val), **scores}, indent=2))
        return 0

    return handler


def cmd_export(task: Task) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from semiseg.models.checkpoints import export_model, load_model

        model = load_model(args.checkpoint, task=task.name, which=args.which)
        path = export_model(model, args.out, {"classes": model.meta["classes"]})
        print(f"wrote {path} and {path.with_suffix('.yaml')}")
        return 0

    return handler


def cmd_compare_log(task: Task) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from semiseg.compare_log import compare_log

        summary = compare_log(args.run, args.official_log, args.out, args.spread)
        print(summary["verdict"])
        print(json.dumps(summary, indent=2, default=str))
        return 0

    return handler


def cmd_band_stats(task: Task) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from semiseg.band_stats import dataset_band_stats, raster_band_stats, stats_config
        from semiseg.io import write_yaml_atomic

        if args.out and not Path(args.out).resolve().parent.is_dir():  # before minutes of measuring
            raise SemisegError(f"output folder does not exist: {Path(args.out).parent}")
        if args.rasters:
            stats = raster_band_stats(args.rasters, args.bands, args.nodata, args.stretch)
        elif args.config:
            stats = dataset_band_stats(_training_sets(args, task), args.max_samples)
        else:
            raise SemisegError("band-stats needs rasters to measure, or --config to measure its training set")
        if args.out:
            base = None
            if args.config:
                base = os.path.relpath(Path(args.config).resolve(), Path(args.out).resolve().parent)
            write_yaml_atomic(args.out, stats_config(stats, base))
            stats["written"] = str(args.out)
        print(json.dumps(stats))
        return 0

    return handler


def _training_sets(args: argparse.Namespace, task: Task) -> list:
    """The labeled and unlabeled training sets of `--config`. The config may select bands it has no statistics
    for yet (that is why band-stats runs): neutral placeholders let it load; they are not used to measure."""
    from semiseg.config import apply_overrides, config_from_dict, read_config_file
    from semiseg.data.build import build

    raw = apply_overrides(read_config_file(args.config), args.overrides)
    raw["task"] = raw.get("task") or task.name
    data = raw.setdefault("data", {}) or {}
    if data.get("bands") and data.get("mean") is None:
        data["mean"], data["std"] = [0.5] * len(data["bands"]), [0.25] * len(data["bands"])
    bundle = build(config_from_dict(raw), "fit")
    return [bundle.labeled, bundle.unlabeled]


CHECKPOINT_HELP = (
    "a checkpoint: ours (best.pt, latest.pt), an export (.safetensors), or an official UniMatch V2 one; a local "
    "path or hf://OWNER/REPO/PATH[@REVISION] (downloaded once into the Hugging Face cache)"
)
WHICH_HELP = (
    "which weights of a checkpoint: the EMA teacher, the student (model), or auto (the one that scored best)"
)


def make_parser(
    task: Task, description: str, examples: dict[str, str] | None = None
) -> tuple[argparse.ArgumentParser, Any]:
    """The parser of a task's command with the commands every task has: train, eval, export (`examples`: a
    command line per command, shown below its help)."""
    examples = examples or {}
    parser = ArgumentParser(prog=task.command, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{task.command} {__version__}")
    sub = parser.add_subparsers(title="commands")

    p = add_command(
        sub, "train", cmd_train(task), f"train a {task.title} model (resumes when --out holds latest.pt)",
        examples.get("train", ""),
    )  # fmt: skip
    add_config_args(p, config_required=False, hint=" (default: the task's defaults and --set alone)")
    p.add_argument("--out", help="run folder: config.yaml, log.txt, metrics.csv, checkpoints")
    p.add_argument(
        "--force",
        action="store_true",
        help="resume even when the method or the schedule's length changed (each segment's config is kept)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (bases, task defaults, --set) and exit",
    )

    p = add_command(
        sub,
        "eval",
        cmd_eval(task),
        "score a checkpoint (ours or official UniMatch V2) on the evaluation list",
        examples.get("eval", ""),
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    add_config_args(p, config_required=False, hint=" (default: the config the checkpoint was trained with)")
    p.add_argument("--which", choices=["auto", "ema", "model"], default="auto", help=WHICH_HELP)
    p.add_argument("--mode", choices=["original", "sliding_window"], default=None, help="override eval.mode")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")

    p = add_command(
        sub, "export", cmd_export(task), "write release weights: <out>.safetensors + <out>.yaml",
        examples.get("export", f"{task.command} export --checkpoint runs/x/best.pt --out release/model"),
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", required=True, help="output path without extension")
    p.add_argument("--which", choices=["auto", "ema", "model"], default="auto", help=WHICH_HELP)

    p = add_command(
        sub, "compare-log", cmd_compare_log(task),
        "hold a run against an official UniMatch V2 training log: aligned table, plot, verdict",
        examples.get("compare-log", f"{task.command} compare-log runs/x training-logs/official.log"),
    )  # fmt: skip
    p.add_argument("run", help="our run folder (train --out): metrics.csv, log.txt, tb/")
    p.add_argument("official_log", help="an official training log (training-logs/*.log of UniMatch V2)")
    p.add_argument("--out", help="folder for compare.csv, compare.md, compare.png (default: the run folder)")
    p.add_argument(
        "--spread", type=float, default=1.0,
        help="points of the metric within which the two count as equal (see semiseg/compare_log.py)",
    )  # fmt: skip

    p = add_command(
        sub, "band-stats", cmd_band_stats(task),
        "measure per-band input statistics (mean, std, robust limits) for imagery beyond RGB and write them as a "
        "config",
        examples.get("band-stats", f"{task.command} band-stats scene_2019.tif scene_2023.tif --bands 1,2,3,4 "
                     "--config my.yaml --out my_4band.yaml"),
    )  # fmt: skip
    p.add_argument("rasters", nargs="*", help="GeoTIFFs to measure (default: the training set of --config)")
    add_config_args(p, config_required=False, hint="; becomes the base of --out")
    p.add_argument("--bands", type=band_list, help="1-based bands of the rasters (default: all but alpha)")
    p.add_argument("--nodata", type=float, default=None, help="treat this input value as nodata")
    p.add_argument(
        "--stretch", type=stretch_rule, default=None,
        help="fixed:MIN,MAX[;MIN,MAX...] limits to use instead of measuring the 2-98 %% percentiles (default: measure)",
    )  # fmt: skip
    p.add_argument(
        "--max-samples", type=int_at_least(1), default=200,
        help="with --config: at most this many evenly spaced samples per training set",
    )  # fmt: skip
    p.add_argument("--out", help="write a config with the statistics (on top of --config, when given)")
    return parser, sub


# ---------------------------------------------------------------------------------------------------------
# predict over GeoTIFF scenes


def add_reading_options(p: argparse.ArgumentParser) -> None:
    """How a model is run over a GeoTIFF scene (window, batches, device, bands, stretch...), the same for every
    command that does it (predict, suggest, pseudolabels) and every task."""
    p.add_argument(
        "--window", type=int, default=None,
        help="window side in px, a multiple of the model's patch size (default: the crop the model was trained "
        "on, else 36 patches: 504 px for DINOv2)",
    )  # fmt: skip
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument("--batch-size", type=int_at_least(1), default=4, help="windows per forward pass")
    p.add_argument(
        "--workers", type=int_at_least(0), default=None,
        help="DataLoader workers reading windows (default: 2 for one scene; 0 for a CSV of scenes, where starting "
        "workers per scene costs more than they save)",
    )  # fmt: skip
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--bands", type=band_list,
        help="1-based bands to use, e.g. 1,2,3 (default: the bands the model was trained on; a model that does not say takes an RGB file as it is, alpha skipped)",
    )  # fmt: skip
    p.add_argument("--nodata", type=float, default=None, help="treat this input value as nodata")
    p.add_argument(
        "--stretch", type=stretch_rule, default=None,
        help="how non-8-bit inputs reach 0..255: shared (2-98 %% percentiles of all dates pooled), per-date, "
        "none (clip), fixed:MIN,MAX (or one MIN,MAX per band, ;-separated), or auto (uint8 as is, else shared) (default: what the model was trained "
        "with, else auto)",
    )  # fmt: skip
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument(
        "--yes", action="store_true",
        help="run a scene above a gigapixel without asking (otherwise its estimated time and size are shown first)",
    )  # fmt: skip
    p.add_argument("--which", choices=["auto", "ema", "model"], default="auto", help=WHICH_HELP)
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
        help="the model's arithmetic: fp32, or autocast to bf16 (faster on recent CPUs and GPUs) or fp16 (CUDA only)",
    )  # fmt: skip
    p.add_argument(
        "--amp", choices=["none", "bf16", "fp16"], dest="precision", action=AmpAlias, default=argparse.SUPPRESS,
        help="alias of --precision (none = fp32), the older name",
    )  # fmt: skip


class AmpAlias(argparse.Action):
    """`--amp none|bf16|fp16`, the older name of `--precision`: stored as the precision (none = fp32), so the
    commands, their records and the batch resume check see one name whichever was typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, "fp32" if values == "none" else values)


def add_scene_options(p: argparse.ArgumentParser) -> None:
    """The options of tile-and-predict over a GeoTIFF scene: how to run the model, and what to write."""
    add_reading_options(p)
    p.add_argument(
        "--probs", help="also write a probability raster (uint8 0-254 with band scale 1/254, 255 nodata)"
    )
    p.add_argument("--polygons", help="also write polygons (.gpkg or .geojson) with a QGIS style")
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this many m²")
    p.add_argument(
        "--simplify", type=float, default=0.0, help="simplify polygon outlines to this tolerance (CRS units)"
    )
    p.add_argument(
        "--view", metavar="DIR",
        help="also write a web map of the inputs and the prediction into this folder (see the view command)",
    )  # fmt: skip
    add_display_options(p)


def add_suggest_options(p: argparse.ArgumentParser) -> None:
    """`suggest`: which windows of a scene to label next."""
    add_reading_options(p)
    p.add_argument("--out", required=True, help="GeoPackage of the suggested windows (rank, score)")
    p.add_argument("--n", type=int_at_least(1), default=20, help="how many windows to suggest")
    p.add_argument(
        "--areas", nargs="+", default=None, metavar="FILE",
        help="polygon files of the areas already labelled: no suggestion touches them",
    )  # fmt: skip
    p.add_argument(
        "--cell", type=int_at_least(1), default=None,
        help="side in px of the suggested windows: your training config's data.window makes them line up with "
        "its windows (default: the prediction window)",
    )  # fmt: skip
    p.add_argument(
        "--min-distance", type=int_at_least(0), default=None,
        help="least distance in px between two suggestions' centres, at least one cell (default: two cells)",
    )  # fmt: skip


def _load_for_scene(args: argparse.Namespace, task: Task, rasters: Sequence[str]) -> Any:
    from semiseg.models.checkpoints import load_model
    from semiseg.predict import check_rasters_exist

    check_rasters_exist(rasters)  # before loading what may be a large model
    return load_model(args.checkpoint, task=task.name, which=args.which)


def reading_options(args: argparse.Namespace, task: Task, model: Any) -> dict[str, Any]:
    """`predict_scene` keyword arguments from the options of `add_reading_options`."""
    from semiseg.devices import pick_device
    from semiseg.predict import default_window

    return dict(
        device=pick_device(args.device), precision=args.precision, align=getattr(args, "align", "error"), bands=args.bands,
        nodata=args.nodata, stretch=args.stretch, window=args.window or default_window(model), overlap=args.overlap,
        batch_size=args.batch_size, num_workers=2 if args.workers is None else args.workers, tta=args.tta, yes=args.yes,
        tags={"classes": ",".join(model.meta["classes"]), "checkpoint": Path(args.checkpoint).name,
              "checkpoint_sha256": model.meta["source_sha256"], "task": task.name},
    )  # fmt: skip


def add_view_command(
    sub: Any, handler: Handler, help: str, example: str, rasters: Sequence[tuple[str, str]]
) -> argparse.ArgumentParser:
    """A task's `view` command: its own rasters (`rasters`: option and help, each required), then the options
    every task's view has."""
    p = add_command(sub, "view", handler, help, example)
    for option, text in rasters:
        p.add_argument(option, required=True, help=text)
    add_view_options(p)
    add_view_reading_options(p)
    return p


def add_view_options(p: argparse.ArgumentParser) -> None:
    """The options of `view` every task shares (after its own rasters): what else to show, and how."""
    p.add_argument("--out", required=True, help="the view folder to write (index.html and its tiles)")
    p.add_argument("--probs", help="the probability raster predict wrote (--probs): a layer, off at first")
    p.add_argument(
        "--polygons", help="the polygons predict wrote (--polygons): outlines, and a popup on click"
    )
    p.add_argument(
        "--truth",
        help="reference to draw as outlines: a label raster on the same grid (non-zero) or a polygon file",
    )
    add_display_options(p)


def add_display_options(p: argparse.ArgumentParser) -> None:
    """How `view` (and `predict --view`) shows a scene: pyramid depth and the title (bands, nodata and stretch
    are the reading options' when the command has them)."""
    p.add_argument(
        "--max-zoom", type=int_at_least(0), default=None,
        help="stop the tile pyramid at this level (0: the whole scene in one 256 px tile; each level doubles the "
        "resolution) (default: full resolution; a scene above 256 Mpx asks for this or --yes)",
    )  # fmt: skip
    p.add_argument("--title", help="the page's title (default: the inputs' roles and the class map's name)")


def add_view_reading_options(p: argparse.ArgumentParser) -> None:
    """Bands, nodata and stretch of the images a `view` shows (predict has its own, shared with the model)."""
    p.add_argument(
        "--bands", type=band_list,
        help="1-based bands to show as red, green, blue, e.g. 4,3,2 (default: the first three, alpha skipped)",
    )  # fmt: skip
    p.add_argument(
        "--nodata", type=float, default=None, help="treat this input value as nodata (transparent)"
    )
    p.add_argument(
        "--stretch", type=stretch_rule, default="auto",
        help="how non-8-bit images reach 0..255 for display, the same rule for every date: shared, per-date, "
        "none, fixed:MIN,MAX or auto (uint8 as is, else shared)",
    )  # fmt: skip
    p.add_argument(
        "--yes",
        action="store_true",
        help="build the full-resolution pyramid of a scene above 256 Mpx without asking",
    )


def write_view(
    args: argparse.Namespace,
    images: Sequence[str],
    classes: str,
    view: str,
    roles: Sequence[str],
    **options: Any,
) -> dict:
    """Build the view folder of `images` and their class map with the command's options; its record goes inside."""
    from semiseg.view import RECORD, build_view

    def write_record(folder: Path) -> None:
        record_command(folder / RECORD, args)

    return build_view(
        images, classes, view, roles=roles, align=getattr(args, "align", "error"), bands=args.bands,
        nodata=args.nodata, max_zoom=args.max_zoom, yes=args.yes, title=args.title,
        progress=sys.stderr.isatty(), record=write_record, **options,
    )  # fmt: skip


def view_command(args: argparse.Namespace, images: Sequence[str], classes: str, roles: Sequence[str]) -> int:
    """The body of every task's `view`: the web map of a scene and its prediction (`semiseg.view`)."""
    summary = write_view(
        args, images, classes, args.out, roles, stretch=args.stretch, probs=args.probs,
        polygons=args.polygons, truth=args.truth,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    print(f"open {summary['view']} in a browser (works offline)", file=sys.stderr)
    return 0


def _finish(args: argparse.Namespace, summary: dict, kind: str) -> int:
    out = Path(args.out)
    record_command(out.with_name(f"{out.stem}.{kind}.yaml"), args, summary)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def predict_scene_command(args: argparse.Namespace, task: Task, rasters: Sequence[str]) -> int:
    """The body of every task's GeoTIFF `predict`: check inputs, load the model, tile-and-predict, record."""
    from semiseg.api import predict
    from semiseg.predict import stretch_trained_with

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # N ranks would all compute and write the same --out
        option = "--pairs" if len(rasters) > 1 else "--images"
        raise SemisegError(
            f"one scene is predicted by one process: run it without torchrun, or under torchrun give {option} CSV "
            "--out-dir DIR (the scenes are shared out; one scene's windows are not split across ranks)"
        )
    if args.view:  # what the view would refuse is said before the prediction, not after it
        from semiseg.view import check_view_out, check_view_scene

        check_view_out(args.view, [*rasters, args.out, args.probs, args.polygons])
        check_view_scene(rasters[0], args.max_zoom, args.yes)
    model = _load_for_scene(args, task, rasters)
    summary = predict(
        model, *rasters, out=args.out, probs_path=args.probs, polygons_path=args.polygons,
        threshold=getattr(args, "threshold", None), min_area_m2=args.min_area, simplify=args.simplify,
        **reading_options(args, task, model),
    )  # fmt: skip
    if args.view:
        roles = ("before", "after") if len(rasters) == 2 else ("image",)
        view = write_view(
            args, rasters, args.out, args.view, roles, probs=args.probs, polygons=args.polygons,
            stretch=args.stretch or stretch_trained_with(model),
        )  # fmt: skip
        summary["view"] = view["view"]
    return _finish(args, summary, "predict")


def suggest_command(args: argparse.Namespace, task: Task, rasters: Sequence[str]) -> int:
    """The body of every task's `suggest`: the windows most worth labelling next (`semiseg.active`)."""
    return _review_command(
        args, task, rasters, "suggest_windows", "suggest",
        n=args.n, areas=args.areas, min_distance=args.min_distance, cell=args.cell,
    )  # fmt: skip


def pseudolabels_command(args: argparse.Namespace, task: Task, rasters: Sequence[str]) -> int:
    """`pseudolabels`: the model's confident change as polygons to review (`semiseg.active`)."""
    return _review_command(
        args, task, rasters, "pseudolabel_polygons", "pseudolabels", min_prob=args.min_prob, areas=args.areas
    )


def _review_command(
    args: argparse.Namespace, task: Task, rasters: Sequence[str], function: str, kind: str, **options: Any
) -> int:
    """Check the output, load the model, run `semiseg.active.<function>` over the scene, record."""
    from semiseg import active

    active.check_review_output(args.out)
    model = _load_for_scene(args, task, rasters)
    summary = getattr(active, function)(
        model, rasters, args.out, **options, **reading_options(args, task, model)
    )
    return _finish(args, summary, kind)


# ---------------------------------------------------------------------------------------------------------
# predict many scenes from a CSV (one model load, resumable, one summary; sharded under torchrun)


def add_batch_options(p: argparse.ArgumentParser, option: str, columns: Sequence[str]) -> None:
    """The options of a batch `predict`: the CSV of scenes and what each scene writes into --out-dir."""
    p.add_argument(
        f"--{option}", dest="scenes_csv", metavar="CSV",
        help=f"predict every row of this CSV (columns {', '.join(columns)}, optional name; relative paths are "
        "read from the CSV's folder) into --out-dir, loading the model once; run under torchrun to shard the "
        "rows over processes",
    )  # fmt: skip
    p.add_argument(
        "--out-dir",
        help=f"with --{option}: <name>.tif (+ polygons, probabilities) and <name>.json per scene, summary.csv and "
        "summary.geojson; scenes already complete there are skipped",
    )
    p.add_argument(
        "--polygon-format", choices=["gpkg", "geojson", "none"], default="gpkg",
        help=f"with --{option}: the polygons written per scene",
    )  # fmt: skip
    p.add_argument(
        "--with-probs", action="store_true", help=f"with --{option}: also write <name>.probs.tif per scene"
    )


def is_batch(args: argparse.Namespace, option: str, single: Sequence[str]) -> bool:
    """Whether the command predicts a CSV of scenes (--<option>) or one scene (the `single` options, --out);
    a mix of the two is refused."""
    if args.scenes_csv is None:
        missing = [f"--{o.replace('_', '-')}" for o in (*single, "out") if not getattr(args, o)]
        if missing:
            raise SemisegError(
                f"give {', '.join(missing)} (one scene), or --{option} CSV --out-dir DIR (many)"
            )
        return False
    mixed = [
        f"--{o.replace('_', '-')}" for o in (*single, "out", "probs", "polygons") if getattr(args, o, None)
    ]
    if mixed or not args.out_dir:
        raise SemisegError(
            f"--{option} predicts into --out-dir: drop {', '.join(mixed)}"
            if mixed
            else f"--{option} needs --out-dir"
        )
    return True


def predict_batch_command(args: argparse.Namespace, task: Task, columns: Sequence[str]) -> int:
    """The body of every task's batch `predict`: read the CSV, load the model once, predict this process's share
    of the scenes (`semiseg.batch`), and on rank 0 write the summary. Exit 1 when any scene failed."""
    from functools import partial

    from semiseg import batch
    from semiseg.api import predict
    from semiseg.models.checkpoints import load_model
    from semiseg.train.distributed import cleanup, init_distributed

    if getattr(args, "view", None):
        raise SemisegError(
            "--view maps one scene: with --pairs/--images, run `view` on the scenes you want to see"
        )
    jobs = batch.read_jobs(args.scenes_csv, columns)  # before loading what may be a large model
    info, device = init_distributed(args.device)
    try:
        token = batch.run_token(
            info.world_size
        )  # the last collective call: all ranks are here, none has worked
        model = load_model(args.checkpoint, task=task.name, which=args.which)
        options = {**reading_options(args, task, model), "device": device}
        if args.workers is None:  # worker processes started for every scene cost more than they save
            options["num_workers"] = 0
        predict_one = partial(
            predict, model, progress=False, threshold=getattr(args, "threshold", None),
            min_area_m2=args.min_area, simplify=args.simplify, **options,
        )  # fmt: skip
        outputs = batch.BatchOutputs(
            None if args.polygon_format == "none" else args.polygon_format, args.with_probs
        )
        shaping = {
            k: options[k]
            for k in ("window", "overlap", "tta", "bands", "stretch", "nodata", "align", "precision")
        }
        shaping.update(threshold=getattr(args, "threshold", None), min_area=args.min_area, simplify=args.simplify,
                       with_probs=args.with_probs, polygon_format=args.polygon_format, which=args.which)  # fmt: skip
        rows = batch.predict_jobs(
            predict_one, jobs, args.out_dir, model.meta["source_sha256"], outputs, info.rank, info.world_size,
            options=shaping,
        )  # fmt: skip
        mine = rows
        rows = batch.collect_rows(rows, args.out_dir, info.rank, info.world_size, token)
        if rows is not None:
            result = batch.batch_result(rows, *batch.write_summary(rows, args.out_dir))
            record_command(Path(args.out_dir) / "predict.yaml", args, result)
            print(json.dumps(result, indent=2))
            for name, error in result["failures"].items():
                print(f"{task.command}: {name} failed: {error}", file=sys.stderr)
            if result["failed"]:
                print(f"{task.command}: {result['failed']} of {len(rows)} scenes failed (see summary.csv)",
                      file=sys.stderr)  # fmt: skip
    finally:
        cleanup(info)
    return 1 if any(r["status"] == "failed" for r in rows or mine) else 0
