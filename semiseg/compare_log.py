"""Hold one of our runs against an official UniMatch V2 training log: a table, a plot and a verdict.

    semiseg compare-log runs/pascal_92 training-logs/table01-pascal_unimatch_v2_92labels_dinov2_base.log

Epochs are aligned by count: the official log's epoch e (0-based) is our `metrics.csv` row with `epoch` e + 1
(epochs completed). Our per-epoch losses are the mean of the training points the run logged to TensorBoard in that
epoch (every `train.log_every` iterations); without TensorBoard events, the last step's values that `log.txt`
prints at each epoch's end (noisier). The official losses are its running means over the epoch.

The verdict compares best scores, the protocol of the published tables (the best evaluation of either model, the
student or the EMA, over training), or, for a run that has not finished, the scores at the last epoch both have.
A gap within `spread` points is "within spread". The default spread, 1.0 point of mIoU (or change IoU), is our
choice: the official repository publishes one run per setting, so it gives no run-to-run spread to read, and
seed-to-seed differences of about a point are common in semi-supervised segmentation at these label counts.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegError
from semiseg.io import atomic_path, write_text_atomic
from semiseg.official_log import OfficialLog, parse_official_log

DEFAULT_SPREAD = 1.0
LOSS_KEYS = ("loss", "loss_x", "loss_u", "mask_ratio")
_EPOCH_LINE = re.compile(r"\bepoch (\d+)/\d+: (.*?)(?: \([0-9.]+s\))?$")
_VALUE = re.compile(r"(\w+)=([-+0-9.eE]+|nan|inf)")


@dataclass
class RunCurves:
    """Our run per epoch (1-based: epochs completed): evaluation scores and mean training losses."""

    metric: str
    scores: dict[int, dict[str, float]]
    losses: dict[int, dict[str, float]] = field(default_factory=dict)
    loss_source: str = "none"


def _read_metrics(run: Path) -> tuple[str, dict[int, dict[str, float]], int | None]:
    """(metric, epoch -> {student, ema, student_oa, ema_oa}, iterations per epoch) from `metrics.csv`."""
    path = run / "metrics.csv"
    if not path.is_file():
        raise SemisegError(
            f"{run} holds no metrics.csv: is it a run folder (train --out) with an evaluation?"
        )
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0]) if rows else set()
    metric = next((m for m in ("miou", "iou") if {f"student_{m}", f"ema_{m}"} & columns), None)
    if metric is None:
        raise SemisegError(f"{path} has no student_miou/ema_miou or student_iou/ema_iou column")
    scores: dict[int, dict[str, float]] = {}
    per_epoch = None
    for row in rows:
        epoch = float(row["epoch"])
        if not epoch.is_integer():
            continue  # a mid-epoch stop (train.max_iters): not comparable with an epoch's end
        values = {}
        for source in ("student", "ema"):
            for key, name in ((metric, source), ("oa", f"{source}_oa")):
                if row.get(f"{source}_{key}"):
                    values[name] = float(row[f"{source}_{key}"])
        scores[int(epoch)] = values  # a resumed run may repeat an epoch: the later row wins
        if row.get("iteration") and epoch > 0:
            per_epoch = round(int(row["iteration"]) / epoch)
    return metric, scores, per_epoch


def _losses_from_tensorboard(run: Path, per_epoch: int | None) -> dict[int, dict[str, float]]:
    if per_epoch is None or not (run / "tb").is_dir():
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    sums: dict[int, dict[str, list[float]]] = {}
    for key in LOSS_KEYS:
        if f"train/{key}" not in events.Tags().get("scalars", []):
            continue
        for event in events.Scalars(f"train/{key}"):
            epoch = (event.step - 1) // per_epoch + 1  # `step` counts optimiser steps done, from 1
            sums.setdefault(epoch, {}).setdefault(key, []).append(event.value)
    return {e: {k: sum(v) / len(v) for k, v in d.items()} for e, d in sums.items()}


def _losses_from_log(run: Path) -> dict[int, dict[str, float]]:
    path = run / "log.txt"
    if not path.is_file():
        return {}
    losses = {}
    for line in path.read_text(errors="replace").splitlines():
        if m := _EPOCH_LINE.search(line):
            values = {k: float(v) for k, v in _VALUE.findall(m.group(2)) if k in LOSS_KEYS}
            if values:
                losses[int(m.group(1))] = values
    return losses


def read_run(run: str | Path) -> RunCurves:
    """Our run folder's curves: scores from `metrics.csv`, losses from TensorBoard events or `log.txt`."""
    run = Path(run)
    if not run.is_dir():
        raise SemisegError(f"run folder not found: {run}")
    metric, scores, per_epoch = _read_metrics(run)
    losses, source = _losses_from_tensorboard(run, per_epoch), "tensorboard (mean of the logged points)"
    if not losses:
        losses, source = _losses_from_log(run), "log.txt (the last step of each epoch)"
    return RunCurves(metric, scores, losses, source if losses else "none")


# ---------------------------------------------------------------------------------------------------------
# Alignment, verdict, outputs


def _best(scores: dict[int, dict[str, float]]) -> tuple[float, int, str]:
    """(value, epoch, model) of the best student/EMA score."""
    return max(
        ((v, e, k) for e, s in scores.items() for k, v in s.items() if k in ("student", "ema")),
        default=(math.nan, 0, "-"),
    )


