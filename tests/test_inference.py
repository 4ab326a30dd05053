import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from semiseg.errors import SemisegError
from semiseg.grid import window_starts
from semiseg.inference import evaluate, predict_logits
from semiseg.metrics import ConfusionMatrix, change_scores, segmentation_scores
from semiseg.models.normalize import normalize
from semiseg.models.specs import IMAGENET_MEAN, IMAGENET_STD
from semiseg.task import get_task

SEGMENTATION, CHANGE = get_task("segmentation"), get_task("change_detection")


class PointwiseModel(nn.Module):
    """A 1x1 conv on the summed dates: a pixel's logits depend on that pixel only, so any tiling is exact.

    Like a real model it says what input it takes: sides multiple of `patch_size`, normalised with mean/std.
    """

    patch_size = 14
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, nclass: int = 3, in_ch: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(in_ch, nclass, 1)
        self.seen_sizes: list[tuple[int, int]] = []

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        for x in images:
            assert x.shape[-2] % 14 == 0 and x.shape[-1] % 14 == 0, "inputs must be multiples of 14"
        self.seen_sizes.append(tuple(images[0].shape[-2:]))
        return self.conv(sum(images) if len(images) > 1 else images[0])


def test_window_starts_clamp_the_last_window_to_the_border():
    assert window_starts(61, 28, 18) == (0, 18, 33)
    assert window_starts(28, 28, 18) == (0,)
    assert window_starts(20, 28, 18) == (0,)
    assert window_starts(64, 32, 16) == (0, 16, 32)  # a stride that lands on the border adds no duplicate


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    model = PointwiseModel()
    x = torch.randn(2, 3, 50, 61)  # neither side a multiple of the window nor of 14
    whole = model.conv(x)
    out = predict_logits(model, (x,), mode="sliding_window", window=28, stride=18, nclass=3)
    assert out.shape == (2, 3, 50, 61)
    # exp(logits) is the count-averaged probability itself (a missing division would break the sum to 1)
    assert torch.allclose(out.exp(), whole.softmax(1), atol=1e-5)
    assert set(model.seen_sizes) == {(28, 28)}


def test_sliding_window_pads_images_smaller_than_the_window():
    model = PointwiseModel()
    x = torch.randn(1, 3, 20, 33)
    out = predict_logits(model, (x,), mode="sliding_window", window=56, nclass=3)
    assert out.shape == (1, 3, 20, 33)
    assert model.seen_sizes == [(28, 42)]  # rounded up to multiples of 14, not to the full window
    assert torch.allclose(out.softmax(1), model.conv(x).softmax(1), atol=1e-5)


def test_sliding_window_rejects_windows_not_multiple_of_14_and_wrong_nclass():
    with pytest.raises(SemisegError, match="multiple of 14"):
        predict_logits(PointwiseModel(), (torch.randn(1, 3, 30, 30),), "sliding_window", window=30, nclass=3)
    with pytest.raises(SemisegError, match="classes"):
        predict_logits(PointwiseModel(), (torch.randn(1, 3, 30, 30),), "sliding_window", window=28, nclass=5)


def test_the_patch_size_comes_from_the_model():
    class Patch16(PointwiseModel):
        patch_size = 16

        def forward(self, *images):
            self.seen_sizes.append(tuple(images[0].shape[-2:]))
            return self.conv(images[0])

    model = Patch16()
    predict_logits(model, (torch.randn(1, 3, 30, 45),), mode="original")
    assert model.seen_sizes == [(32, 48)]
    with pytest.raises(SemisegError, match="multiple of 16"):
        predict_logits(model, (torch.randn(1, 3, 30, 30),), "sliding_window", window=28, nclass=3)


def test_original_mode_resizes_to_nearest_multiple_of_14_and_back():
    model = PointwiseModel()
    x = torch.randn(1, 3, 30, 45)
    out = predict_logits(model, (x,), mode="original")
    assert out.shape == (1, 3, 30, 45)
    assert model.seen_sizes == [(28, 42)]  # int(30/14+0.5)*14, int(45/14+0.5)*14
    # A constant image gives constant logits whatever the resizing.
    const = torch.ones(1, 3, 17, 23)
    assert torch.allclose(predict_logits(model, (const,)), model.conv(const), atol=1e-5)


