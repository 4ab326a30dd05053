"""The shared engine: loss terms by hand, EMA and LR schedules, end-to-end runs, resume, DDP, failure modes."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import make_change_tiles, make_segmentation_benchmark

from semiseg.config import OptimConfig, load_config
from semiseg.errors import SemisegError
from semiseg.methods.losses import cross_entropy, ohem_cross_entropy, pseudo_label_loss
from semiseg.train.ema import EMA, ema_ratio
from semiseg.train.loop import train
from semiseg.train.optim import lr_for_step, poly_lr

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- loss terms against hand computations
def test_pseudo_label_loss_sums_confident_pixels_and_divides_by_all_non_padded_pixels():
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])  # 1 x 2 x 2 x 2
    plabel = torch.tensor([[[0, 1], [1, 0]]])
    conf = torch.tensor([[[0.99, 0.5], [0.97, 0.96]]])
    ignore = torch.tensor([[[0, 0], [0, 255]]])
    ce = F.cross_entropy(logits, plabel, reduction="none")[0]
    # confident & not padded: (0,0) and (1,0); (0,1) unconfident, (1,1) padded. Denominator: 3 non-padded pixels.
    expected = (ce[0, 0] + ce[1, 0]) / 3
    torch.testing.assert_close(pseudo_label_loss(logits, plabel, conf, ignore, 0.95), expected)


def test_cross_entropy_ignores_255_and_is_zero_with_a_graph_when_all_ignored():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 255], [2, 1]]])
    manual = -(logits.log_softmax(1)[0, [0, 2, 1], [0, 1, 1], [0, 0, 1]]).mean()
    torch.testing.assert_close(cross_entropy(logits, target), manual)
    zero = cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert zero.item() == 0 and zero.requires_grad


def test_ohem_keeps_only_hard_pixels_once_enough_are_valid():
    logits = torch.tensor([[[[4.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 4.0, 0.0]]]])  # 1 x 2 x 1 x 4
    target = torch.tensor([[[0, 0, 0, 255]]])  # p(true): ~0.98 (easy), 0.5, ~0.02 (hard), ignored
    hard = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    keep = torch.tensor([[[255, 0, 0, 255]]])  # p <= max(0.7, kth smallest) keeps 0.5 and 0.02
    torch.testing.assert_close(hard, cross_entropy(logits, keep))
    # fewer valid pixels than min_kept: plain CE over every valid pixel
    torch.testing.assert_close(ohem_cross_entropy(logits, target, 0.7, 10), cross_entropy(logits, target))


# ---------------------------------------------------------------- schedules
def test_ema_ratio_is_a_running_mean_then_capped():
    assert ema_ratio(0, 0.996) == 0.0
    assert ema_ratio(1, 0.996) == 0.5
    assert ema_ratio(9, 0.996) == pytest.approx(0.9)
    assert ema_ratio(10_000, 0.996) == 0.996


def test_ema_update_blends_parameters_with_the_scheduled_ratio():
    student = torch.nn.Linear(2, 1)
    ema = EMA(student, decay=0.996)
    before = ema.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.update(student, iteration=3)  # alpha = 1 - 1/4
    torch.testing.assert_close(ema.model.weight, 0.75 * before + 0.25 * student.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_poly_lr_and_the_official_one_step_lag():
    cfg = OptimConfig(lr=1e-3)
    assert poly_lr(1e-3, 0, 100) == 1e-3
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_lr(1e-3, 100, 100) == 0.0
    assert lr_for_step(cfg, 0, 100) == 1e-3
    assert (
        lr_for_step(cfg, 1, 100) == 1e-3
    )  # step 1 runs with poly(0): the official loop sets it after step 0
    assert lr_for_step(cfg, 51, 100) == pytest.approx(poly_lr(1e-3, 50, 100))


# ---------------------------------------------------------------- end-to-end runs
def _seg_config(split: Path, dataset: str, method: str, *extra: str):
    return load_config(
        None,
        [
            f"data.dataset={dataset}", f"data.root={split.parent / 'data'}", f"data.split={split}",
            "data.nclass=3", "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny",
            f"method.name={method}", "method.conf_thresh=0.5", "train.epochs=2", "optim.lr=1e-4",
            "data.nsample=4", *extra,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("dataset", ["pascal", "cityscapes", "ade20k", "coco", "folder"])
@pytest.mark.parametrize("method", ["supervised", "fixmatch", "unimatch_v2"])
def test_each_method_trains_on_each_benchmark_layout(tmp_path, dataset, method):
    split = make_segmentation_benchmark(tmp_path, dataset)
    out = tmp_path / "run"
    result = train(_seg_config(split, dataset, method), out, progress=False)
    for name in ("config.yaml", "log.txt", "metrics.csv", "latest.pt", "best.pt", "curves.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert 0.0 <= float(rows[-1]["student_miou"]) <= 100.0
    assert ("ema_miou" in rows[0]) == (method != "supervised")
    iters = {"supervised": 1, "fixmatch": 4, "unimatch_v2": 4}[method]  # 4 = 8 unlabeled / batch 2
    assert result["state"].iteration == 2 * iters


def test_change_detection_trains_with_both_teachers(tmp_path):
    split = make_change_tiles(tmp_path / "levir")
    for teacher in ("student", "ema"):
        cfg = load_config(
            None,
            [
                "task=change_detection", "data.dataset=levir_cd", f"data.root={tmp_path / 'levir'}",
                f"data.split={split}", "data.nclass=2", "data.crop_size=42", "data.batch_size=2",
                "data.workers=0", "model.encoder=tiny", f"method.teacher={teacher}", "train.epochs=1",
            ],
        )  # fmt: skip
        out = tmp_path / f"run_{teacher}"
        train(cfg, out, progress=False)
        row = next(csv.DictReader(open(out / "metrics.csv")))
        assert {
            "student_iou",
            "student_f1",
            "student_precision",
            "student_recall",
            "student_oa",
            "student_kappa",
        } <= set(row)
        assert "ema_iou" in row  # the EMA is kept and evaluated whichever model makes the pseudo-labels


def _weights(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {"model": ckpt["model"], "ema": ckpt["ema"]}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_a_mid_epoch_stop_gives_the_uninterrupted_weights(tmp_path, workers):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=8)
    common = (f"data.workers={workers}",)
    train(_seg_config(split, "folder", "unimatch_v2", *common), tmp_path / "straight", progress=False)
    stopped = _seg_config(
        split, "folder", "unimatch_v2", *common, "train.max_iters=5"
    )  # epoch 2, batch 1 of 4
    result = train(stopped, tmp_path / "resumed", progress=False)
    assert result["state"].iteration == 5 and result["state"].batch_in_epoch == 1
    assert (tmp_path / "resumed" / "best.pt").is_file()  # a mid-epoch stop is scored and checkpointed
    assert list(csv.DictReader(open(tmp_path / "resumed" / "metrics.csv")))[-1]["epoch"] == "1.25"
    train(_seg_config(split, "folder", "unimatch_v2", *common), tmp_path / "resumed", progress=False)
    a, b = _weights(tmp_path / "straight" / "latest.pt"), _weights(tmp_path / "resumed" / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")


def test_resume_refuses_a_different_model(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    train(_seg_config(split, "folder", "supervised", "train.epochs=1"), tmp_path / "run", progress=False)
    with pytest.raises(SemisegError, match="model.encoder"):
        train(
            _seg_config(split, "folder", "supervised", "model.encoder=small"),
            tmp_path / "run",
            progress=False,
        )


@pytest.mark.parametrize("fused", ["false", "true"])
def test_non_finite_loss_stops_the_run_with_a_message(tmp_path, monkeypatch, fused):
    """Synchronous check (PyTorch's default AdamW) or the fused optimiser's check on the device, read at the next
    log point: either way the run stops naming the first bad iteration and never saves a bad update."""
    from semiseg.methods.supervised import Supervised

    split = make_segmentation_benchmark(tmp_path, "folder")
    original = Supervised.step
    calls = []

    def poisoned(self, models, labeled, unlabeled):
        out = original(self, models, labeled, unlabeled)
        calls.append(1)
        if len(calls) == 2:
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(Supervised, "step", poisoned)
    cfg = _seg_config(
        split, "folder", "supervised", f"optim.fused={fused}", "train.log_every=3", "data.nsample=16"
    )
    with pytest.raises(SemisegError, match="non-finite at iteration 1"):
        train(cfg, tmp_path / "run", progress=False)
    # the deferred check lets good steps run until the log point at iteration 3; the synchronous one stops at 1
    assert len(calls) == (3 if fused == "true" else 2)
    saved = torch.load(tmp_path / "run" / "nonfinite.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_bad_data_is_reported_before_training(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    with pytest.raises(SemisegError, match="data.root does not exist"):
        train(
            _seg_config(split, "folder", "supervised", "data.root=/nonexistent"),
            tmp_path / "a",
            progress=False,
        )
    first_labeled = (split / "labeled.txt").read_text().split()[0]
    (tmp_path / "data" / first_labeled).unlink()
    with pytest.raises(SemisegError, match="missing"):
        train(_seg_config(split, "folder", "supervised"), tmp_path / "b", progress=False)


def test_mask_values_beyond_the_class_count_are_reported(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder", nclass=5)
    with pytest.raises(SemisegError, match="outside"):
        train(_seg_config(split, "folder", "supervised", "data.nclass=2"), tmp_path / "run", progress=False)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_two_process_gloo_ddp_run(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = REPO / "configs" / "pascal.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "semiseg", "train", "--config", str(cfg), "--out", str(tmp_path / "ddp"),
        "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'data'}", "--set", f"data.split={split}",
        "--set", "data.nclass=3", "--set", "data.crop_size=28", "--set", "data.batch_size=2",
        "--set", "data.workers=0", "--set", "model.encoder=tiny", "--set", "model.weights=null",
        "--set", "train.epochs=1", "--set", "method.conf_thresh=0.5", "--set", "train.device=cpu",
        "--set", "train.global_batch=null",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in (tmp_path / "ddp" / "log.txt").read_text()
    ckpt = torch.load(tmp_path / "ddp" / "latest.pt", weights_only=True)
    assert ckpt["state"]["iteration"] == 2  # 8 unlabeled / (2 processes x batch 2)
    assert len(ckpt["rng"]) == 2


# ---------------------------------------------------------------- the step seam
def test_the_trainer_is_its_training_step_driven_over_its_loaders(tmp_path):
    """Driving `TrainStep` by hand over the same batches gives the trainer's weights bit for bit, so what
    external parity checks and the benchmark call is exactly what trains."""
    from semiseg.data.build import build
    from semiseg.train.distributed import DistInfo
    from semiseg.train.loop import TrainLoaders
    from semiseg.train.state import seed_all
    from semiseg.train.step import TrainStep

    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = _seg_config(split, "folder", "unimatch_v2", "train.epochs=1", "method.conf_thresh=0.0")
    train(cfg, tmp_path / "run", progress=False)
    trained = _weights(tmp_path / "run" / "latest.pt")

    seed_all(cfg.train.seed * 1000)  # what the trainer does first, in this order
    loaders = TrainLoaders(build(cfg, "fit"), cfg, DistInfo(), torch.device("cpu"))
    step = TrainStep.from_config(cfg, torch.device("cpu"), loaders.iters_per_epoch * cfg.train.epochs)
    step.model.train()
    for iteration, (labeled, unlabeled) in enumerate(loaders.epoch(0, 0)):
        if iteration == 2:  # the sample dicts a DataLoader yields work too
            labeled, unlabeled = (vars(b) for b in (labeled, unlabeled))
        logs = step(labeled, unlabeled, iteration)
    assert iteration + 1 == 4 and set(logs) >= {"loss", "loss_x", "loss_u", "mask_ratio", "lr"}
    for part, state in (("model", step.model.state_dict()), ("ema", step.ema.state_dict())):
        for k, v in state.items():
            torch.testing.assert_close(v, trained[part][k], rtol=0, atol=0, msg=f"{part}.{k}")


def test_persistent_workers_draw_each_epochs_crops_as_the_dataset_keyed_on_epoch_and_index(tmp_path):
    """The loaders live for the whole run and their workers across epochs (which never see `set_epoch`): every
    batch of epochs 0 and 1 is still exactly the sampler's samples, cropped as `dataset[(epoch, index)]`."""
    from torch.utils.data import default_collate

    from semiseg.data.build import build
    from semiseg.train.distributed import DistInfo
    from semiseg.train.loop import TrainLoaders

    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = _seg_config(split, "folder", "unimatch_v2", "data.workers=2")
    loaders = TrainLoaders(build(cfg, "fit"), cfg, DistInfo(), torch.device("cpu"))
    assert all(loader.persistent_workers for loader in loaders.loaders)
    drawn = {epoch: list(loaders.epoch(epoch, 0)) for epoch in (0, 1)}
    epoch_changes_a_crop = False
    for epoch, batches in drawn.items():
        assert len(batches) == loaders.batches_per_epoch == 4
        for stream, (sampler, ds, b) in enumerate(loaders.streams):
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert {e for e, _ in keys} == {epoch}
            for i, pair in enumerate(batches):
                expected = default_collate([ds[k] for k in keys[i * b : (i + 1) * b]])
                got = pair[stream]
                for x, y in zip(got.images, expected["images"], strict=True):
                    assert torch.equal(x, y), (epoch, stream, i)
                assert torch.equal(got.label, expected["label"]), (epoch, stream, i)
                assert torch.equal(got.ignore, expected["ignore"]), (epoch, stream, i)
                # The same indices cropped as in epoch 0: what a worker stuck in epoch 0 would hand out.
                if epoch == 1:
                    stale = default_collate([ds[(0, index)] for _, index in keys[i * b : (i + 1) * b]])
                    epoch_changes_a_crop |= not torch.equal(got.images[0], stale["images"][0])
    assert epoch_changes_a_crop


def test_a_stopped_epoch_loads_at_most_one_batch_ahead(tmp_path):
    """The next batch is fetched before the current one is handed out, and never more than that one."""
    from semiseg.data.build import build
    from semiseg.train.distributed import DistInfo
    from semiseg.train.loop import TrainLoaders

    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = _seg_config(split, "folder", "unimatch_v2")  # workers 0: the loader reads only when asked
    data = build(cfg, "fit")
    read = {"n": 0}
    original = type(data.unlabeled).read

    def counting(self, index):
        read["n"] += 1
        return original(self, index)

    data.unlabeled.read = counting.__get__(data.unlabeled)
    loaders = TrainLoaders(data, cfg, DistInfo(), torch.device("cpu"))
    steps = loaders.steps(0, 0)
    next(steps)
    assert read["n"] == 2 * loaders.batch_u  # the step's batch and the one ahead
    next(steps)
    assert read["n"] == 3 * loaders.batch_u
    assert sum(1 for _ in steps) == loaders.iters_per_epoch - 2
    assert read["n"] == loaders.iters_per_epoch * loaders.batch_u  # nothing past the epoch's last batch


def test_the_step_refuses_a_non_finite_loss_before_updating_anything():
    from semiseg.methods.base import Batch
    from semiseg.train.step import NonFiniteLossError, TrainStep

    cfg = load_config(
        None, ["data.nclass=3", "data.crop_size=28", "model.encoder=tiny", "method.name=supervised"]
    )
    step = TrainStep.from_config(cfg, torch.device("cpu"), total_iters=10)
    images = (torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8),)
    batch = Batch(images, torch.randint(0, 3, (2, 28, 28)), torch.zeros(2, 28, 28, dtype=torch.uint8))
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    with torch.no_grad():
        step.model.head.output[2].bias.fill_(math.inf)
    before["head.output.2.bias"] = step.model.head.output[2].bias.clone()
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        step(batch, None, 3)
    for k, v in step.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_fused_step_skips_a_non_finite_step_on_the_device_and_reports_it_when_asked():
    """With `optim.fused` the bad step is skipped by the optimiser kernel (weights, moments, step count) and by
    the EMA, without reading the flag back; `check_finite` reports the first bad iteration and its loss; the
    steps around it train normally."""
    from semiseg.methods.base import Batch
    from semiseg.train.step import NonFiniteLossError, TrainStep

    cfg = load_config(
        None,
        [
            "data.nclass=3",
            "data.crop_size=28",
            "model.encoder=tiny",
            "method.name=unimatch_v2",
            "optim.fused=true",
        ],
    )
    step = TrainStep.from_config(cfg, torch.device("cpu"), total_iters=10)
    assert step.deferred_check and step.optimizer.defaults["fused"]
    g = torch.Generator().manual_seed(0)
    images = (torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8, generator=g),)
    batch = Batch(
        images, torch.randint(0, 3, (2, 28, 28), generator=g), torch.zeros(2, 28, 28, dtype=torch.uint8)
    )

    def snapshot():
        opt_steps = [float(s["step"]) for s in step.optimizer.state.values()]
        return (
            {k: v.clone() for k, v in step.model.state_dict().items()},
            {k: v.clone() for k, v in step.ema.state_dict().items()},
            opt_steps,
        )

    step(batch, batch, 0)
    step.check_finite()  # nothing bad yet
    model0, ema0, steps0 = snapshot()
    method_step = step.method.step

    def poisoned(models, labeled, unlabeled):
        out = method_step(models, labeled, unlabeled)
        out.loss = out.loss * math.nan
        return out

    step.method.step = poisoned
    step(batch, batch, 1)
    step.method.step = method_step
    model1, ema1, steps1 = snapshot()
    for k in model0:
        assert torch.equal(model1[k], model0[k]), k
    for k in ema0:
        assert torch.equal(ema1[k], ema0[k]), k
    assert steps1 == steps0 == [1.0] * len(steps0)
    step(batch, batch, 2)  # a good step after it trains
    model2, _, steps2 = snapshot()
    assert steps2 == [2.0] * len(steps0)
    assert any(not torch.equal(model2[k], model1[k]) for k in model1)
    with pytest.raises(NonFiniteLossError, match="iteration 1 \\(loss=nan"):
        step.check_finite()