def _top(values: dict[str, float]) -> float:
    return max((v for k, v in values.items() if k in ("student", "ema")), default=math.nan)


def compare(ours: RunCurves, theirs: OfficialLog, spread: float = DEFAULT_SPREAD) -> dict[str, Any]:
    """Rows aligned by epoch, best and final scores of both, and the verdict (see the module doc)."""
    if ours.metric != theirs.metric:
        raise SemisegError(
            f"the run reports {ours.metric} but the official log {theirs.metric}: compare a segmentation run with "
            "a segmentation log and a change-detection run with a change-detection log"
        )
    official = {e + 1: r for e, r in theirs.epochs.items()}  # their 0-based epoch -> epochs completed
    rows = []
    for epoch in sorted(set(official) | set(ours.scores)):
        row: dict[str, Any] = {"epoch": epoch}
        for key in LOSS_KEYS:
            row[f"ours_{key}"] = ours.losses.get(epoch, {}).get(key)
            row[f"official_{key}"] = official[epoch].losses.get(key) if epoch in official else None
        for source in ("student", "ema"):
            row[f"ours_{source}"] = ours.scores.get(epoch, {}).get(source)
            row[f"official_{source}"] = official[epoch].scores.get(source) if epoch in official else None
        rows.append(row)
    common = sorted(set(official) & set(ours.scores))
    if not common:
        raise SemisegError("the run and the official log have no evaluated epoch in common")
    finished = max(ours.scores) >= max(official)
    best_ours, best_theirs = _best(ours.scores), _best({e: r.scores for e, r in official.items()})
    last = common[-1]
    if finished:
        gap, basis = best_ours[0] - best_theirs[0], "best scores"
    else:
        gap = _top(ours.scores[last]) - _top(official[last].scores)
        basis = f"epoch {last}, the last both have (the run has not finished)"
    if abs(gap) <= spread:
        verdict = f"within spread: {gap:+.2f} points ({basis}), |gap| <= {spread:g}"
    else:
        side = "below" if gap < 0 else "above"
        verdict = (
            f"gap exceeds spread: ours {side} official by {abs(gap):.2f} points ({basis}), spread {spread:g}"
        )
    return {
        "metric": ours.metric,
        "rows": rows,
        "best": {
            "ours": {"value": best_ours[0], "epoch": best_ours[1], "model": best_ours[2]},
            "official": {"value": best_theirs[0], "epoch": best_theirs[1], "model": best_theirs[2]},
        },
        "final": {
            "ours": {"epoch": max(ours.scores), **ours.scores[max(ours.scores)]},
            "official": {"epoch": max(official), **official[max(official)].scores},
        },
        "gap": gap,
        "spread": spread,
        "within_spread": abs(gap) <= spread,
        "verdict": verdict,
        "loss_source": ours.loss_source,
    }


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any], run: str, log: str) -> str:
    b, f, m = result["best"], result["final"], result["metric"]
    lines = [
        f"# {run} vs {log}",
        "",
        f"**Verdict**: {result['verdict']}.",
        "",
        f"| {m} | ours | official |",
        "|---|---|---|",
        f"| best | {_cell(b['ours']['value'])} ({b['ours']['model']}, epoch {b['ours']['epoch']}) | "
        f"{_cell(b['official']['value'])} ({b['official']['model']}, epoch {b['official']['epoch']}) |",
        f"| final student / EMA | {_cell(f['ours'].get('student'))} / {_cell(f['ours'].get('ema'))} (epoch "
        f"{f['ours']['epoch']}) | {_cell(f['official'].get('student'))} / {_cell(f['official'].get('ema'))} "
        f"(epoch {f['official']['epoch']}) |",
        "",
        f"Our losses: {result['loss_source']}; official: running means over each epoch.",
        "",
    ]
    header = list(result["rows"][0])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in header) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for who, style in (("official", "--"), ("ours", "-")):
        pts = [(r["epoch"], r[f"{who}_loss"]) for r in rows if r[f"{who}_loss"] is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=f"{who} total loss")
        for source, colour in (("student", "tab:blue"), ("ema", "tab:orange")):
            pts = [(r["epoch"], r[f"{who}_{source}"]) for r in rows if r[f"{who}_{source}"] is not None]
            if pts:
                ax2.plot(*zip(*pts), style, color=colour, label=f"{who} {source}")
    ax1.set(xlabel="epoch", title="training loss per epoch")
    ax2.set(xlabel="epoch", title=f"{result['metric']} ({result['verdict'].split(':')[0]})")
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def compare_log(
    run: str | Path, log: str | Path, out: str | Path | None = None, spread: float = DEFAULT_SPREAD
) -> dict[str, Any]:
    """Compare, then write `<out>/compare.csv` (the aligned rows), `compare.md` (summary and table) and
    `compare.png` (our curves over theirs); `out` defaults to the run folder. Returns the summary."""
    if spread < 0:
        raise SemisegError(f"--spread must be 0 or more, got {spread}")
    result = compare(read_run(run), parse_official_log(log), spread)
    out = Path(out) if out is not None else Path(run)
    if not out.is_dir():
        raise SemisegError(f"output folder does not exist: {out}")
    _write_csv(out / "compare.csv", result["rows"])
    write_text_atomic(out / "compare.md", markdown(result, Path(run).name, Path(log).name))
    _plot(out / "compare.png", result)
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["files"] = [str(out / n) for n in ("compare.csv", "compare.md", "compare.png")]
    return summary
