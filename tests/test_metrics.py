import pytest
import torch

import semiseg.metrics as metrics
from semiseg.errors import SemisegError
from semiseg.metrics import ConfusionMatrix, change_scores, segmentation_scores


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 classes, 2 images of 2 x 3; 255 pixels must be skipped whatever is predicted there.
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 255], [0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 0, 2], [0, 1, 2]]])
    return pred, target


def test_confusion_matrix_matches_hand_counts_and_skips_ignore():
    pred, target = _hand_case()
    cm = ConfusionMatrix(3)
    cm.update(pred[:1], target[:1])
    cm.update(pred[1:], target[1:])
    # rows = target, cols = pred; counted by hand over the 10 non-ignored pixels
    assert cm.mat.tolist() == [[2, 1, 0], [0, 3, 1], [1, 0, 2]]


def test_segmentation_scores_by_hand():
    pred, target = _hand_case()
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    s = segmentation_scores(cm)
    # IoU: class0 2/(3+3-2)=1/2, class1 3/(4+4-3)=3/5, class2 2/(3+3-2)=1/2
    assert s["iou_per_class"] == pytest.approx([50.0, 60.0, 50.0], abs=1e-6)
    assert s["miou"] == pytest.approx(160 / 3, abs=1e-6)
    assert s["pixel_acc"] == pytest.approx(70.0)


def test_segmentation_miou_averages_absent_classes_as_zero_like_the_official_code():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    s = segmentation_scores(cm)
    assert s["iou_per_class"][2] == 0.0
    assert s["miou"] == pytest.approx(200 / 3, abs=1e-6)


def test_change_scores_by_hand():
    # TN=6, FP=1, FN=2, TP=3 (ignore pixels excluded)
    target = torch.tensor([0] * 7 + [1] * 5 + [255, 255])
    pred = torch.tensor([0] * 6 + [1] + [0, 0, 1, 1, 1] + [1, 0])
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[6, 1], [2, 3]]
    s = change_scores(cm)
    p, r = 3 / 4, 3 / 5
    oa = 9 / 12
    pe = (4 * 5 + 8 * 7) / 144
    assert s["iou"] == pytest.approx(100 * 3 / 6)
    assert s["precision"] == pytest.approx(100 * p)
    assert s["recall"] == pytest.approx(100 * r)
    assert s["f1"] == pytest.approx(100 * 2 * p * r / (p + r))
    assert s["oa"] == pytest.approx(100 * oa)
    assert s["kappa"] == pytest.approx(100 * (oa - pe) / (1 - pe))


def test_change_scores_are_zero_division_safe():
    s = change_scores(torch.tensor([[10, 0], [0, 0]]))
    assert s["iou"] == s["precision"] == s["recall"] == s["f1"] == s["kappa"] == 0.0
    assert s["oa"] == 100.0
    assert all(v == 0.0 for v in change_scores(torch.zeros(2, 2, dtype=torch.long)).values())


def test_change_scores_need_two_classes():
    with pytest.raises(SemisegError, match="2-class"):
        change_scores(torch.zeros(3, 3))


def test_labels_beyond_nclass_raise_a_clear_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(SemisegError, match="nclass"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))


def test_all_reduce_sums_exactly_once_and_reset_clears(monkeypatch):
    calls = []

    def fake_all_reduce(tensor, op=None):  # two ranks holding the same counts
        calls.append(op)
        tensor.mul_(2)

    monkeypatch.setattr(metrics.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(metrics.dist, "all_reduce", fake_all_reduce)
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    cm.all_reduce()
    cm.all_reduce()
    assert len(calls) == 1
    assert cm.mat.tolist() == [[2, 2], [0, 2]]
    with pytest.raises(RuntimeError):
        cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.reset()
    assert cm.mat.sum() == 0
    cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.all_reduce()
    assert len(calls) == 2 and cm.mat.tolist() == [[2, 0], [0, 0]]


def test_all_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.all_reduce().mat.tolist() == [[0, 0], [0, 1]]
