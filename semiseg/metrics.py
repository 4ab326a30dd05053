"""Confusion-matrix metrics: segmentation (mIoU) and change detection (change-class IoU, F1, P, R, OA, kappa).

Everything is accumulated over the whole evaluation set in one integer confusion matrix (rows = target class,
columns = predicted class) and turned into scores once at the end: per-image averages would weight small
images like large ones, which is not what the benchmarks report. The matrix stays on the evaluation device
(one `torch.bincount` per batch, no host round-trip) and is summed across processes exactly once.

All scores are percentages (0-100), like the official UniMatch V2 logs and the published tables; kappa too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from semiseg.errors import SemisegError


class ConfusionMatrix:
    """Pixel counts `mat[target, pred]` over everything passed to `update`; `ignore_index` pixels skipped."""

    def __init__(
        self, nclass: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        if nclass < 1:
            raise SemisegError(f"nclass must be at least 1, got {nclass}")
        self.nclass = nclass
        self.ignore_index = ignore_index
        self.mat = torch.zeros(nclass, nclass, dtype=torch.int64, device=device)
        self._reduced = False

    def reset(self) -> None:
        self.mat.zero_()
        self._reduced = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted class ids and targets (same shape, any layout, e.g. B x H x W)."""
        if self._reduced:
            raise RuntimeError(
                "ConfusionMatrix.update after all_reduce would mix reduced and local counts; reset()"
            )
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        pred = pred.to(self.mat.device).reshape(-1).long()
        target = target.to(self.mat.device).reshape(-1).long()
        valid = target != self.ignore_index
        n = self.nclass
        counts = torch.bincount(target[valid] * n + pred[valid], minlength=n * n)
        if counts.numel() != n * n:
            raise SemisegError(
                f"labels contain class ids >= nclass ({n}) other than ignore ({self.ignore_index}); "
                "check the dataset's nclass and label encoding"
            )
        self.mat += counts.view(n, n)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes (torch.distributed) once; later calls are no-ops until `reset`.

        The matrix must live on a device the process group's backend supports (CUDA for NCCL).
        """
        if not self._reduced and dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        self._reduced = True
        return self


def _as_matrix(cm: ConfusionMatrix | Tensor) -> Tensor:
    mat = cm.mat if isinstance(cm, ConfusionMatrix) else cm
    if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {tuple(mat.shape)}")
    return mat.detach().to("cpu", torch.float64)


def _safe_div(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def segmentation_scores(cm: ConfusionMatrix | Tensor) -> dict[str, float | list[float]]:
    """mIoU, per-class IoU and pixel accuracy, in percent.

    Computed the official way: IoU_c = intersection / (union + 1e-10) for *every* class and mIoU is the mean
    over all classes, so a class absent from both the predictions and the targets counts as IoU 0 (it does not
    happen on the full benchmark validation sets, but does on tiny subsets: keep that in mind when reading
    them).
    """
    mat = _as_matrix(cm)
    inter = mat.diag()
    union = mat.sum(0) + mat.sum(1) - inter
    iou = inter / (union + 1e-10) * 100.0
    total = float(mat.sum())
    return {
        "miou": float(iou.mean()),
        "iou_per_class": [float(v) for v in iou],
        "pixel_acc": _safe_div(float(inter.sum()), total) * 100.0,
    }


def change_scores(cm: ConfusionMatrix | Tensor) -> dict[str, float]:
    """Scores of the change class (class 1) of a 2-class matrix, in percent; 0 wherever a ratio is 0/0.

    IoU = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R), OA = (TP+TN)/all and
    Cohen's kappa = (OA - pe)/(1 - pe) with pe the agreement expected from the marginals.
    """
    mat = _as_matrix(cm)
    if mat.shape != (2, 2):
        raise SemisegError(f"change scores need a 2-class confusion matrix, got {mat.shape[0]} classes")
    tn, fp, fn, tp = (float(v) for v in mat.reshape(-1))
    total = tn + fp + fn + tp
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    oa = _safe_div(tp + tn, total)
    pe = _safe_div((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), total * total)
    return {
        "iou": _safe_div(tp, tp + fp + fn) * 100.0,
        "precision": precision * 100.0,
        "recall": recall * 100.0,
        "f1": _safe_div(2 * precision * recall, precision + recall) * 100.0,
        "oa": oa * 100.0,
        "kappa": _safe_div(oa - pe, 1.0 - pe) * 100.0,
    }