def test_a_compiled_model_trains_two_steps_like_the_uncompiled_one(tmp_path, monkeypatch):
    """`train.compile=default` (Inductor) compiles every encoder block and the head in place (same state-dict keys,
    so checkpoints do not depend on it), trains, gives the uncompiled run's weights up to kernel rounding, and
    evaluates uncompiled (nothing new is compiled while it scores)."""
    from torch._dynamo.utils import counters

    import semiseg.train.loop as loop_module
    from semiseg.models.compile import compile_problem

    if (problem := compile_problem(torch.device("cpu"), "default")) is not None:
        pytest.skip(f"torch.compile cannot work on this machine: {problem}")
    evaluate_all, compiled_while_scoring = loop_module._evaluate_all, []

    def scored(*args, **kwargs):
        before = counters["stats"]["unique_graphs"]
        result = evaluate_all(*args, **kwargs)
        compiled_while_scoring.append(counters["stats"]["unique_graphs"] - before)
        return result

    monkeypatch.setattr(loop_module, "_evaluate_all", scored)
    split = make_segmentation_benchmark(tmp_path, "folder")
    runs, graphs = {}, {}
    for mode in ("off", "default"):
        cfg = _seg_config(
            split, "folder", "supervised", f"train.compile={mode}", "train.max_iters=2", "data.nsample=8"
        )
        before = counters["stats"]["unique_graphs"]
        train(cfg, tmp_path / mode, progress=False)
        graphs[mode] = counters["stats"]["unique_graphs"] - before
        runs[mode] = _weights(tmp_path / mode / "latest.pt")["model"]
    log = (tmp_path / "default" / "log.txt").read_text()
    assert "train.compile=default: 5 regions compiled" in log and "stopped at train.max_iters=2" in log
    assert graphs["off"] == 0 and graphs["default"] >= 2  # a block and the head, at least
    assert compiled_while_scoring == [0, 0]
    assert list(runs["off"]) == list(runs["default"])
    for k, v in runs["default"].items():
        torch.testing.assert_close(v, runs["off"][k], rtol=1e-4, atol=1e-5, msg=k)


