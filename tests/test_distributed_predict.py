"""Batch prediction under torchrun: two CPU processes (gloo) share the pairs and write the same bytes as one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fakes import change_pair, tiny_checkpoint, write_geotiff

from semicd.cli import main as semicd_main

REPO = Path(__file__).resolve().parents[1]


def test_two_ranks_write_byte_identical_rasters_to_one_rank(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        before, after = change_pair(rng)
        write_geotiff(tmp_path / f"a{i}.tif", before)
        write_geotiff(tmp_path / f"b{i}.tif", after)
        lines.append(f"a{i}.tif,b{i}.tif,pair{i}\n")
    (tmp_path / "pairs.csv").write_text("before,after,name\n" + "".join(lines))
    checkpoint = tiny_checkpoint(tmp_path / "cd")
    args = ["predict", "--pairs", str(tmp_path / "pairs.csv"), "--checkpoint", str(checkpoint),
            "--window", "28", "--workers", "0", "--device", "cpu", "--with-probs"]  # fmt: skip
    assert semicd_main([*args, "--out-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "semicd",
         *args, "--out-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rasters = sorted(p.name for p in (tmp_path / "one").glob("*.tif"))
    assert len(rasters) == 6  # three class maps, three probability rasters
    for name in rasters:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    rows = list(csv.DictReader((tmp_path / "two" / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [(f"pair{i}", "done") for i in range(3)]
    assert run.stdout.count('"scenes": 3') == 1  # one summary, from rank 0
    ranks = [json.loads((tmp_path / "two" / f"pair{i}.json").read_text())["rank"] for i in range(3)]
    assert ranks == [0, 1, 0]  # rank r predicted the pairs r, r + 2, ...


SLOW_RANK = """
import datetime, os, sys, time
import torch.distributed as dist
import semiseg.api

init = dist.init_process_group
dist.init_process_group = lambda *a, **k: init(*a, **{**k, "timeout": datetime.timedelta(seconds=3)})
predict = semiseg.api.predict
def slow(*a, **k):
    if os.environ["RANK"] == "1":
        time.sleep(8)  # far longer than the process group's timeout
    return predict(*a, **k)
semiseg.api.predict = slow
from semicd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_summary_is_written_however_long_one_rank_takes(tmp_path):
    """A rank that takes longer than the process group's timeout (shortened to 3 s here; 10 or 30 minutes in real
    runs) does not stop rank 0 from writing the summary: no collective call waits for the scenes."""
    rng = np.random.default_rng(0)
    for i in range(3):
        before, after = change_pair(rng)
        write_geotiff(tmp_path / f"a{i}.tif", before)
        write_geotiff(tmp_path / f"b{i}.tif", after)
    (tmp_path / "pairs.csv").write_text("before,after\n" + "".join(f"a{i}.tif,b{i}.tif\n" for i in range(3)))
    (tmp_path / "slow_rank.py").write_text(SLOW_RANK)
    checkpoint = tiny_checkpoint(tmp_path / "cd")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(tmp_path / "slow_rank.py"), "predict", "--pairs", str(tmp_path / "pairs.csv"), "--checkpoint",
         str(checkpoint), "--window", "28", "--workers", "0", "--device", "cpu", "--out-dir", str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "o" / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [(f"a{i}", "done") for i in range(3)]
    assert float(rows[1]["seconds"]) > 8  # rank 1's scene, slept through the timeout
    assert not list((tmp_path / "o").glob(".rows-*"))  # the rank files are gone once the summary is there


def test_one_pair_under_torchrun_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = semicd_main(["predict", "--before", "a.tif", "--after", "b.tif", "--out", str(tmp_path / "c.tif"),
                        "--checkpoint", "c.pt"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "give --pairs CSV --out-dir DIR" in err
    assert list(tmp_path.iterdir()) == []
