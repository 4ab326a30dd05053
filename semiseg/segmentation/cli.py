"""`semiseg`: train, evaluate, predict and make splits for semi-supervised semantic segmentation."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from semiseg.cli import (
    CHECKPOINT_HELP,
    add_batch_options,
    add_command,
    add_scene_options,
    add_suggest_options,
    add_view_command,
    is_batch,
    make_parser,
    predict_batch_command,
    predict_scene_command,
    record_command,
    run_cli,
    suggest_command,
    view_command,
)
from semiseg.errors import SemisegError
from semiseg.segmentation.benchmarks import SEGMENTATION_DATASETS
from semiseg.segmentation.task import TASK


def cmd_splits(args: argparse.Namespace) -> int:
    from semiseg.segmentation.layouts import (
        list_training_images,
        list_val_images,
        make_splits,
        parse_labeled_amount,
    )

    items = list_training_images(args.dataset, args.root)
    val = list_val_images(args.dataset, args.root) if not args.no_val else []
    files = make_splits(items, parse_labeled_amount(args.labeled), args.seed, Path(args.out), val)
    n = sum(1 for line in open(files.labeled) if line.strip())
    print(f"wrote {files.labeled} ({n} labeled of {len(items)}), {files.unlabeled}, {files.val}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    return suggest_command(args, TASK, [args.image])


IMAGE_COLUMNS = ("image",)


def cmd_view(args: argparse.Namespace) -> int:
    return view_command(args, [args.image], args.classes, ("image",))


def cmd_predict(args: argparse.Namespace) -> int:
    if args.scenes_csv is not None or args.image:
        if args.input:
            raise SemisegError("--input (plain images) goes alone: drop --image / --images")
        if is_batch(args, "images", ("image",)):
            return predict_batch_command(args, TASK, IMAGE_COLUMNS)
        return predict_scene_command(args, TASK, [args.image])
    if not args.input:
        raise SemisegError(
            "give --image scene.tif (GeoTIFF), --input folder/ (plain images) or --images scenes.csv (many GeoTIFFs)"
        )
    if not args.out:
        raise SemisegError("--input needs --out (the mask folder)")
    if args.view:
        raise SemisegError("--view maps a GeoTIFF scene: use it with --image, not --input")
    from semiseg.devices import pick_device
    from semiseg.models.checkpoints import load_model
    from semiseg.predict import predict_folder

    model = load_model(args.checkpoint, task=TASK.name, which=args.which)
    summary = predict_folder(
        model, args.input, args.out, device=pick_device(args.device), precision=args.precision, tta=args.tta
    )
    record_command(Path(args.out) / "predict.yaml", args, summary)
    print(json.dumps(summary))
    return 0


EXAMPLES = {
    "train": "semiseg train --config configs/pascal.yaml --out runs/pascal92 --set data.root=/data/VOC2012",
    "eval": "semiseg eval --checkpoint runs/pascal92/best.pt --set data.root=/data/VOC2012",
    "suggest": "semiseg suggest --checkpoint runs/landcover/best.pt --image scene.tif --areas labeled.gpkg --out next.gpkg",
    "predict": "semiseg predict --checkpoint runs/pascal92/best.pt --input photos/ --out masks/\n"
    "semiseg predict --checkpoint runs/landcover/best.pt --image scene.tif --out classes.tif\n"
    "semiseg predict --checkpoint runs/landcover/best.pt --images scenes.csv --out-dir maps/   # columns image[,name]",
    "view": "semiseg view --image scene.tif --classes classes.tif --polygons classes.gpkg --out view/",
    "splits": "semiseg splits --dataset pascal --root /data/VOC2012 --labeled 92 --out datasets/pascal/92",
}


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser(
        TASK, "Semi-supervised semantic segmentation (UniMatch V2, FixMatch, supervised).", EXAMPLES
    )

    p = add_command(
        sub,
        "predict",
        cmd_predict,
        "class masks for a folder of images, or a class map for a GeoTIFF scene",
        EXAMPLES["predict"],
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--input", help="folder (or single file) of images; writes <out>/<name>.png palette masks")
    p.add_argument("--image", help="a GeoTIFF scene; writes a georeferenced class map to --out")
    p.add_argument("--out", help="mask folder (--input) or class-map GeoTIFF (--image)")
    add_scene_options(p)
    add_batch_options(p, "images", IMAGE_COLUMNS)

    p = add_command(
        sub,
        "suggest",
        cmd_suggest,
        "the windows of a GeoTIFF scene most worth labelling next",
        EXAMPLES["suggest"],
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--image", required=True, help="the GeoTIFF scene")
    add_suggest_options(p)

    add_view_command(
        sub, cmd_view,
        "a web map of a GeoTIFF scene and its class map: one offline folder, open index.html in any browser",
        EXAMPLES["view"],
        [("--image", "the GeoTIFF scene"), ("--classes", "the class map predict wrote for it (same grid)")],
    )  # fmt: skip

    p = add_command(
        sub,
        "splits",
        cmd_splits,
        "write seeded labeled/unlabeled/val lists for a dataset",
        EXAMPLES["splits"],
    )
    p.add_argument(
        "--dataset", required=True, choices=list(SEGMENTATION_DATASETS), help="the layout under --root"
    )
    p.add_argument("--root", required=True, help="the dataset root")
    p.add_argument(
        "--labeled", required=True, help="a count (92), a fraction (1/16, 0.25) or a percentage (5%%)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the shuffle (the same seed gives nested splits)"
    )
    p.add_argument("--out", required=True, help="folder for labeled.txt, unlabeled.txt, val.txt")
    p.add_argument("--no-val", action="store_true", help="do not list the val set")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