def test_flip_tta_averages_probabilities_of_the_flipped_prediction():
    model = PointwiseModel()
    x = torch.randn(1, 3, 28, 28)
    plain = predict_logits(model, (x,))
    tta = predict_logits(model, (x,), flip_tta=True)
    # A pointwise model is flip-equivariant, so TTA must not change the probabilities ...
    assert torch.allclose(tta.softmax(1), plain.softmax(1), atol=1e-5)

    class LeftBiased(PointwiseModel):
        def forward(self, *images):
            out = super().forward(*images)
            out[..., :, : out.shape[-1] // 2] += torch.tensor([5.0, 0.0, 0.0]).view(1, 3, 1, 1)
            return out

    biased = LeftBiased()
    tta_b = predict_logits(biased, (x,), flip_tta=True).softmax(1)
    # ... while a position-dependent model gets the mean of both orientations' probabilities.
    p_plain = biased(x).softmax(1)
    p_flip = biased(x.flip(-1)).softmax(1).flip(-1)
    assert torch.allclose(tta_b, (p_plain + p_flip) / 2, atol=1e-6)
    assert not torch.allclose(tta_b, p_plain, atol=1e-3)


def _samples(n: int, two_dates: bool, nclass: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.randint(0, 256, (3, 28, 42), generator=g, dtype=torch.uint8)
        label = torch.randint(0, nclass, (28, 42), generator=g)
        label[0, :5] = 255
        ignore = torch.zeros(28, 42, dtype=torch.uint8)
        images = (img, img.clone()) if two_dates else (img,)
        out.append({"images": images, "label": label, "ignore": ignore, "name": f"s{i}"})
    return out


def test_evaluate_segmentation_matches_a_manual_confusion_matrix():
    model = PointwiseModel(nclass=3)
    model.train()
    samples = _samples(3, two_dates=False, nclass=3)
    loader = DataLoader(samples, batch_size=2)
    scores = evaluate(
        model, loader, nclass=3, task=SEGMENTATION, mode="sliding_window", window=28, progress=False
    )
    assert model.training  # restored
    cm = ConfusionMatrix(3)
    for s in samples:
        pred = model.conv(normalize(s["images"][0][None], IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
        cm.update(pred, s["label"][None])
    assert cm.mat.sum() == 3 * (28 * 42 - 5)
    expected = segmentation_scores(cm)
    assert scores["miou"] == pytest.approx(expected["miou"]) and scores["pixel_acc"] == pytest.approx(
        expected["pixel_acc"]
    )
    assert scores["iou_per_class"] == pytest.approx(expected["iou_per_class"])


def test_evaluate_change_task_uses_both_dates_and_masks_padding():
    model = PointwiseModel(nclass=2)
    samples = _samples(2, two_dates=True, nclass=2)
    samples[0]["ignore"][:, :10] = 255
    scores = evaluate(model, DataLoader(samples, batch_size=1), nclass=2, task=CHANGE)
    assert set(scores) == {"iou", "precision", "recall", "f1", "oa", "kappa"}
    cm = ConfusionMatrix(2)
    for s in samples:
        a = normalize(s["images"][0][None], IMAGENET_MEAN, IMAGENET_STD)
        label = s["label"][None].masked_fill(s["ignore"][None] == 255, 255)
        cm.update(model.conv(a + a).argmax(1), label)
    assert scores == pytest.approx(change_scores(cm))
    with pytest.raises(SemisegError, match="2 classes"):
        evaluate(model, DataLoader(samples, batch_size=1), nclass=3, task=CHANGE)


def test_evaluate_runs_under_autocast_and_flip_tta():
    model = PointwiseModel(nclass=3)
    loader = DataLoader(_samples(2, two_dates=False, nclass=3), batch_size=2)
    fp32 = evaluate(model, loader, nclass=3, task=SEGMENTATION, progress=False)
    bf16 = evaluate(
        model,
        loader,
        nclass=3,
        task=SEGMENTATION,
        autocast_dtype=torch.bfloat16,
        flip_tta=True,
        progress=False,
    )
    assert len(bf16["iou_per_class"]) == 3
    assert abs(bf16["miou"] - fp32["miou"]) < 5.0  # same pointwise model, only rounding differs
