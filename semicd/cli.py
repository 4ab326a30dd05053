"""`semicd`: semi-supervised change detection: prepare data, train, evaluate, predict GeoTIFF scenes, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from semicd.task import TASK
from semiseg.cli import (
    CHECKPOINT_HELP,
    add_batch_options,
    add_command,
    add_reading_options,
    add_scene_options,
    add_suggest_options,
    add_view_command,
    is_batch,
    make_parser,
    predict_batch_command,
    predict_scene_command,
    pseudolabels_command,
    record_command,
    run_cli,
    suggest_command,
    view_command,
)
from semiseg.errors import SemisegError

PAIR_COLUMNS = ("before", "after")
ARCHIVE_NAMES = ("levir-cd", "whu-cd")  # semicd.data.download.ARCHIVES, named here so --help stays light


def cmd_predict(args: argparse.Namespace) -> int:
    if is_batch(args, "pairs", PAIR_COLUMNS):
        return predict_batch_command(args, TASK, PAIR_COLUMNS)
    return predict_scene_command(args, TASK, [args.before, args.after])


def cmd_suggest(args: argparse.Namespace) -> int:
    return suggest_command(args, TASK, [args.before, args.after])


def cmd_view(args: argparse.Namespace) -> int:
    return view_command(args, [args.before, args.after], args.change, ("before", "after"))


def cmd_pseudolabels(args: argparse.Namespace) -> int:
    return pseudolabels_command(args, TASK, [args.before, args.after])


def _pair_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--before", required=required, help="GeoTIFF of the earlier date (defines the output grid)"
    )
    p.add_argument("--after", required=required, help="GeoTIFF of the later date")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument(
        "--align", choices=["error", "reproject"], default="error",
        help="what to do when the grids differ: stop, or warp --after onto --before",
    )  # fmt: skip


def cmd_prepare(args: argparse.Namespace) -> int:
    from semicd.data.prepare import prepare_levir, prepare_whu

    if args.dataset == "levir":
        if not args.src:
            raise SemisegError(
                "semicd prepare levir needs --src (the release folder holding train/ val/ test/)"
            )
        summary = prepare_levir(args.src, args.out, tile=args.tile, overwrite=args.overwrite)
    else:
        if not (args.before and args.after and args.label):
            raise SemisegError("semicd prepare whu needs --before, --after and --label (the scene TIFFs)")
        summary = prepare_whu(
            args.before, args.after, args.label, args.out, tile=args.tile, overwrite=args.overwrite
        )
    record_command(Path(args.out) / "prepare.yaml", args, summary)
    print(json.dumps(summary))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from semicd.data.download import download_dataset

    summary = download_dataset(args.dataset, args.out, archive=args.archive)
    record_command(Path(args.out) / f"download-{args.dataset}.yaml", args, summary)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from semicd.data.splits import write_semicd_splits
    from semiseg.data.lists import read_name_list

    try:
        percents = tuple(float(p.rstrip("%")) for p in args.percents.split(","))
    except ValueError:
        raise SemisegError(
            f"--percents {args.percents!r}: give numbers separated by commas, e.g. 5,10,20,40"
        ) from None
    percents = tuple(int(p) if p.is_integer() else p for p in percents)
    names = read_name_list(args.list) if args.list else None
    counts = write_semicd_splits(args.root, args.out, names=names, percents=percents, seed=args.seed)
    print(json.dumps({f"{p}%": n for p, n in counts.items()}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semicd.demo import run_demo

    result = run_demo(args.out, size=args.size, iters=args.iters, seed=args.seed, rounds=args.rounds)
    print(json.dumps(result, indent=2))
    print(f"see the result: open {result['paths']['view']} in a browser (offline)")
    return 0


EXAMPLES = {
    "train": "semicd train --config configs/levir_cd.yaml --out runs/levir5 --set data.root=/data/LEVIR-CD-256",
    "eval": "semicd eval --checkpoint runs/levir5/best.pt --set data.root=/data/LEVIR-CD-256",
    "predict": "semicd predict --before 2019.tif --after 2023.tif --checkpoint runs/levir5/best.pt --out change.tif"
    " --polygons change.gpkg\n"
    "semicd predict --pairs pairs.csv --out-dir changes/ --checkpoint runs/levir5/best.pt   # columns before,after[,name]\n"
    "torchrun --nproc-per-node 4 -m semicd predict --pairs pairs.csv --out-dir changes/ --checkpoint best.pt",
    "suggest": "semicd suggest --before 2019.tif --after 2023.tif --checkpoint runs/scene/best.pt --areas labeled.gpkg"
    " --n 20 --out next.gpkg",
    "pseudolabels": "semicd pseudolabels --before 2019.tif --after 2023.tif --checkpoint runs/scene/best.pt"
    " --areas labeled.gpkg --min-prob 0.9 --out review.gpkg",
    "view": "semicd view --before 2019.tif --after 2023.tif --change change.tif --polygons change.gpkg --out view/",
    "prepare": "semicd prepare levir --src /data/LEVIR-CD --out /data/LEVIR-CD-256",
    "download": "semicd download levir-cd --out /data   # then --set data.root=/data/LEVIR-CD",
    "splits": "semicd splits --root /data/LEVIR-CD-256 --out /data/LEVIR-CD-256/splits",
    "demo": "semicd demo --out demo/",
}


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser(
        TASK,
        "Semi-supervised remote-sensing change detection (UniMatch V2 on a Siamese DINOv2 + DPT).",
        EXAMPLES,
    )

    p = add_command(
        sub,
        "predict",
        cmd_predict,
        "tile-and-predict a before/after GeoTIFF pair into a change map",
        EXAMPLES["predict"],
    )
    _pair_arguments(p, required=False)
    p.add_argument("--out", help="change map GeoTIFF (uint8 classes, 255 = nodata)")
    p.add_argument(
        "--threshold", type=float, default=None, help="change where P(change) >= this (default: argmax)"
    )
    add_scene_options(p)
    add_batch_options(p, "pairs", PAIR_COLUMNS)

    p = add_view_command(
        sub, cmd_view, "a web map of before / after / change: one offline folder, open index.html in any browser",
        EXAMPLES["view"],
        [("--before", "GeoTIFF of the earlier date (the map's grid)"), ("--after", "GeoTIFF of the later date"),
         ("--change", "the change map predict wrote for the pair (same grid)")],
    )  # fmt: skip
    p.add_argument(
        "--align", choices=["error", "reproject"], default="error",
        help="what to do when the dates' grids differ: stop, or warp --after onto --before (as predict did)",
    )  # fmt: skip

    p = add_command(
        sub, "suggest", cmd_suggest, "the windows of a scene most worth labelling next (uncertain and spread out)",
        EXAMPLES["suggest"],
    )  # fmt: skip
    _pair_arguments(p)
    add_suggest_options(p)

    p = add_command(
        sub, "pseudolabels", cmd_pseudolabels,
        "the model's confident change as polygons to review in QGIS (status: unreviewed)", EXAMPLES["pseudolabels"],
    )  # fmt: skip
    _pair_arguments(p)
    add_reading_options(p)
    p.add_argument("--out", required=True, help="GeoPackage of the polygons to review")
    p.add_argument("--min-prob", type=float, default=0.9, help="keep change where P(change) reaches this")
    p.add_argument(
        "--areas", nargs="+", default=None, metavar="FILE",
        help="polygon files of the areas already labelled: polygons touching them are left out",
    )  # fmt: skip

    p = add_command(
        sub,
        "prepare",
        cmd_prepare,
        "cut LEVIR-CD / WHU-CD releases into the 256 px tiles everyone uses",
        EXAMPLES["prepare"],
    )
    p.add_argument("dataset", choices=["levir", "whu"], help="which release")
    p.add_argument("--src", help="levir: the release folder holding train/ val/ test/")
    p.add_argument("--before", help="whu: the before-date scene TIFF")
    p.add_argument("--after", help="whu: the after-date scene TIFF")
    p.add_argument("--label", help="whu: the change label TIFF")
    p.add_argument("--out", required=True, help="the prepared root: A/, B/, label/ and the name lists")
    p.add_argument("--tile", type=int, default=256, help="tile side in px")
    p.add_argument("--overwrite", action="store_true", help="rewrite tiles that already exist")

    p = add_command(
        sub, "download", cmd_download,
        "fetch the official LEVIR-CD / WHU-CD tiles (UniMatch V2 archives on Hugging Face), verify them against the "
        "shipped lists and unpack them",
        EXAMPLES["download"],
    )  # fmt: skip
    p.add_argument("dataset", choices=sorted(ARCHIVE_NAMES), help="which dataset")
    p.add_argument(
        "--out", required=True,
        help="folder to unpack into: <out>/LEVIR-CD or <out>/WHU-CD (A/, B/, label/, train/val/test.txt), and "
        "checksums.yaml",
    )  # fmt: skip
    p.add_argument(
        "--archive",
        help="a local copy of the zip (downloaded elsewhere) instead of fetching it; it is verified the same way",
    )

    p = add_command(
        sub,
        "splits",
        cmd_splits,
        "seeded labeled/unlabeled lists by the SemiCD rule (seed 10, nested); not the official LEVIR-CD/WHU-CD lists, which ship in datasets/",
        EXAMPLES["splits"],
    )
    p.add_argument("--root", required=True, help="prepared dataset root (train.txt or train/A)")
    p.add_argument(
        "--list", help="the training tiles, one name per line, for layouts without train.txt or train/A"
    )
    p.add_argument("--out", required=True, help="writes <out>/<p>%%/labeled.txt and unlabeled.txt")
    p.add_argument("--percents", default="5,10,20,40", help="labeled percentages, comma-separated")
    p.add_argument("--seed", type=int, default=10, help="shuffle seed (10 is the SemiCD rule)")

    p = add_command(
        sub,
        "demo",
        cmd_demo,
        "synthetic scene -> train a tiny model -> change map, polygons, preview, web map (view/)",
        EXAMPLES["demo"],
    )
    p.add_argument("--out", required=True, help="folder for the scene, the run and the outputs")
    p.add_argument("--size", type=int, default=2048, help="scene side in px")
    p.add_argument(
        "--iters", type=int, default=480, help="training iterations (480: about 1.5 minutes on 2 CPU cores)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scene and the run")
    p.add_argument(
        "--rounds", type=int, choices=[1, 2], default=1,
        help="2: then label the windows `suggest` picks (from the truth) and train again, against as many random "
        "windows (about three times as long)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
