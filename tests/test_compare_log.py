"""`compare-log`: official UniMatch V2 logs parsed, our run folders read, aligned by epoch, judged against a spread."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import make_segmentation_benchmark

from semicd.cli import main as semicd_main
from semiseg.compare_log import compare_log, read_run
from semiseg.errors import SemisegError
from semiseg.official_log import parse_official_log
from semiseg.segmentation.cli import main as semiseg_main

REPO = Path(__file__).resolve().parents[1]
STAMP = "[2024-08-21 12:59:17,846][    INFO] "


def official_segmentation_log(
    path: Path, scores: list[tuple[float, float]], resumed_at: int | None = None
) -> Path:
    """A log as the official unimatch_v2.py prints it: config dump, per-epoch header, running-mean `Iters` lines,
    per-class lines, then `MeanIoU: student, EMA: ema`; optionally a resume that repeats an epoch."""
    lines = [STAMP + "{'backbone': 'dinov2_base',", " 'lr': 5e-06}", "", STAMP + "Total params: 97.5M"]

    def epoch(e: int, student: float, ema: float, loss: float) -> None:
        lines.append(STAMP + f"===========> Epoch: {e}, Previous best: 0.00 @epoch-0, EMA: 0.00 @epoch-0")
        for i, factor in ((0, 2.0), (81, 1.0)):
            lines.append(
                STAMP
                + f"Iters: {i}, LR: 0.0000050, Total loss: {loss * factor:.3f}, Loss x: {2 * loss * factor:.3f}, "
                f"Loss s: {0.01 * factor:.3f}, Mask ratio: {0.5 + 0.01 * e:.3f}"
            )
        lines.append(STAMP + "***** Evaluation ***** >>>> Class [0 background] IoU: 93.10, EMA: 93.20")
        lines.append(STAMP + f"***** Evaluation original ***** >>>> MeanIoU: {student:.2f}, EMA: {ema:.2f}")
        lines.append("")

    for e, (student, ema) in enumerate(scores):
        epoch(e, student, ema, loss=0.1 / (e + 1))
        if resumed_at == e:
            lines.append(STAMP + f"************ Load from checkpoint at epoch {e}")
            epoch(e, student + 1.0, ema + 1.0, loss=0.1 / (e + 1))  # the later lines win
    path.write_text("\n".join(lines) + "\n")
    return path


def our_run_folder(run: Path, scores: list[tuple[float, float]], per_epoch: int = 4) -> Path:
    """A run folder as our trainer leaves it, without TensorBoard: metrics.csv and log.txt's epoch lines."""
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "iteration", "student_miou", "ema_miou"])
        writer.writeheader()
        for e, (student, ema) in enumerate(scores, start=1):
            writer.writerow(
                {"epoch": e, "iteration": e * per_epoch, "student_miou": student, "ema_miou": ema}
            )
    log = [
        f"2026-01-01 00:00:00 epoch {e}/{len(scores)}: loss=0.{e} loss_x=0.2 loss_u=0.03 mask_ratio=0.6 lr=5e-06 (1.0s)"
        for e in range(1, len(scores) + 1)
    ]
    (run / "log.txt").write_text("\n".join(log) + "\n")
    return run


def test_the_official_log_is_read_per_epoch_with_running_mean_losses_and_both_models(tmp_path):
    log = parse_official_log(
        official_segmentation_log(tmp_path / "o.log", [(70.5, 75.0), (80.0, 81.0)], resumed_at=1)
    )
    assert log.metric == "miou" and list(log.epochs) == [0, 1]
    first = log.epochs[0]
    assert first.scores == {"student": 70.5, "ema": 75.0}
    assert first.losses == {
        "loss": 0.1,
        "loss_x": 0.2,
        "loss_u": 0.01,
        "mask_ratio": 0.5,
    }  # the last Iters line
    assert log.epochs[1].scores == {"student": 81.0, "ema": 82.0}  # the resumed copy of epoch 1


