"""The benchmark and toy tools run as scripts and print the JSON the benchmark write-up is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
OFFICIAL = Path("/tmp/official")


def run_tool(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(TOOLS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=TOOLS.parent,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["bench_model.py", "bench_train_step.py", "bench_predict.py", "toy_ssl.py"])
def test_tool_help_describes_its_flags(name):
    proc = run_tool(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--encoder" in proc.stdout or "--methods" in proc.stdout


def test_bench_model_prints_one_object_per_configuration():
    proc = run_tool(
        "bench_model.py", "--encoder", "tiny", "--crop", "28", "--batch", "1", "2",
        "--task", "change_detection", "--device", "cpu", "--warmup", "1", "--iters", "1", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [(r["crop"], r["batch"]) for r in rows] == [(28, 1), (28, 2)]
    for r in rows:
        assert r["task"] == "change_detection" and r["threads"] == 1 and r["torch"]
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0
        assert r["forward_backward_peak_rss_mb"] >= r["forward_peak_rss_mb"] > 0
        assert r["forward_backward_peak_rss_delta_mb"] >= 0


def test_bench_model_rejects_a_crop_that_is_not_a_multiple_of_14():
    proc = run_tool("bench_model.py", "--encoder", "tiny", "--crop", "30", "--device", "cpu")
    assert proc.returncode != 0
    assert "multiple of 14" in proc.stderr


def test_bench_train_step_times_our_step_and_the_loader():
    proc = run_tool(
        "bench_train_step.py", "--method", "unimatch_v2", "--extras", "--encoder", "tiny", "--crop", "28",
        "--batch", "2", "--device", "cpu", "--warmup", "1", "--iters", "1", "--threads", "1",
        "--loader", "--workers", "0", "--loader-batches", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    step, loader = json_lines(proc.stdout)
    assert step["bench"] == "train_step" and step["impl"] == "ours"
    assert step["uses_ema"] is True and step["step_s"] > 0 and step["step_peak_rss_mb"] > 0
    assert loader["bench"] == "loader" and loader["crop"] == 252 and loader["batch"] == 2
    assert loader["batches_timed"] == 2 and loader["seconds_per_batch"] > 0


def test_bench_train_step_loop_times_the_trainers_iteration_beside_the_bare_step():
    proc = run_tool(
        "bench_train_step.py", "--no-step", "--loop", "--method", "unimatch_v2", "--extras", "--encoder", "tiny",
        "--crop", "28", "--batch", "2", "--device", "cpu", "--warmup", "1", "--iters", "2", "--threads", "1",
        "--workers", "1", "--loop-iters", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (loop,) = json_lines(proc.stdout)
    assert loop["bench"] == "train_loop" and loop["workers"] == 1 and loop["loop_iters"] == 3
    assert loop["loop_warmup"] == 1 + 2 * 1  # the warm-up, then the batches a worker loads ahead at start
    keys = ("loop_iter_s", "bare_step_s", "loader_wait_s", "sample_read_s", "sample_geometry_s", "sample_s")
    assert all(loop[k] > 0 for k in keys), {k: loop[k] for k in keys}
    assert loop["loop_iter_s"] >= loop["loader_wait_s"]  # every timed iteration includes its own wait
    assert loop["loop_over_step"] == pytest.approx(loop["loop_iter_s"] / loop["bare_step_s"], rel=0.05)
    assert loop["loader_wait_share"] == pytest.approx(loop["loader_wait_s"] / loop["loop_iter_s"], abs=0.01)


def test_bench_train_step_supervised_skips_the_ema():
    proc = run_tool(
        "bench_train_step.py", "--method", "supervised", "--task", "segmentation", "--encoder", "tiny",
        "--crop", "28", "--batch", "1", "--device", "cpu", "--warmup", "0", "--iters", "1", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (step,) = json_lines(proc.stdout)
    assert step["method"] == "supervised" and step["uses_ema"] is False


def test_bench_train_step_counts_flops_in_proportion_to_the_batch_and_reports_mfu():
    flops = {}
    for batch in ("1", "2"):
        proc = run_tool(
            "bench_train_step.py", "--method", "supervised", "--task", "segmentation", "--encoder", "tiny",
            "--crop", "28", "--batch", batch, "--device", "cpu", "--warmup", "0", "--iters", "1", "--threads", "1",
            "--peak-tflops", "2.0",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (step,) = json_lines(proc.stdout)
        flops[batch] = step["flops_per_step"]
        assert step["tflops_per_s"] == pytest.approx(
            step["flops_per_step"] / step["step_s"] / 1e12, rel=1e-2, abs=1e-4
        )
        assert step["peak_tflops"] == 2.0 and step["mfu"] == pytest.approx(
            step["tflops_per_s"] / 2.0, abs=1e-4
        )
    assert flops["1"] > 0 and flops["2"] == 2 * flops["1"]  # every counted op is per sample at a fixed crop


@pytest.mark.skipif(not (OFFICIAL / "remote-sensing" / "model").is_dir(), reason="no official checkout")
def test_bench_train_step_runs_the_official_step_on_cpu():
    proc = run_tool(
        "bench_train_step.py", "--no-step", "--official-repo", str(OFFICIAL), "--encoder", "small",
        "--crop", "14", "--batch", "2", "--device", "cpu", "--warmup", "0", "--iters", "1", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (step,) = json_lines(proc.stdout)
    assert step["impl"] == "official" and step["teacher"] == "student" and step["step_s"] > 0


def test_toy_ssl_prints_a_table_per_method_and_seed(tmp_path):
    proc = run_tool(
        "toy_ssl.py", "--methods", "supervised", "unimatch_v2", "--labeled", "2", "--unlabeled", "4",
        "--val", "2", "--size", "28", "--nclass", "3", "--batch", "2", "--epochs", "1", "--threads", "1",
        "--out", str(tmp_path / "toy"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["results"]) == {"supervised", "unimatch_v2"}
    sup, uni = result["results"]["supervised"], result["results"]["unimatch_v2"]
    # same iteration budget: 4 unlabeled / batch 2 = 2 iterations per epoch for both
    assert sup["per_seed"]["0"]["iterations"] == uni["per_seed"]["0"]["iterations"] == 2
    assert sup["per_seed"]["0"]["final_ema_miou"] is None
    assert 0 <= uni["mean_final_miou"] <= uni["mean_best_miou"] <= 100


def test_bench_predict_reports_throughput_memory_and_model_time():
    proc = run_tool("bench_predict.py", "--sizes", "300", "200", "--width", "130", "--encoder", "tiny", "--window",
                    "112", "--workers", "0", "--threads", "1", "--amp", "bf16")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1500:]
    rows = json_lines(proc.stdout)
    assert [(r["size"], r["width"]) for r in rows] == [(300, 130), (200, 130)]  # own processes, in order
    assert rows[0]["windows"] == 4 * 2  # 112 px windows, stride 84: 4 rows over 300 px, 2 columns over 130
    for row in rows:
        assert row["precision"] == "bf16" and row["writer_thread"] is True  # --amp is an alias of --precision
        assert row["total_s"] > 0 and row["model_s"] > 0
        assert row["peak_rss_mb"] > row["rss_before_predict_mb"] * 0.5
        assert row["mpx_per_s"] == pytest.approx(row["size"] * row["width"] / 1e6 / row["total_s"], rel=0.05)
        # The share of the end-to-end time outside the model: the model alone is timed apart (noise can make it
        # a little longer than inside the run), so only a bound below zero, never 1 or more.
        assert row["outside_model_fraction"] == pytest.approx(1 - row["model_s"] / row["total_s"], abs=0.02)
        assert -0.5 < row["outside_model_fraction"] < 1
        # CPU time of the process over wall time and usable cores: something ran, and no more than the cores.
        assert row["cores"] >= 1 and row["cpu_s"] > 0
        assert row["cpu_utilisation"] == pytest.approx(row["cpu_s"] / row["total_s"] / row["cores"], abs=0.02)
        assert 0 < row["cpu_utilisation"] <= 1.05


def test_bench_predict_many_pairs_mode_reports_per_pair_overhead():
    proc = run_tool("bench_predict.py", "--pairs", "2", "--sizes", "112", "--encoder", "tiny", "--window", "56",
                    "--workers", "0", "--threads", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1500:]
    (row,) = json_lines(proc.stdout)
    assert (
        row["bench"] == "predict_pairs" and row["pairs"] == 2 and row["windows"] == 2 * 9
    )  # 3 x 3 windows a pair
    assert row["overhead_s_per_pair"] == pytest.approx((row["total_s"] - row["model_only_s"]) / 2, abs=0.01)


def test_bench_view_times_the_command_and_measures_the_folder():
    proc = run_tool("bench_view.py", "--size", "300", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr[-1500:]
    (row,) = json_lines(proc.stdout)
    assert row["pixels"] == "300 x 300" and row["levels"] == 2  # 300 px: levels 0 and 1 (full resolution)
    assert row["tiles"]["before"] == row["tiles"]["after"] == 1 + 4
    assert 0 < row["build_seconds"] and 0 < row["command_seconds_median"]
    assert row["index_html_mb"] < row["folder_mb"] < 20