def test_compiled_student_teacher_and_prevmatch_snapshots_train_as_uncompiled(tmp_path, monkeypatch):
    """The wiring of `train.compile` for a semi-supervised run: student and EMA teacher compiled region by region,
    PrevMatch's snapshots evaluated through the compiled modules (`functional_call`), over two epochs. Dynamo's
    `eager` backend runs the captured graphs without generating code, so the weights must be the uncompiled
    run's exactly; Inductor itself is covered by the test above."""
    import functools

    import semiseg.train.step as step_module

    monkeypatch.setattr(step_module, "compile_problem", lambda device, mode: None)
    monkeypatch.setattr(
        step_module, "compile_regions", functools.partial(step_module.compile_regions, backend="eager")
    )
    split = make_segmentation_benchmark(tmp_path, "folder")
    extra = ["method.extras=[prevmatch]", "method.prevmatch.trigger=every_k_epochs", "method.conf_thresh=0.0"]
    from torch._dynamo.utils import counters

    weights, graphs = {}, {}
    for mode in ("off", "default"):
        cfg = _seg_config(split, "folder", "unimatch_v2", f"train.compile={mode}", *extra)
        before = counters["stats"]["unique_graphs"]
        train(cfg, tmp_path / mode, progress=False)
        graphs[mode] = counters["stats"]["unique_graphs"] - before
        weights[mode] = _weights(tmp_path / mode / "latest.pt")
    # block and head, with and without gradients, at least
    assert graphs["off"] == 0 and graphs["default"] >= 4
    assert "snapshots=1" in (tmp_path / "default" / "log.txt").read_text()  # PrevMatch used one in epoch 2
    for part in ("model", "ema"):
        for k, v in weights["off"][part].items():
            torch.testing.assert_close(weights["default"][part][k], v, rtol=0, atol=0, msg=f"{part}.{k}")


