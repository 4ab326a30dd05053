"""Run folders you can trust: one run at a time, every segment's config kept, no duplicate rows, clean stops."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fakes import make_segmentation_benchmark

from semiseg.config import load_config
from semiseg.errors import SemisegError
from semiseg.train.loop import train
from semiseg.train.run_folder import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]


def _sets(split: Path, *extra: str) -> list[str]:
    return [
        "data.dataset=folder", f"data.root={split.parent / 'data'}", f"data.split={split}", "data.nclass=3",
        "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny", "model.weights=null",
        "method.conf_thresh=0.5", "train.global_batch=null",  # toy data: no paper-sized steps
        "train.epochs=2", "optim.lr=1e-4", *extra,
    ]  # fmt: skip


def _cfg(split: Path, *extra: str):
    return load_config(None, _sets(split, *extra))


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "metrics.csv")))


def test_a_second_run_on_a_busy_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    out.mkdir()
    busy = {
        "pid": os.getppid(),
        "host": os.uname().nodename,
        "started": "2026-12-01 10:00:00",
    }  # alive: pytest's parent
    (out / LOCK_NAME).write_text(json.dumps(busy))
    with pytest.raises(
        SemisegError, match=rf"in use by process {busy['pid']} on .* since 2026-12-01 10:00:00"
    ):
        train(_cfg(split), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({**busy, "pid": dead.pid}))  # its process is gone: stale
    train(_cfg(split, "train.max_iters=1"), out, progress=False)
    assert (out / "latest.pt").is_file() and not (out / LOCK_NAME).exists()  # released at the end


def test_a_lock_from_another_host_is_respected_and_one_naming_this_process_is_stale(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    out.mkdir()
    other = {"pid": os.getpid(), "host": "another-node", "started": "2026-12-01 10:00:00"}
    (out / LOCK_NAME).write_text(
        json.dumps(other)
    )  # a shared filesystem: we cannot see that host's processes
    with pytest.raises(
        SemisegError, match=r"on another-node .* \(if that process is gone, delete .*\.lock\)$"
    ):
        train(_cfg(split), out, progress=False)
    # A restarted container keeps its host name and may give this process the id the dead run had.
    (out / LOCK_NAME).write_text(json.dumps({**other, "host": os.uname().nodename}))
    train(_cfg(split, "train.max_iters=1"), out, progress=False)
    assert (out / "latest.pt").is_file() and not (out / LOCK_NAME).exists()


def test_a_run_refused_before_training_leaves_no_folder(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    with pytest.raises(SemisegError, match="weights file not found"):
        train(_cfg(split, f"model.weights={tmp_path / 'missing.pth'}"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_reports_what_changed_and_keeps_each_segments_config(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    train(_cfg(split, "train.max_iters=2"), out, progress=False)
    train(_cfg(split, "optim.lr=5e-4"), out, progress=False)
    first, second = (
        yaml.safe_load((out / name).read_text()) for name in ("config.yaml", "config.resume-1.yaml")
    )
    assert first["optim"]["lr"] == 1e-4 and first["train"]["max_iters"] == 2
    assert second["optim"]["lr"] == 5e-4 and second["train"]["max_iters"] is None
    log = (out / "log.txt").read_text()
    assert "optim.lr: 0.0001 -> 0.0005" in log and "config.resume-1.yaml" in log
    # a change of method or of the schedule's length needs consent
    with pytest.raises(SemisegError, match=r"method.name: 'unimatch_v2' -> 'fixmatch'.*pass --force"):
        train(_cfg(split, "method.name=fixmatch", "train.epochs=3"), out, progress=False)
    with pytest.raises(SemisegError, match="a schedule of 8 iterations -> 12"):
        train(_cfg(split, "train.epochs=3"), out, progress=False)
    result = train(_cfg(split, "train.epochs=3"), out, progress=False, force=True)
    assert result["state"].iteration == 12 and (out / "config.resume-2.yaml").is_file()


def test_a_kill_between_the_metrics_row_and_the_checkpoint_leaves_no_duplicate_row(tmp_path, monkeypatch):
    import semiseg.train.loop as loop

    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    real_save, calls = loop.save_atomic, []

    def dies_at_the_second_save(obj, path):
        calls.append(path.name)
        if len(calls) == 3:  # epoch 2: metrics row appended, then the process dies before latest.pt is saved
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(loop, "save_atomic", dies_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(split), out, progress=False)
    assert [r["epoch"] for r in _rows(out)] == [
        "1",
        "2",
    ]  # the row of epoch 2 exists, its checkpoint does not
    monkeypatch.setattr(loop, "save_atomic", real_save)
    train(_cfg(split), out, progress=False)
    assert [r["epoch"] for r in _rows(out)] == ["1", "2"]  # epoch 2 was redone and recorded once
    assert "dropped 1 metrics.csv row" in (out / "log.txt").read_text()


def _logged(out: Path, text: str) -> bool:
    return (out / "log.txt").exists() and text in (out / "log.txt").read_text()


def test_sigterm_stops_after_the_step_saves_and_the_same_command_resumes(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=8)
    out = tmp_path / "run"
    sets = [a for s in _sets(split, "train.epochs=400", "train.log_every=1") for a in ("--set", s)]
    cmd = [
        sys.executable,
        "-m",
        "semiseg",
        "train",
        "--config",
        str(REPO / "configs/pascal.yaml"),
        "--out",
        str(out),
        *sets,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not _logged(out, "epoch 1/400"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]  # the training log goes to stderr too; the verdict is the last line
    assert last.startswith("semiseg: stopped by SIGTERM at iteration") and "run the same command" in last
    assert "Traceback" not in err
    stopped = torch.load(out / "latest.pt", weights_only=True)["state"]
    assert stopped["iteration"] >= 4 and not (out / LOCK_NAME).exists()
    resumed = subprocess.run([*cmd, "--set", f"train.max_iters={stopped['iteration'] + 1}"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "latest.pt", weights_only=True)["state"]["iteration"] == stopped["iteration"] + 1


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_previous_one_whole(
    tmp_path, monkeypatch
):
    """A full disk mid-save (torch raises RuntimeError "unexpected pos ..."): one line with the space needed,
    no temporary left behind, and the previous checkpoint still loads."""
    from semiseg.train import state

    path = tmp_path / "latest.pt"
    state.save_atomic({"format": state.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(4)}}, path)

    def disk_full(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 4653296192 vs 4653296092"
        )

    monkeypatch.setattr(state.torch, "save", disk_full)
    with pytest.raises(
        SemisegError, match=r"could not save the checkpoint .*latest.pt: about 0.0 GB needed, .* GB free"
    ) as err:
        state.save_atomic({"model": {"w": torch.ones(1000)}}, path)
    assert "\n" not in str(err.value) and sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    monkeypatch.undo()
    assert torch.equal(state.load_checkpoint(path)["model"]["w"], torch.zeros(4))


def test_an_error_that_is_not_a_failed_write_keeps_its_traceback(tmp_path, monkeypatch):
    from semiseg.train import state

    def device_error(obj, f):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(state.torch, "save", device_error)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        state.save_atomic({"w": torch.zeros(1)}, tmp_path / "latest.pt")
    assert list(tmp_path.iterdir()) == []