def test_change_detection_and_supervised_official_lines_are_read(tmp_path):
    cd = tmp_path / "cd.log"
    cd.write_text(
        "\n".join(
            STAMP + text
            for text in (
                "===========> Epoch: 0, LR: 0.0000050, Previous best Changed IoU: 0.00, Overall Accuracy: 0.00",
                "Iters: 0, Total loss: 0.345, Loss x: 0.690, Loss s: 0.000, Mask ratio: 0.000",
                "***** Evaluation ***** >>>> Unchanged IoU: 98.32, EMA: 98.19",
                "***** Evaluation ***** >>>> Changed IoU: 71.43: EMA: 71.00",
                "***** Evaluation ***** >>>> Overall Accuracy: 98.39, EMA: 98.27",
            )
        )
    )
    log = parse_official_log(cd)
    assert log.metric == "iou"
    assert log.epochs[0].scores == {"student": 71.43, "ema": 71.0, "student_oa": 98.39, "ema_oa": 98.27}
    sup = tmp_path / "sup.log"
    sup.write_text(
        STAMP + "===========> Epoch: 0, LR: 0.00001, Previous best: 0.00\n" + STAMP + "Iters: 11, Total loss: 1.594\n"
        + STAMP + "***** Evaluation original ***** >>>> MeanIoU: 70.82\n"
    )  # fmt: skip
    log = parse_official_log(sup)
    assert log.epochs[0].scores == {"student": 70.82} and log.epochs[0].losses == {"loss": 1.594}
    (tmp_path / "other.log").write_text("hello\n")
    with pytest.raises(SemisegError, match="no evaluation lines"):
        parse_official_log(tmp_path / "other.log")


def test_compare_aligns_epochs_and_judges_best_scores_against_the_spread(tmp_path):
    theirs = official_segmentation_log(tmp_path / "o.log", [(70.0, 72.0), (78.0, 80.0), (79.0, 79.5)])
    run = our_run_folder(tmp_path / "run", [(69.0, 71.0), (77.0, 79.2), (78.0, 79.0)])
    assert read_run(run).loss_source.startswith("log.txt")
    summary = compare_log(run, theirs)
    assert summary["best"]["ours"] == {"value": 79.2, "epoch": 2, "model": "ema"}
    assert summary["best"]["official"] == {"value": 80.0, "epoch": 2, "model": "ema"}
    assert summary["gap"] == pytest.approx(-0.8) and summary["within_spread"]
    assert summary["final"]["official"] == {"epoch": 3, "student": 79.0, "ema": 79.5}
    rows = list(csv.DictReader(open(run / "compare.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # their epoch 0 is our first completed epoch
    assert (rows[0]["official_ema"], rows[0]["ours_ema"], rows[0]["ours_loss"]) == ("72", "71", "0.1")
    assert rows[1]["official_loss"] == "0.05"
    md = (run / "compare.md").read_text()
    assert "within spread" in md and "| best | 79.2 (ema, epoch 2) | 80 (ema, epoch 2) |" in md
    assert (run / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    strict = compare_log(run, theirs, out=tmp_path, spread=0.5)
    assert not strict["within_spread"] and "ours below official by 0.80" in strict["verdict"]


def test_an_unfinished_run_is_judged_at_the_last_common_epoch(tmp_path):
    theirs = official_segmentation_log(tmp_path / "o.log", [(70.0, 72.0), (78.0, 80.0), (90.0, 90.0)])
    run = our_run_folder(tmp_path / "run", [(69.0, 71.0), (74.0, 75.0)])
    summary = compare_log(run, theirs)
    assert summary["gap"] == pytest.approx(-5.0) and "epoch 2, the last both have" in summary["verdict"]


def test_compare_log_command_on_a_real_run_of_ours_for_both_tasks_commands(tmp_path, capsys):
    from semiseg.config import load_config
    from semiseg.train.loop import train

    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=4)
    cfg = load_config(
        None,
        [
            "data.dataset=folder", f"data.root={split.parent / 'data'}", f"data.split={split}", "data.nclass=3",
            "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny", "train.epochs=2",
            "train.log_every=1",
        ],
    )  # fmt: skip
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    ours = read_run(run)
    assert ours.loss_source.startswith("tensorboard") and set(ours.losses) == {1, 2}
    assert set(ours.losses[1]) == {"loss", "loss_x", "loss_u", "mask_ratio"}
    student, ema = ours.scores[2]["student"], ours.scores[2]["ema"]
    theirs = official_segmentation_log(tmp_path / "o.log", [(0.0, 0.0), (student + 0.3, ema + 0.3)])
    assert semiseg_main(["compare-log", str(run), str(theirs), "--spread", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("within spread") and json.loads(out.split("\n", 1)[1])["within_spread"]
    assert (
        semicd_main(["compare-log", str(run), str(theirs), "--out", str(tmp_path)]) == 0
    )  # the shared command
    assert (tmp_path / "compare.md").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["RUN", "missing.log"], "official log not found"),
        (["nowhere", "LOG"], "run folder not found"),
        (["RUN", "LOG", "--spread", "-1"], "--spread must be 0 or more"),
    ],
)
def test_compare_log_user_errors_are_one_line(tmp_path, args, message):
    run = our_run_folder(tmp_path / "run", [(1.0, 2.0)])
    log = official_segmentation_log(tmp_path / "o.log", [(1.0, 2.0)])
    args = [str(run) if a == "RUN" else str(log) if a == "LOG" else a for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "semicd", "compare-log", *args], capture_output=True, text=True, cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