def test_compile_falls_back_with_one_warning_where_it_cannot_work(monkeypatch):
    import semiseg.train.step as step_module
    from semiseg.train.step import TrainStep

    monkeypatch.setattr(step_module, "compile_problem", lambda device, mode: "RuntimeError: no C++ compiler")
    cfg = load_config(
        None, ["data.nclass=3", "data.crop_size=28", "model.encoder=tiny", "train.compile=default"]
    )
    with pytest.warns(
        UserWarning, match="cannot work here .*no C\\+\\+ compiler.*training uncompiled"
    ) as caught:
        step = TrainStep.from_config(cfg, torch.device("cpu"), total_iters=10)
    assert len(caught) == 1
    assert step.compile_note.startswith("warning: train.compile=default cannot work here")
    assert not any(hasattr(m, "_compiled_call_impl") and m._compiled_call_impl for m in step.model.modules())


# ---------------------------------------------------------------- the stage seam and old checkpoints
def test_evaluation_builds_only_the_evaluation_data(tmp_path):
    from semiseg.data.build import build

    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = _seg_config(split, "folder", "unimatch_v2")
    (split / "labeled.txt").unlink()  # scoring a checkpoint needs neither training list nor its files
    (split / "unlabeled.txt").unlink()
    data = build(cfg, "eval")
    assert data.labeled is None and data.unlabeled is None and len(data.val) == 3
    assert cfg.method.name == "unimatch_v2"
    with pytest.raises(SemisegError, match="labeled.txt"):
        build(cfg, "fit")


