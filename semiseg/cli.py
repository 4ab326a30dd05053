"""`semiseg`: train, evaluate, predict and make splits for semi-supervised semantic segmentation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from semiseg import __version__
from semiseg.cli_common import add_common_commands, run_cli
from semiseg.errors import SemisegError


def cmd_splits(args: argparse.Namespace) -> int:
    from pathlib import Path

    from semiseg.data.splits import list_training_images, list_val_images, make_splits, parse_labeled_amount

    items = list_training_images(args.dataset, args.root)
    val = list_val_images(args.dataset, args.root) if not args.no_val else []
    files = make_splits(items, parse_labeled_amount(args.labeled), args.seed, Path(args.out), val)
    n = sum(1 for line in open(files.labeled) if line.strip())
    print(f"wrote {files.labeled} ({n} labeled of {len(items)}), {files.unlabeled}, {files.val}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from semiseg.predict_images import predict_folder, predict_scene_cli

    if args.image:
        return predict_scene_cli(args, task="segmentation")
    if not args.input:
        raise SemisegError("give --image scene.tif (GeoTIFF) or --input folder/ (plain images)")
    return predict_folder(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semiseg",
        description="Semi-supervised semantic segmentation (UniMatch V2, FixMatch, supervised).",
    )
    parser.add_argument("--version", action="version", version=f"semiseg {__version__}")
    sub = parser.add_subparsers(title="commands")
    add_common_commands(sub, "segmentation")

    p = sub.add_parser(
        "predict", help="class masks for a folder of images, or a class map for a GeoTIFF scene"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", help="folder (or single file) of images; writes <out>/<name>.png palette masks")
    p.add_argument("--image", help="a GeoTIFF scene; writes a georeferenced class map to --out")
    p.add_argument("--out", required=True)
    add_predict_options(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("splits", help="write seeded labeled/unlabeled/val lists for a dataset")
    p.add_argument("--dataset", required=True, choices=["pascal", "cityscapes", "ade20k", "coco", "folder"])
    p.add_argument("--root", required=True)
    p.add_argument(
        "--labeled", required=True, help="a count (92), a fraction (1/16, 0.25) or a percentage (5%%)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for labeled.txt, unlabeled.txt, val.txt")
    p.add_argument("--no-val", action="store_true", help="do not list the val set")
    p.set_defaults(handler=cmd_splits)
    return parser


def add_predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--window", type=int, default=504, help="window side in px, a multiple of 14 (default 504)"
    )
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction (default 0.25)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers reading windows")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--bands", help="1-based bands to use, e.g. 1,2,3 (default: the first three)")
    p.add_argument("--nodata", type=float, default=None, help="treat this input value as nodata")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--probs", help="also write a probability raster (uint8 0-254, 255 nodata)")
    p.add_argument("--polygons", help="also write polygons (.gpkg or .geojson)")
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this many m²")
    p.add_argument("--which", choices=["auto", "ema", "model"], default="auto")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast on the device")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
