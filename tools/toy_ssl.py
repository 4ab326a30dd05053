"""A semi-supervised toy problem that trains on a CPU in minutes: does unlabeled data help, end to end?

It writes a synthetic `folder` dataset (textured shapes whose class is their texture and colour, see
`semiseg.segmentation.synthetic`), keeps a few images labeled and the rest unlabeled, trains each method through the real
trainer (`semiseg.train.loop.train`) with the same `tiny` encoder, the same iteration budget and the same
seed, and prints a JSON table of final and best val mIoU per method, per seed and averaged.

Fairness rules (so the comparison means something):
- same iterations: a semi-supervised epoch is one pass over the unlabeled set (len(unlabeled) / batch
  iterations); the supervised baseline gets `data.nsample = 2 * len(unlabeled)` labeled samples per epoch at
  its official batch of 2 x batch, which is the same number of iterations per epoch;
- same optimiser, LR schedule, crop and encoder; the encoder is randomly initialised (no download), so the
  toy defaults use a larger LR than the DINOv2 recipe (`optim.lr=5e-4`, `optim.lr_multi=1`) and a lower
  confidence threshold (`method.conf_thresh=0.8`: a from-scratch teacher is rarely 95 % sure early on);
- "final" is the last evaluation (the EMA teacher for fixmatch/unimatch_v2, the student for supervised);
  "best" is the best evaluation over training and over student/EMA, i.e. the official protocol of reporting
  the best epoch on the evaluation set.

    python tools/toy_ssl.py                              # 3 methods, seed 0, ~5 min on 2 cores
    python tools/toy_ssl.py --seeds 0 1 --set optim.lr=1e-3 --methods supervised unimatch_v2
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from semiseg.models.specs import encoder_spec

# The toy recipe; every entry can be overridden with --set key=value.
TOY_DEFAULTS = {
    "data.dataset": "folder",
    "data.workers": 0,
    "data.ratio_range": "[0.75, 1.5]",
    "model.encoder": "tiny",
    "model.weights": "null",
    "optim.lr": 5e-4,
    "optim.lr_multi": 1,
    "method.conf_thresh": 0.8,
    "train.device": "cpu",
    "train.log_every": 1000,
    "eval.model": "both",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare methods on a synthetic semi-supervised task (CPU).")
    p.add_argument("--methods", nargs="+", default=["supervised", "fixmatch", "unimatch_v2"])
    p.add_argument("--extras", nargs="*", default=[], help="method.extras for the semi-supervised methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (train.seed)")
    p.add_argument("--labeled", type=int, default=8, help="labeled training images")
    p.add_argument("--unlabeled", type=int, default=192, help="unlabeled training images")
    p.add_argument("--val", type=int, default=40, help="validation images")
    p.add_argument("--size", type=int, default=56, help="image side and crop (multiple of 14)")
    p.add_argument("--nclass", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic images and the split")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (1 is fastest on a busy box)"
    )
    p.add_argument("--out", default=None, help="keep runs here (default: a temporary folder, deleted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    patch = encoder_spec(TOY_DEFAULTS["model.encoder"]).patch_size
    if args.size % patch:
        p.error(f"--size {args.size} is not a multiple of {patch} (the encoder's patch size)")
    return args


def make_dataset(root: Path, args: argparse.Namespace) -> Path:
    """Write images + masks and a split folder (labeled.txt, unlabeled.txt, val.txt); returns the split folder."""
    from semiseg.segmentation.layouts import list_training_images, list_val_images, make_splits
    from semiseg.segmentation.synthetic import write_folder_dataset

    n_train = args.labeled + args.unlabeled
    write_folder_dataset(root, n_train, args.val, args.nclass, (args.size, args.size), seed=args.data_seed)
    split = root / "split"
    make_splits(
        list_training_images("folder", root),
        args.labeled,
        args.data_seed,
        split,
        list_val_images("folder", root),
    )
    return split


def method_overrides(method: str, args: argparse.Namespace, root: Path, split: Path, seed: int) -> list[str]:
    sets = {**TOY_DEFAULTS}
    sets.update(
        {
            "data.root": str(root),
            "data.split": str(split),
            "data.nclass": args.nclass,
            "data.crop_size": args.size,
            "data.batch_size": args.batch,
            "method.name": method,
            "train.epochs": args.epochs,
            "train.seed": seed,
        }
    )
    if method == "supervised":
        sets["data.nsample"] = 2 * args.unlabeled  # same iterations per epoch as the unlabeled pass
    elif args.extras:
        sets["method.extras"] = f"[{','.join(args.extras)}]"
    return [f"{k}={v}" for k, v in sets.items()] + list(args.overrides)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Final and best mIoU of one run from its metrics.csv (one row per evaluation)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeError(f"{run_dir}/metrics.csv has no evaluation rows")

    def value(row: dict[str, str], source: str) -> float | None:
        v = row.get(f"{source}_miou")
        return float(v) if v not in (None, "") else None

    last = rows[-1]
    final_student, final_ema = value(last, "student"), value(last, "ema")
    every = [v for row in rows for v in (value(row, "student"), value(row, "ema")) if v is not None]
    return {
        "final_miou": final_ema if final_ema is not None else final_student,
        "final_student_miou": final_student,
        "final_ema_miou": final_ema,
        "best_miou": max(every),
        "evaluations": len(rows),
        "iterations": int(last["iteration"]),
    }


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from semiseg.config import load_config
    from semiseg.train.loop import train

    t_data = time.time()
    split = make_dataset(work / "data", args)
    data_seconds = round(time.time() - t_data, 1)
    table: dict[str, Any] = {}
    for method in args.methods:
        runs = {}
        for seed in args.seeds:
            cfg = load_config(None, method_overrides(method, args, work / "data", split, seed))
            run_dir = work / "runs" / f"{method}_seed{seed}"
            t0 = time.time()
            train(cfg, run_dir, progress=False)
            runs[str(seed)] = {**read_metrics(run_dir), "seconds": round(time.time() - t0, 1)}
            print(f"{method} seed {seed}: {runs[str(seed)]}", file=sys.stderr, flush=True)
        table[method] = {
            "per_seed": runs,
            "mean_final_miou": round(statistics.mean(r["final_miou"] for r in runs.values()), 2),
            "mean_best_miou": round(statistics.mean(r["best_miou"] for r in runs.values()), 2),
        }
    return {
        "task": "toy_ssl",
        "setup": {
            "labeled": args.labeled,
            "unlabeled": args.unlabeled,
            "val": args.val,
            "size": args.size,
            "nclass": args.nclass,
            "batch": args.batch,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "extras": args.extras,
            "recipe": {**TOY_DEFAULTS, **dict(o.split("=", 1) for o in args.overrides)},
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "data_seconds": data_seconds,
        },
        "results": table,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if (out / "runs").exists():
            raise SystemExit(f"{out}/runs already exists: a toy run starts from scratch, pick a new --out")
        result = run_all(args, out)
    else:
        with tempfile.TemporaryDirectory(prefix="toy-ssl-") as tmp:
            result = run_all(args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