def test_supervised_training_reads_no_unlabeled_list(tmp_path):
    from semiseg.data.build import build

    split = make_segmentation_benchmark(tmp_path, "folder")
    (split / "unlabeled.txt").write_text("missing/file.png\n")  # would fail the file check if it were read
    data = build(_seg_config(split, "folder", "supervised"), "fit")
    assert data.unlabeled is None and len(data.labeled) == 4  # data.nsample=4
    with pytest.raises(SemisegError, match="missing"):
        build(_seg_config(split, "folder", "unimatch_v2"), "fit")


def test_a_checkpoint_written_before_the_task_seam_still_loads_and_resumes(tmp_path):
    """Checkpoints from before this layout lack `meta.patch_size` and hold `grayscale_p: null` in their config."""
    import semiseg

    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    train(_seg_config(split, "folder", "unimatch_v2", "train.max_iters=2"), out, progress=False)
    ckpt = torch.load(out / "latest.pt", weights_only=True)
    del ckpt["meta"]["patch_size"], ckpt["sample_keying"], ckpt["state"]["total_iters"]
    ckpt["config"]["method"]["grayscale_p"] = None
    torch.save(ckpt, out / "latest.pt")
    model = semiseg.load_model(out / "latest.pt")
    assert model.meta["patch_size"] == 14 and model.mean == (0.485, 0.456, 0.406)
    result = train(_seg_config(split, "folder", "unimatch_v2"), out, progress=False)
    log = (out / "log.txt").read_text()
    assert result["state"].iteration == 8 and "resumed" in log and "keyed per stream" in log


