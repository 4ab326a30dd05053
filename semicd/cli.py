"""`semicd`: semi-supervised change detection — prepare data, train, evaluate, predict GeoTIFF scenes, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from semiseg import __version__
from semiseg.cli import add_predict_options
from semiseg.cli_common import add_common_commands, run_cli, write_run_record


def cmd_predict(args: argparse.Namespace) -> int:
    from semiseg.predict_images import predict_scene_cli

    return predict_scene_cli(args, task="change_detection")


def cmd_prepare(args: argparse.Namespace) -> int:
    from semicd.data.prepare import prepare_levir, prepare_whu

    if args.dataset == "levir":
        summary = prepare_levir(args.src, args.out, tile=args.tile, overwrite=args.overwrite)
    else:
        if not (args.before and args.after and args.label):
            from semiseg.errors import SemisegError

            raise SemisegError("semicd prepare whu needs --before, --after and --label (the scene TIFFs)")
        summary = prepare_whu(
            args.before, args.after, args.label, args.out, tile=args.tile, overwrite=args.overwrite
        )
    write_run_record(Path(args.out) / "prepare.yaml", args, summary)
    print(json.dumps(summary))
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from semicd.data.splits import write_semicd_splits

    percents = tuple(float(p.rstrip("%")) for p in args.percents.split(","))
    percents = tuple(int(p) if p.is_integer() else p for p in percents)
    counts = write_semicd_splits(args.root, args.out, percents=percents, seed=args.seed)
    print(json.dumps({f"{p}%": n for p, n in counts.items()}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semicd.demo import run_demo

    result = run_demo(args.out, size=args.size, iters=args.iters, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semicd",
        description="Semi-supervised remote-sensing change detection (UniMatch V2 on a Siamese DINOv2 + DPT).",
    )
    parser.add_argument("--version", action="version", version=f"semicd {__version__}")
    sub = parser.add_subparsers(title="commands")
    add_common_commands(sub, "change_detection")

    p = sub.add_parser("predict", help="tile-and-predict a before/after GeoTIFF pair into a change map")
    p.add_argument("--before", required=True, help="GeoTIFF of the earlier date (defines the output grid)")
    p.add_argument("--after", required=True, help="GeoTIFF of the later date")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="change map GeoTIFF (uint8 classes, 255 = nodata)")
    p.add_argument(
        "--align",
        choices=["error", "reproject"],
        default="error",
        help="what to do when the grids differ: stop (default) or warp --after onto --before",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="change when P(change) >= this (default argmax)"
    )
    add_predict_options(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("prepare", help="cut LEVIR-CD / WHU-CD releases into the 256 px tiles everyone uses")
    p.add_argument("dataset", choices=["levir", "whu"])
    p.add_argument("--src", help="levir: the release folder holding train/ val/ test/")
    p.add_argument("--before", help="whu: the before-date scene TIFF")
    p.add_argument("--after", help="whu: the after-date scene TIFF")
    p.add_argument("--label", help="whu: the change label TIFF")
    p.add_argument("--out", required=True)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser("splits", help="labeled/unlabeled lists by the SemiCD rule (seed 10, nested)")
    p.add_argument("--root", required=True, help="prepared dataset root (train.txt or train/A)")
    p.add_argument("--out", required=True, help="writes <out>/<p>%%/labeled.txt and unlabeled.txt")
    p.add_argument("--percents", default="5,10,20,40")
    p.add_argument("--seed", type=int, default=10)
    p.set_defaults(handler=cmd_splits)

    p = sub.add_parser("demo", help="synthetic scene -> train a tiny model -> change map, polygons, preview")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=2048, help="scene side in px")
    p.add_argument(
        "--iters", type=int, default=480, help="training iterations (480: about 75 s on 2 CPU cores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
