"""Gradient accumulation (`train.accumulate`, `train.global_batch`): the step of more processes, exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import make_segmentation_benchmark

from semiseg.config import load_config
from semiseg.errors import SemisegError
from semiseg.methods.base import Batch
from semiseg.train.ema import ema_ratio
from semiseg.train.loop import train
from semiseg.train.state import seed_all
from semiseg.train.step import TrainStep

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.nclass=3", "data.crop_size=28", "model.encoder=tiny", "optim.lr=1e-4", "method.conf_thresh=0.0"]


def _step(method: str = "supervised", *overrides: str) -> TrainStep:
    seed_all(0)
    cfg = load_config(None, [*TINY, f"method.name={method}", *overrides])
    step = TrainStep.from_config(cfg, torch.device("cpu"), total_iters=10)
    step.model.train()
    return step


def _batch(n: int, seed: int) -> Batch:
    """Labels without ignore pixels: every micro-batch then has as many labeled pixels as another, so the mean of
    their mean losses is the whole batch's mean loss."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g),)
    return Batch(
        images, torch.randint(0, 3, (n, 28, 28), generator=g), torch.zeros(n, 28, 28, dtype=torch.uint8)
    )


def _split(batch: Batch, parts: int) -> list[Batch]:
    chunks = zip(batch.images[0].chunk(parts), batch.label.chunk(parts), batch.ignore.chunk(parts))
    return [Batch((x,), y, ig) for x, y, ig in chunks]


# AdamW's first step moves each weight by about lr·g/(|g| + 1e-8): for a gradient near 1e-8 the float rounding of
# summing it in another order (a relative 1e-3 of 2.6e-9, measured) becomes a visible part of the move. Weights are
# therefore held to a thousandth of the largest move (lr × lr_multi = 4e-3), gradients to float rounding.
WEIGHT_ATOL = 1e-3 * 1e-4 * 40


def _assert_same(a: TrainStep, b: TrainStep) -> None:
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-9, msg=f"grad {name}")
        torch.testing.assert_close(p, q, rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_four_micro_batches_give_the_whole_batch_step():
    batch = _batch(8, seed=1)
    whole, micro = _step(), _step()
    whole_logs = whole(batch, None, 0)
    logs = micro.accumulated([(m, None) for m in _split(batch, 4)], 0)
    _assert_same(whole, micro)
    assert float(logs["loss"]) == pytest.approx(
        float(whole_logs["loss"]), rel=1e-5
    )  # the micro-batches' mean
    # and it is a real step: one micro-batch alone gives other weights
    alone = _step()
    alone(_split(batch, 4)[0], None, 0)
    assert any(not torch.equal(p, q) for p, q in zip(alone.model.parameters(), micro.model.parameters()))


def test_the_ema_the_learning_rate_and_schedules_advance_once_per_optimiser_step():
    step = _step("unimatch_v2")
    u = _batch(4, seed=2)
    for iteration in range(2):
        before_ema = {k: v.clone() for k, v in step.ema.state_dict().items()}
        logs = step.accumulated(
            [(m, n) for m, n in zip(_split(_batch(4, seed=iteration), 2), _split(u, 2))], iteration
        )
        assert step.method.iteration == iteration
        alpha = ema_ratio(iteration, step.cfg.method.ema_decay)  # 0 then 0.5: one EMA update per step
        for k, v in step.ema.state_dict().items():
            expected = alpha * before_ema[k] + (1 - alpha) * step.model.state_dict()[k]
            torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-7, msg=k)
    assert logs["lr"] == pytest.approx(1e-4 * (1 - 0 / 10) ** 0.9)  # step 1 runs with poly(0)
    assert set(logs) >= {"loss", "loss_x", "loss_u", "mask_ratio"}


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_accumulate import _batch, _split, _step
from semiseg.train.distributed import DistInfo, init_distributed, cleanup
from semiseg.train.step import TrainStep

info, device = init_distributed("cpu")
seed = _step()  # the same initial weights on both ranks
step = TrainStep(seed.model, seed.method, seed.optimizer, seed.cfg, 10, device, None, info)
step.model.train()
mine = _split(_batch(8, seed=1), 4)[2 * info.rank: 2 * info.rank + 2]  # rank r: quarters 2r, 2r + 1
step.accumulated([(m, None) for m in mine], 0)
if info.rank == 0:
    torch.save({{"weights": dict(step.model.named_parameters()),
                "grads": {{n: p.grad for n, p in step.model.named_parameters()}}}}, {out!r})
cleanup(info)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_two_gloo_processes_of_two_micro_batches_give_the_one_process_step_of_four(tmp_path):
    script = tmp_path / "ddp_step.py"
    out = tmp_path / "rank0.pt"
    script.write_text(DDP_SCRIPT.format(tests=str(REPO / "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29523",
        str(script),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = torch.load(out, weights_only=True)
    single = _step()
    single.accumulated([(m, None) for m in _split(_batch(8, seed=1), 4)], 0)
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-9, msg=f"grad {name}")
        torch.testing.assert_close(ddp["weights"][name], p.detach(), rtol=0, atol=WEIGHT_ATOL, msg=name)


# ---------------------------------------------------------------- in the trainer
def _run_config(split: Path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=folder", f"data.root={split.parent / 'data'}", f"data.split={split}", "data.nclass=3",
            "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny",
            "method.conf_thresh=0.5", "train.epochs=2", "optim.lr=1e-4", *extra,
        ],
    )  # fmt: skip


def test_a_global_batch_counts_optimiser_steps_and_resumes_mid_epoch_exactly(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=8)
    straight = train(_run_config(split, "train.global_batch=4"), tmp_path / "straight", progress=False)
    assert straight["state"].iteration == 4  # 8 unlabeled / batch 2 = 4 micro-batches = 2 steps per epoch
    assert "2 micro-batches per step" in (tmp_path / "straight" / "log.txt").read_text()
    stopped = train(
        _run_config(split, "train.global_batch=4", "train.max_iters=3"), tmp_path / "resumed", progress=False
    )
    assert (stopped["state"].epoch, stopped["state"].batch_in_epoch) == (1, 1)
    train(_run_config(split, "train.global_batch=4"), tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "latest.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.global_batch=5"], "not a multiple of data.batch_size x processes = 2 x 1"),
        (["train.global_batch=4", "train.accumulate=2"], "not both"),
        (["train.accumulate=0"], "train.accumulate must be at least 1"),
        (["train.accumulate=8"], "fewer training samples per process than one optimiser step"),
    ],
)
def test_impossible_accumulation_settings_are_named(tmp_path, overrides, message):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=8)
    with pytest.raises(SemisegError, match=message):
        train(_run_config(split, *overrides), tmp_path / "run", progress=False)