def test_a_resume_whose_schedule_would_change_is_refused(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    train(_seg_config(split, "folder", "unimatch_v2", "train.max_iters=2"), out, progress=False)
    with pytest.raises(SemisegError, match="a schedule of 8 iterations -> 4 .*pass --force"):
        train(_seg_config(split, "folder", "unimatch_v2", "data.batch_size=4"), out, progress=False)


# ---------------------------------------------------------------- a frozen encoder (the official lock_backbone)
def _synthetic_step(freeze: bool):
    from semiseg.methods.base import Batch
    from semiseg.train.state import seed_all
    from semiseg.train.step import TrainStep

    overrides = ["data.nclass=3", "data.crop_size=28", "model.encoder=tiny", "method.conf_thresh=0.0"]
    cfg = load_config(None, [*overrides, f"model.freeze_encoder={str(freeze).lower()}"])
    seed_all(0)
    step = TrainStep.from_config(cfg, torch.device("cpu"), total_iters=10)
    step.model.train()
    g = torch.Generator().manual_seed(1)

    def batch() -> Batch:
        images = (torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8, generator=g),)
        return Batch(
            images, torch.randint(0, 3, (2, 28, 28), generator=g), torch.zeros(2, 28, 28, dtype=torch.uint8)
        )

    labeled, unlabeled = batch(), batch()
    initial = {k: v.clone() for k, v in step.model.state_dict().items()}
    step(labeled, unlabeled, 0)
    return step, initial


