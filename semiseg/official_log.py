"""Read a training log of the official UniMatch V2 code (its `training-logs/*.log`, or a log of your own run of it).

The official repository ships the log of every published number; these are the yardstick a reproduction is held
against (`semiseg compare-log`). Only the lines the official scripts print are read, per epoch:

    ===========> Epoch: 3, Previous best: ...                       (0-based epoch header)
    Iters: 81, LR: 0.0000049, Total loss: 0.049, Loss x: 0.032, Loss s: 0.067, Mask ratio: 0.854
    ***** Evaluation original ***** >>>> MeanIoU: 70.54, EMA: 75.00           (segmentation)
    ***** Evaluation ***** >>>> Changed IoU: 71.43: EMA: 71.00                (change detection)
    ***** Evaluation ***** >>>> Overall Accuracy: 98.39, EMA: 98.27

`Iters` is the index inside the epoch and the losses are running means since the epoch began, so the last
`Iters` line of an epoch is that epoch's mean (up to the last logged iteration). Supervised logs print only
`Total loss` and no `EMA`. A log resumed from a checkpoint repeats epochs; the later lines win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from semiseg.errors import SemisegError

_EPOCH = re.compile(r"=+> Epoch: (\d+)")
_ITERS = re.compile(r"Iters: (\d+),(.*)$")
_PAIR = re.compile(r"([A-Za-z][A-Za-z ]*?): ([-+0-9.eE]+)")
_MEAN_IOU = re.compile(r"Evaluation[^>]*>>>> MeanIoU: ([0-9.]+)(?:, EMA: ([0-9.]+))?")
_CHANGED_IOU = re.compile(r"Evaluation[^>]*>>>> Changed IoU: ([0-9.]+)(?:: EMA: ([0-9.]+))?")
_OA = re.compile(r"Evaluation[^>]*>>>> Overall Accuracy: ([0-9.]+)(?:, EMA: ([0-9.]+))?")

# Official loss names -> ours (`semiseg.methods` logs): the same quantities, computed the same way.
LOSS_NAMES = {"Total loss": "loss", "Loss x": "loss_x", "Loss s": "loss_u", "Mask ratio": "mask_ratio"}


@dataclass
class EpochRecord:
    """One epoch of a log: the epoch's mean training losses (our names) and its evaluation scores
    (`student`/`ema` of the primary metric, `student_oa`/`ema_oa` for change detection)."""

    losses: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class OfficialLog:
    metric: str  # our name of the primary metric: `miou` (segmentation) or `iou` (change class)
    epochs: dict[int, EpochRecord]  # 0-based epoch -> record, in order


def _add_scores(record: EpochRecord, match: re.Match, prefix: str = "") -> None:
    record.scores[f"student{prefix}"] = float(match.group(1))
    if match.group(2) is not None:
        record.scores[f"ema{prefix}"] = float(match.group(2))


def parse_official_log(path: str | Path) -> OfficialLog:
    """Parse an official UniMatch V2 training log (segmentation or change detection) into per-epoch records."""
    path = Path(path)
    if not path.is_file():
        raise SemisegError(f"official log not found: {path}")
    epochs: dict[int, EpochRecord] = {}
    metric: str | None = None
    current: EpochRecord | None = None
    for line in path.read_text(errors="replace").splitlines():
        if m := _EPOCH.search(line):
            current = epochs[int(m.group(1))] = EpochRecord()
        elif current is None:
            continue
        elif m := _ITERS.search(line):
            pairs = {name.strip(): float(v) for name, v in _PAIR.findall(m.group(2))}
            current.losses = {ours: pairs[theirs] for theirs, ours in LOSS_NAMES.items() if theirs in pairs}
        elif m := _MEAN_IOU.search(line):
            metric = metric or "miou"
            _add_scores(current, m)
        elif m := _CHANGED_IOU.search(line):
            metric = metric or "iou"
            _add_scores(current, m)
        elif m := _OA.search(line):
            _add_scores(current, m, "_oa")
    evaluated = {e: r for e, r in sorted(epochs.items()) if r.scores}
    if metric is None or not evaluated:
        raise SemisegError(
            f"{path} has no evaluation lines of the official UniMatch V2 format ('Epoch: N' headers followed by "
            "'Evaluation ... >>>> MeanIoU: x' or '... Changed IoU: x'): is it an official training log?"
        )
    return OfficialLog(metric, evaluated)
