"""PrevMatch and MaskMatch: schedules, snapshot store, masks, multi-scale labels, loss terms, runs and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fakes import make_change_tiles, make_segmentation_benchmark

from semiseg.augment import mix_with_reversed
from semiseg.config import load_config
from semiseg.errors import SemisegError
from semiseg.methods.base import Batch, Models
from semiseg.methods.extras import StepContext
from semiseg.methods.losses import averaged_confidence_loss, pseudo_label_loss
from semiseg.methods.maskmatch import apply_mask, block_mask, multiscale_probs, scaled_side
from semiseg.methods.prevmatch import (
    PrevMatch,
    dirichlet_weights,
    draw_ensemble,
    ensemble_logits,
    epoch_triangle_weight,
    triangle_weight,
)
from semiseg.models.normalize import normalize
from semiseg.models.segmentor import build_model
from semiseg.models.specs import IMAGENET_MEAN, IMAGENET_STD
from semiseg.registry import build_method
from semiseg.task import get_task
from semiseg.train.loop import train

EVERY_EPOCH = "method.prevmatch.trigger=every_k_epochs"


def _cfg(*overrides: str):
    return load_config(None, ["data.nclass=3", "data.crop_size=28", "model.encoder=tiny", *overrides])


def _batch(n_dates: int, b: int = 2, size: int = 28, seed: int = 0, nclass: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = tuple(
        torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g) for _ in range(n_dates)
    )
    ignore = torch.zeros(b, size, size, dtype=torch.uint8)
    ignore[:, -3:] = 255  # padded rows
    return Batch(images, torch.randint(0, nclass, (b, size, size), generator=g), ignore)


def _linear(value: float) -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


# ---------------------------------------------------------------- PrevMatch: schedule and ensemble
def test_prevmatch_lambda_is_a_linear_triangle_over_training():
    assert triangle_weight(0, 100) == 0.0
    assert triangle_weight(25, 100) == pytest.approx(0.5)
    assert triangle_weight(50, 100) == 1.0
    assert triangle_weight(75, 100) == pytest.approx(0.5)
    assert triangle_weight(100, 100) == 0.0
    assert triangle_weight(10, 100) - triangle_weight(9, 100) == pytest.approx(0.02)


def test_dirichlet_weights_sum_to_one_and_subsets_are_distinct_and_bounded():
    torch.manual_seed(0)
    for k in (1, 2, 3):
        w = dirichlet_weights(k)
        assert w.shape == (k,) and (w > 0).all() and w.sum().item() == pytest.approx(1.0)
    sizes = set()
    for _ in range(50):
        indices, weights = draw_ensemble(n_snapshots=5, max_ensemble=3)
        assert 1 <= len(indices) <= 3 and len(set(indices)) == len(indices) == len(weights)
        assert all(0 <= i < 5 for i in indices)
        sizes.add(len(indices))
    assert sizes == {1, 2, 3}
    assert len(draw_ensemble(n_snapshots=1, max_ensemble=3)[0]) == 1  # never more than stored


def test_an_ensemble_of_one_snapshot_is_that_snapshots_logits_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("tiny", 3)
    old = build_model("tiny", 3)
    snapshot = {k: v.clone() for k, v in old.state_dict().items()}
    x = torch.randn(2, 3, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = ensemble_logits(model, [snapshot], torch.ones(1), (x,))
    torch.testing.assert_close(logits, old(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    mixed = ensemble_logits(model, [snapshot, before], torch.tensor([0.25, 0.75]), (x,))
    torch.testing.assert_close(mixed, 0.25 * old(x) + 0.75 * model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- PrevMatch: store and triggers
def test_snapshot_store_is_fifo_with_a_maximum_size():
    extra = PrevMatch(_cfg(EVERY_EPOCH, "method.prevmatch.max_snapshots=2"))
    for epoch, value in ((1, 1.0), (2, 2.0), (3, 3.0)):
        extra.on_epoch_end(_linear(value), epoch, None)
    assert extra.snapshot_epochs == [2, 3]
    assert [s["weight"][0, 0].item() for s in extra.snapshots] == [2.0, 3.0]


def test_snapshots_are_frozen_copies():
    extra = PrevMatch(_cfg(EVERY_EPOCH))
    layer = _linear(1.0)
    extra.on_epoch_end(layer, 1, None)
    with torch.no_grad():
        layer.weight.fill_(5.0)
    assert extra.snapshots[0]["weight"][0, 0].item() == 1.0


def test_every_k_trigger_adds_a_snapshot_every_k_epochs():
    extra = PrevMatch(_cfg(EVERY_EPOCH, "method.prevmatch.every_k=2", "method.prevmatch.warmup_epochs=3"))
    for epoch in range(1, 6):
        extra.on_epoch_end(_linear(float(epoch)), epoch, {"student": {"miou": 1.0}})
    assert extra.snapshot_epochs == [4]  # epoch 2 falls in the warm-up


def test_best_val_trigger_adds_a_snapshot_on_each_new_best_student_score():
    extra = PrevMatch(_cfg("method.extras=[prevmatch]", "method.prevmatch.trigger=best_val"))
    history = [
        {"student": {"miou": 10.0}, "ema": {"miou": 50.0}},  # the student's score decides
        {"student": {"miou": 8.0}, "ema": {"miou": 60.0}},
        None,  # no evaluation this epoch
        {"student": {"miou": 12.0}, "ema": {"miou": 1.0}},
    ]
    for epoch, scores in enumerate(history, start=1):
        extra.on_epoch_end(_linear(float(epoch)), epoch, scores)
    assert extra.snapshot_epochs == [1, 4]
    cd = PrevMatch(
        _cfg(
            "task=change_detection", "data.nclass=2", "method.prevmatch.trigger=best_val", "data.val_list=val"
        )
    )
    cd.on_epoch_end(_linear(1.0), 1, {"ema": {"iou": 3.0}})  # only the EMA evaluated: its score is used
    assert cd.snapshot_epochs == [1]


def _official_snapshot_epochs(scores: list[float], warmup: int, store: int) -> list[int]:
    """The official PrevMatch loop, replayed: at the start of 0-based epoch e a snapshot is added when the previous
    epoch's score was a new best (strictly above the best so far, which starts at 0) and e >= the warm-up; the
    snapshot then holds the weights after e completed epochs."""
    taken, best, is_best = [], 0.0, False
    for e in range(len(scores) + 1):
        if is_best and e >= warmup:
            taken = [*taken, e][-store:]
        if e < len(scores):
            is_best, best = scores[e] > best, max(best, scores[e])
    return taken


SCORES = [0.0, 5.0, 3.0, 7.0, 7.0, 6.0, 9.0, 10.0, 8.0, 11.0, 12.0, 13.0, 2.0, 14.0, 15.0, 16.0, 17.0, 18.0]


@pytest.mark.parametrize(
    "dataset,store,warmup,expected",
    [
        ("pascal", 8, 0, [11, 12, 14, 15, 16, 17, 18, 19]),
        ("cityscapes", 8, 0, [11, 12, 14, 15, 16, 17, 18, 19]),
        ("ade20k", 5, 5, [15, 16, 17, 18, 19]),
        ("coco", 5, 5, [15, 16, 17, 18, 19]),
    ],
)
def test_best_val_snapshots_exactly_at_new_bests_after_the_warm_up_with_the_datasets_store(
    dataset, store, warmup, expected
):
    cfg = _cfg(f"data.dataset={dataset}", "method.extras=[prevmatch]")
    p = cfg.method.prevmatch
    assert (p.trigger, p.max_snapshots, p.warmup_epochs) == ("best_val", store, warmup)
    extra = PrevMatch(cfg)
    seen = []
    for epoch, value in enumerate([*SCORES, 19.0], start=1):
        extra.on_epoch_end(_linear(float(epoch)), epoch, {"student": {"miou": value}, "ema": {"miou": 99.0}})
        seen = sorted(set(seen) | set(extra.snapshot_epochs))
    assert extra.snapshot_epochs == expected == _official_snapshot_epochs([*SCORES, 19.0], warmup, store)
    # every new best after the warm-up, and nothing else, entered the store at some point
    assert seen == [e for e in (2, 4, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 19) if e >= warmup]
    assert [s["weight"][0, 0].item() for s in extra.snapshots] == [float(e) for e in expected]


def test_a_run_snapshots_at_its_new_best_validation_scores_after_the_warm_up(tmp_path, monkeypatch):
    """The trainer hands each evaluation to PrevMatch: scripted validation scores decide the store."""
    import semiseg.train.loop as loop

    scores = iter([4.0, 6.0, 5.0, 7.0, 7.0, 9.0])
    monkeypatch.setattr(
        loop, "_evaluate_all", lambda *a: {"student": {"miou": (v := next(scores))}, "ema": {"miou": v - 1}}
    )
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=2)
    cfg = _seg_run_config(
        split, "method.extras=[prevmatch]", "method.prevmatch.trigger=best_val", "train.epochs=6",
        "method.prevmatch.warmup_epochs=2", "method.prevmatch.max_snapshots=2",
    )  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["method"]["prevmatch"]
    assert state["epochs"] == [4, 6] and state["best"] == 9.0  # bests at 1, 2, 4, 6; 1 is in the warm-up
    assert state["epochs"] == _official_snapshot_epochs([4.0, 6.0, 5.0, 7.0, 7.0, 9.0], 2, 2)


def test_per_epoch_lambda_steps_once_an_epoch_like_the_official_schedule():
    assert [epoch_triangle_weight(e, 60) for e in (0, 15, 30, 45, 59)] == pytest.approx(
        [0, 0.5, 1, 0.5, 1 / 30]
    )
    assert [epoch_triangle_weight(e, 5) for e in range(5)] == pytest.approx([0, 0.5, 1, 2 / 3, 1 / 3])
    extra = PrevMatch(_cfg("method.extras=[prevmatch]", "train.epochs=10"))
    assert extra.cfg.lambda_schedule == "per_epoch"
    weights = [extra.weight(it, total_iters=40) for it in range(40)]  # 4 iterations per epoch
    assert weights[:8] == [0.0] * 4 + [0.2] * 4 and weights[-1] == pytest.approx(0.2)
    assert weights == [epoch_triangle_weight(it // 4, 10) for it in range(40)]
    smooth = PrevMatch(_cfg("method.prevmatch.lambda_schedule=per_iteration", "train.epochs=10"))
    assert (
        smooth.weight(5, 40) == pytest.approx(triangle_weight(5, 40)) and smooth.weight(5, 40) != weights[5]
    )


def test_averaged_confidence_weighting_is_the_official_cityscapes_formula():
    assert _cfg("data.dataset=cityscapes").method.prevmatch.conf_mode == "pixelavg"
    assert _cfg("data.dataset=pascal").method.prevmatch.conf_mode == "pixelwise"
    logits = torch.zeros(2, 2, 2, 2, requires_grad=True)  # CE = log 2 at every pixel
    plabel = torch.zeros(2, 2, 2, dtype=torch.long)
    conf = torch.stack([torch.full((2, 2), 0.5), torch.tensor([[1.0, 1.0], [1.0, 0.0]])])
    ignore = torch.zeros(2, 2, 2, dtype=torch.uint8)
    ignore[1, 1, 1] = 255  # padded: out of image 1's mean confidence and of the count, not of the CE sum
    loss = averaged_confidence_loss(logits, plabel, conf, ignore)
    assert loss.item() == pytest.approx(8 * math.log(2) * (0.5 + 1.0) / 7)
    loss.backward()
    assert logits.grad is not None


def test_best_val_on_the_test_list_warns():
    with pytest.warns(UserWarning, match="test set"):
        PrevMatch(_cfg("method.prevmatch.trigger=best_val", "data.val_list=test"))


def test_prevmatch_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    extra = PrevMatch(_cfg("method.prevmatch.trigger=best_val"))
    extra.on_epoch_end(_linear(1.0), 1, {"student": {"miou": 4.0}})
    torch.save({"method": {"prevmatch": extra.state_dict()}}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["method"]["prevmatch"]
    again = PrevMatch(_cfg("method.prevmatch.trigger=best_val"))
    again.load_state_dict(state)
    assert again.snapshot_epochs == [1] and again.best == 4.0
    assert torch.equal(again.snapshots[0]["weight"], extra.snapshots[0]["weight"])
    again.on_epoch_end(_linear(2.0), 2, {"student": {"miou": 3.0}})  # not a new best after the resume
    assert again.snapshot_epochs == [1]


@pytest.mark.parametrize(
    "override",
    ["method.prevmatch.max_snapshots=0", "method.maskmatch.block_size=20", "method.maskmatch.mask_ratio=1"],
)
def test_bad_extra_settings_are_named(override):
    with pytest.raises(SemisegError, match=override.split("=")[0].replace(".", r"\.")):
        _cfg("method.extras=[prevmatch,maskmatch]", override)


# ---------------------------------------------------------------- PrevMatch: the loss term
def _context(method, models: Models, n_dates: int, iteration: int = 50, total: int = 100) -> StepContext:
    unlabeled = _batch(n_dates, seed=1)
    conf, plabel, probs = method.pseudo_labels(models.teacher, unlabeled.images)
    views = [method.strong(unlabeled.images) for _ in range(2)]
    targets = [mix_with_reversed(v.box, plabel, conf, unlabeled.ignore) for v in views]
    pred_s = tuple(torch.randn(2, 3 if n_dates == 1 else 2, 28, 28) for _ in views)
    return StepContext(
        models, _batch(n_dates), unlabeled, conf, plabel, probs, views, targets, pred_s, iteration, total
    )


def test_prevmatch_term_is_the_unlabeled_loss_against_the_cutmixed_snapshot_labels():
    torch.manual_seed(0)
    cfg = _cfg(
        "method.extras=[prevmatch]",
        "method.prevmatch.conf_thresh=0.4",
        "method.prevmatch.lambda_schedule=per_iteration",
        EVERY_EPOCH,
    )
    method = build_method(cfg, IMAGENET_MEAN, IMAGENET_STD)
    extra = method.extras[0]
    model, old = build_model("tiny", 3), build_model("tiny", 3)
    with (
        torch.no_grad()
    ):  # a confident snapshot, so some of its pixels pass the 0.4 threshold whatever the init
        old.head.output[2].weight.mul_(50.0)
    models = Models(student=model, teacher=model, raw_student=model)
    ctx = _context(method, models, n_dates=1, iteration=25)
    assert extra.loss(ctx) is None  # no snapshot yet: the base loss alone
    extra.on_epoch_end(old, 1, None)
    term, weight, logs = extra.loss(ctx)
    with torch.no_grad():
        conf, plabel = old(normalize(ctx.unlabeled.images[0], IMAGENET_MEAN, IMAGENET_STD)).softmax(1).max(1)
    expected = 0.0
    for view, pred, (_, _, ignore) in zip(ctx.views, ctx.pred_s, ctx.targets):
        pl, cf = mix_with_reversed(view.box, plabel, conf)
        expected = expected + pseudo_label_loss(pred, pl, cf, ignore, 0.4) / 2
    torch.testing.assert_close(term, expected)
    assert weight == pytest.approx(0.5) and logs["lambda_prev"] == weight and logs["snapshots"] == 1.0
    assert term.item() > 0 and float(logs["loss_prev"]) == pytest.approx(term.item())


# ---------------------------------------------------------------- MaskMatch: masks and multi-scale labels
def test_block_mask_is_aligned_to_the_patch_grid_and_hides_the_ratio_of_blocks():
    torch.manual_seed(0)
    mask = block_mask(4, 56, 84, block_size=28, ratio=0.5)
    assert mask.shape == (4, 56, 84) and mask.dtype == torch.bool
    blocks = mask.view(4, 2, 28, 3, 28)  # a 2 x 3 grid of 28-px blocks starting at multiples of 28 (of 14)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # every block is all hidden or all visible
    assert (blocks[:, :, 0, :, 0].sum((1, 2)) == 3).all()  # round(0.5 * 6) blocks per image
    assert mask.float().mean().item() == pytest.approx(0.5)
    assert not torch.equal(mask[0], mask[1])  # drawn per image
    cut = block_mask(8, 42, 42, block_size=28, ratio=0.75)  # 2 x 2 grid, border blocks cut at 42 px
    cells = cut.view(8, 3, 14, 3, 14)[:, :, 0, :, 0]  # the 14-px patch grid
    assert (cut.view(8, 3, 14, 3, 14) == cells[:, :, None, :, None]).all()  # whole patches only
    first_block = cells[:, :2, :2].flatten(1)
    assert (first_block == first_block[:, :1]).all()  # the top-left 28-px block is one unit
    assert (
        cells[:, :2, :2].any((1, 2)).int() + cells[:, :2, 2].any(1) + cells[:, 2, :2].any(1) + cells[:, 2, 2]
        == 3
    ).all()


def test_mask_is_the_mean_colour_and_the_same_on_both_dates():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)
    mask = block_mask(2, 28, 28, block_size=14, ratio=0.5)
    ma, mb = apply_mask((a, b), mask)
    hidden = mask.unsqueeze(1).expand_as(a)
    assert (ma[hidden] == 0).all() and (mb[hidden] == 0).all()  # 0 after normalisation = mean colour
    assert torch.equal(ma[~hidden], a[~hidden]) and torch.equal(mb[~hidden], b[~hidden])


class Recorder(nn.Module):
    """A stand-in model that records its inputs and returns constant-ish logits with a graph."""

    def __init__(self, nclass: int = 2) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(0.0, 1.0, nclass))
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, *images: torch.Tensor, comp_drop: bool = False) -> torch.Tensor:
        self.calls.append(tuple(x.detach().clone() for x in images))
        b, _, h, w = images[0].shape
        return images[0][:, :1].mean() * 0 + self.bias.view(1, -1, 1, 1).expand(b, -1, h, w)


def test_maskmatch_student_sees_the_weak_view_masked_identically_on_both_dates():
    torch.manual_seed(0)
    cfg = _cfg(
        "task=change_detection", "data.nclass=2", "method.extras=[maskmatch]", "method.maskmatch.block_size=14",
        "method.maskmatch.mask_ratio=0.5", "method.conf_thresh=0.0",
    )  # fmt: skip
    method = build_method(cfg, IMAGENET_MEAN, IMAGENET_STD)
    student, teacher = Recorder(), build_model("tiny", 2, "absdiff")
    ctx = _context(method, Models(student, teacher, student), n_dates=2)
    term, weight, logs = method.extras[0].loss(ctx)
    (a, b), weak = student.calls[-1], method.norm(ctx.unlabeled.images)
    hidden_a, hidden_b = (a == 0).all(1), (b == 0).all(1)
    assert torch.equal(hidden_a, hidden_b)
    assert float(logs["mask_ratio_actual"]) == pytest.approx(0.5)
    assert hidden_a.float().mean().item() == pytest.approx(0.5)
    visible = ~hidden_a[0]
    torch.testing.assert_close(a[0][:, visible], weak[0][0][:, visible])  # visible pixels untouched
    expected = pseudo_label_loss(student.bias.view(1, -1, 1, 1).expand(2, -1, 28, 28), ctx.plabel, ctx.conf,
                                 ctx.unlabeled.ignore, 0.0)  # fmt: skip
    torch.testing.assert_close(term, expected)
    assert weight == 1.0 and term.requires_grad


def test_scaled_sides_round_to_the_patch_grid():
    assert [scaled_side(42, s, 14) for s in (0.75, 1.0, 1.25)] == [28, 42, 56]
    assert scaled_side(28, 0.1, 14) == 14
    assert [scaled_side(48, s, 16) for s in (0.75, 1.0, 1.25)] == [32, 48, 64]  # a patch-16 encoder


def test_multiscale_ensemble_returns_probabilities_at_crop_size_from_each_scale():
    torch.manual_seed(0)
    recorder = Recorder(nclass=3)
    probs = multiscale_probs(recorder, (torch.randn(2, 3, 42, 42),), [0.75, 1.0, 1.25], 14)
    assert [c[0].shape[-1] for c in recorder.calls] == [28, 42, 56]
    assert probs.shape == (2, 3, 42, 42)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 42, 42))
    model = build_model("tiny", 3)
    x = torch.randn(1, 3, 42, 42)
    single = multiscale_probs(model, (x,), [1.0], 14)
    torch.testing.assert_close(single, model(x).softmax(1))


def test_multiscale_pseudo_labels_replace_the_teachers_only_when_asked():
    model = build_model("tiny", 3)
    models = Models(model, model, model)
    images = _batch(1).images
    for flag in (True, False):
        cfg = _cfg("method.extras=[maskmatch]", f"method.maskmatch.multiscale_plabels={str(flag).lower()}")
        method = build_method(cfg, IMAGENET_MEAN, IMAGENET_STD)
        out = method.extras[0].pseudo_labels(models, images)
        assert (out is not None) == flag
        conf, plabel, probs = method.teacher_labels(models, images)
        assert probs.shape == (2, 3, 28, 28) and torch.equal(conf, probs.max(1).values)


# ---------------------------------------------------------------- the combined step
@pytest.mark.parametrize("task", ["segmentation", "change_detection"])
def test_both_extras_enter_the_step_with_their_weights(task):
    torch.manual_seed(0)
    nclass, n_dates = (3, 1) if task == "segmentation" else (2, 2)
    cfg = _cfg(
        f"task={task}", f"data.nclass={nclass}", "method.extras=[prevmatch,maskmatch]",
        "method.maskmatch.block_size=14", "method.conf_thresh=0.0", "method.prevmatch.conf_thresh=0.0",
        "method.prevmatch.lambda_schedule=per_iteration", EVERY_EPOCH,
    )  # fmt: skip
    method = build_method(cfg, IMAGENET_MEAN, IMAGENET_STD)
    model = build_model("tiny", nclass, get_task(task).fusion)
    method.extras[0].on_epoch_end(build_model("tiny", nclass, get_task(task).fusion), 1, None)
    method.set_progress(30, 100)
    out = method.step(Models(model, model, model), _batch(n_dates), _batch(n_dates, seed=1))
    logs = {k: float(v) for k, v in out.logs.items()}
    lam = logs["lambda_prev"]
    assert lam == pytest.approx(0.6) and logs["snapshots"] == 1.0 and logs["mask_ratio_actual"] == 0.75
    expected = (logs["loss_x"] + logs["loss_u"] + lam * logs["loss_prev"] + logs["loss_mask"]) / (2 + lam + 1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


# ---------------------------------------------------------------- end-to-end runs and resume
def _seg_run_config(split: Path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=folder", f"data.root={split.parent / 'data'}", f"data.split={split}", "data.nclass=3",
            "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny",
            "method.conf_thresh=0.5", "train.epochs=2", "optim.lr=1e-4", "method.maskmatch.block_size=14",
            "method.prevmatch.conf_thresh=0.5", "method.prevmatch.trigger=every_k_epochs", *extra,
        ],
    )  # fmt: skip


EXTRA_SETS = ["[prevmatch]", "[maskmatch]", "[prevmatch,maskmatch]"]


@pytest.mark.parametrize("extras", EXTRA_SETS)
def test_segmentation_trains_with_each_extra(tmp_path, extras):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=4)
    result = train(_seg_run_config(split, f"method.extras={extras}"), tmp_path / "run", progress=False)
    assert result["state"].iteration == 4
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    if "prevmatch" in extras:
        assert ckpt["method"]["prevmatch"]["epochs"] == [1, 2]
        assert len(ckpt["method"]["prevmatch"]["snapshots"]) == 2
    assert all(math.isfinite(v.float().sum().item()) for v in ckpt["model"].values())


@pytest.mark.parametrize("extras", EXTRA_SETS)
def test_change_detection_trains_with_each_extra(tmp_path, extras):
    split = make_change_tiles(tmp_path / "levir", n_unlabeled=4, size=42)
    cfg = load_config(
        None,
        [
            "task=change_detection", "data.dataset=levir_cd", f"data.root={tmp_path / 'levir'}",
            f"data.split={split}", "data.nclass=2", "data.crop_size=42", "data.batch_size=2", "data.workers=0",
            "model.encoder=tiny", "method.teacher=student", f"method.extras={extras}", "train.epochs=2",
            "method.maskmatch.block_size=14", "method.prevmatch.trigger=every_k_epochs",
        ],
    )  # fmt: skip
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["state"].iteration == 4
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ("prevmatch" in ckpt["method"]) == ("prevmatch" in extras)


def test_resume_with_a_populated_snapshot_store_gives_the_uninterrupted_run(tmp_path):
    split = make_segmentation_benchmark(tmp_path, "folder", n_unlabeled=8)
    common = ("method.extras=[prevmatch,maskmatch]", "method.prevmatch.every_k=1")
    train(_seg_run_config(split, *common), tmp_path / "straight", progress=False)
    stopped = train(
        _seg_run_config(split, *common, "train.max_iters=5"), tmp_path / "resumed", progress=False
    )
    assert stopped["state"].iteration == 5 and stopped["state"].batch_in_epoch == 1  # epoch 2, batch 1 of 4
    mid = torch.load(tmp_path / "resumed" / "latest.pt", weights_only=True)
    assert mid["method"]["prevmatch"]["epochs"] == [1]  # the store is populated at the stop
    train(_seg_run_config(split, *common), tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "latest.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    snaps_a, snaps_b = a["method"]["prevmatch"], b["method"]["prevmatch"]
    assert snaps_a["epochs"] == snaps_b["epochs"] == [1, 2]
    for sa, sb in zip(snaps_a["snapshots"], snaps_b["snapshots"]):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