def test_a_frozen_encoder_gets_no_gradient_nor_optimiser_state_and_the_head_steps_as_unfrozen():
    frozen, initial = _synthetic_step(freeze=True)
    trained, _ = _synthetic_step(freeze=False)
    encoder = {id(p) for p in frozen.model.encoder.parameters()}
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.encoder.parameters())
    assert frozen.optimizer.param_groups[0]["params"] == []  # the group stays, empty, as officially
    assert not any(id(p) in encoder for p in frozen.optimizer.state)
    head = list(frozen.model.head.parameters())
    assert all(p.grad is not None for p in head) and all(p in frozen.optimizer.state for p in head)
    for k, v in frozen.model.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(v, initial[k]), k  # untouched (weight decay would move it otherwise)
    # The head's gradient does not depend on whether the encoder takes one, so from the same weights and draws
    # the head takes exactly the unfrozen step.
    theirs = trained.model.state_dict()
    for k, v in frozen.model.state_dict().items():
        if k.startswith("head."):
            torch.testing.assert_close(v, theirs[k], rtol=1e-6, atol=1e-7, msg=k)
    assert not torch.equal(theirs["encoder.vit.norm.weight"], initial["encoder.vit.norm.weight"])


def test_a_frozen_encoder_is_recorded_in_the_checkpoint_and_fixed_on_resume(tmp_path):
    import semiseg

    split = make_segmentation_benchmark(tmp_path, "folder")
    out = tmp_path / "run"
    frozen = ("model.freeze_encoder=true", "train.max_iters=2")
    train(_seg_config(split, "folder", "unimatch_v2", *frozen), out, progress=False)
    ckpt = torch.load(out / "latest.pt", weights_only=True)
    assert ckpt["config"]["model"]["freeze_encoder"] is True and ckpt["meta"]["freeze_encoder"] is True
    assert semiseg.load_model(out / "latest.pt").meta["freeze_encoder"] is True
    n_trained = sum(1 for k in ckpt["model"] if not k.startswith("encoder."))
    assert len(ckpt["optimizer"]["state"]) == n_trained  # AdamW moments for the head only
    with pytest.raises(SemisegError, match="model.freeze_encoder=True but the config says False"):
        train(_seg_config(split, "folder", "unimatch_v2"), out, progress=False)


