"""What a run leaves behind for people: log.txt, metrics.csv, TensorBoard events and curves.png.

Only the main process writes. TensorBoard and matplotlib are optional at import time so a missing backend never
stops training; their absence is logged once.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

from semiseg.io import atomic_path


def make_logger(out: Path, is_main: bool) -> logging.Logger:
    logger = logging.getLogger(f"semiseg.run.{out.resolve()}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if is_main:
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    return logger


class RunLog:
    def __init__(self, out: Path, is_main: bool, purge_step: int | None = None) -> None:
        self.out = out
        self.is_main = is_main
        self.logger = make_logger(out, is_main)
        self.writer = None
        self.train_rows: list[dict[str, float]] = []
        if is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"), purge_step=purge_step)
            except Exception as err:  # tensorboard missing or broken: keep training, say so once
                self.logger.info(f"TensorBoard disabled ({type(err).__name__}: {err})")

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def train_point(self, iteration: int, values: dict[str, float]) -> None:
        if self.is_main:
            self.train_rows.append({"iteration": iteration, **values})
            self.scalars("train", values, iteration)

    def metrics_row(self, row: dict[str, Any]) -> None:
        """Append one evaluation to metrics.csv (header written once, columns fixed by the first row)."""
        if not self.is_main:
            return
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def plot_curves(self, metric_key: str) -> None:
        """curves.png: training loss over iterations and the evaluation metric over epochs."""
        if not self.is_main:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as err:
            self.logger.info(f"curves.png skipped ({type(err).__name__})")
            return
        evals = []
        path = self.out / "metrics.csv"
        if path.exists():
            with open(path) as fh:
                evals = list(csv.DictReader(fh))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        rows = self.train_rows
        if rows:
            ax1.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], label="loss")
            for key in ("loss_x", "loss_u"):
                if key in rows[0]:
                    ax1.plot([r["iteration"] for r in rows], [r[key] for r in rows], label=key, alpha=0.7)
        ax1.set_xlabel("iteration")
        ax1.set_title("training loss (this session)")
        if rows:
            ax1.legend()
        for source in ("student", "ema"):
            pts = [
                (float(r["epoch"]), float(r[f"{source}_{metric_key}"]))
                for r in evals
                if r.get(f"{source}_{metric_key}")
            ]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=source)
        ax2.set_xlabel("epoch")
        ax2.set_title(metric_key)
        if ax2.lines:
            ax2.legend()
        fig.tight_layout()
        with atomic_path(self.out / "curves.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)