def test_tensorboard_pictures_follow_the_run_and_leave_training_untouched(tmp_path, monkeypatch):
    """Every evaluation adds the fixed samples' pictures (inputs, truth, predictions, pseudo-label, confidence
    mask); writing them changes no training draw: the weights equal those of a run without pictures."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from semiseg.data.build import build
    from semiseg.inference import predict_logits
    from semiseg.models.checkpoints import load_model
    from semiseg.models.normalize import normalize
    from semiseg.train import pictures

    split = make_segmentation_benchmark(tmp_path, "folder")
    cfg = _seg_config(split, "folder", "unimatch_v2")  # 2 epochs of 4 iterations, an evaluation after each
    train(cfg, tmp_path / "with", progress=False)
    monkeypatch.setattr(pictures.EvalPictures, "write", lambda *args, **kwargs: None)
    train(cfg, tmp_path / "without", progress=False)
    a, b = _weights(tmp_path / "with" / "latest.pt"), _weights(tmp_path / "without" / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    monkeypatch.undo()

    events = EventAccumulator(str(tmp_path / "with" / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    for k in (0, 1):
        assert {
            f"pictures/val_{k}/{p}" for p in ("input", "truth", "prediction_student", "prediction_ema")
        } <= tags
        assert {f"pictures/unlabeled_{k}/{p}" for p in ("input", "pseudo_label", "confidence_mask")} <= tags
    shown = events.Images("pictures/unlabeled_0/confidence_mask")
    assert [e.step for e in shown] == [4, 8]  # at every evaluation
    mask = np.array(Image.open(io.BytesIO(shown[-1].encoded_image_string)).convert("L"))
    # the teacher of the last step (the EMA: the segmentation default), on unlabeled sample 0, thresholded at τ
    data = build(cfg, "fit")
    images, _, _ = data.unlabeled.read(0)
    teacher = load_model(tmp_path / "with" / "latest.pt", which="ema")
    batch = tuple(
        normalize(torch.from_numpy(im.transpose(2, 0, 1))[None], teacher.mean, teacher.std) for im in images
    )
    with torch.inference_mode():
        logits = predict_logits(teacher, batch, cfg.eval.mode, cfg.eval.window, cfg.eval.stride, 3)
    confident = (logits.softmax(1)[0].max(0).values >= cfg.method.conf_thresh).numpy()
    assert mask.shape == confident.shape and ((mask == 255) == confident).mean() > 0.99


def test_a_checkpoint_from_before_compile_and_fused_resumes_without_a_reported_change():
    from semiseg.train.state import check_resume

    cfg = load_config(None, ["data.nclass=3", "model.encoder=tiny"])
    old = cfg.to_dict()
    del old["train"]["compile"], old["optim"]["fused"]  # what a checkpoint written before the keys holds
    ckpt = {"config": old, "state": {"total_iters": 10}}
    assert check_resume(ckpt, cfg, Path("latest.pt"), 10, force=False) == []
    now = load_config(None, ["data.nclass=3", "model.encoder=tiny", "train.compile=default"])
    assert check_resume(ckpt, now, Path("latest.pt"), 10, force=False) == [("train.compile", None, "default")]
