"""Whole-image prediction (resize-to-14 or sliding window, optional flip TTA) and the evaluation loop.

The encoder is a ViT with 14-pixel patches, so every input the model sees has sides that are multiples of 14.
Two ways to get there, as in the official evaluation (DESIGN B.9):

- `original`: resize each image (bilinear, align_corners=True) so each side is the nearest multiple of 14,
  `int(side / 14 + 0.5) * 14`, predict, resize the logits back to the input size the same way.
- `sliding_window`: square windows of `window` pixels (a multiple of 14) every `stride` pixels (default
  `int(window * 2 / 3)`, the official 798/532), the last window of a row/column clamped to the border; the
  softmax probabilities of overlapping windows are summed and divided by how many windows saw each pixel. A
  side shorter than the window gets one window of that side rounded up to a multiple of 14, the image being
  padded by the < 14 missing pixels (replicated border), which keeps the model's input close to the image's
  own content.

Both return *logits*: in sliding-window mode (and with flip TTA) the log of the averaged probabilities, so
`softmax` of the result is exactly the averaged probability map and `argmax` the prediction.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from semiseg.augment import IMAGENET_MEAN, IMAGENET_STD, normalize
from semiseg.errors import SemisegError
from semiseg.metrics import ConfusionMatrix, change_scores, segmentation_scores

PATCH = 14
MODES = ("original", "sliding_window")
Model = Callable[..., Tensor]


def _round_to_patch(side: int) -> int:
    return max(PATCH, int(side / PATCH + 0.5) * PATCH)


def _ceil_to_patch(side: int) -> int:
    return -(-side // PATCH) * PATCH


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _log_probs(probs: Tensor) -> Tensor:
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _predict_original(model: Model, images: Sequence[Tensor]) -> Tensor:
    h, w = images[0].shape[-2:]
    size = (_round_to_patch(h), _round_to_patch(w))
    logits = model(*(_resize(x, size) for x in images)).float()
    return _resize(logits, (h, w))


def _window_starts(side: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride`, the last one clamped so it ends on the border."""
    if side <= window:
        return [0]
    starts = list(range(0, side - window, stride))
    starts.append(side - window)
    return starts


def _predict_sliding(model: Model, images: Sequence[Tensor], window: int, stride: int, nclass: int) -> Tensor:
    b, _, h, w = images[0].shape
    # A side shorter than the window: one window covering it, rounded up to a multiple of 14 by padding.
    win_h, win_w = min(window, _ceil_to_patch(h)), min(window, _ceil_to_patch(w))
    pad_h, pad_w = max(win_h - h, 0), max(win_w - w, 0)
    if pad_h or pad_w:
        images = tuple(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") for x in images)
    ph, pw = h + pad_h, w + pad_w
    probs = torch.zeros(b, nclass, ph, pw, device=images[0].device)
    count = torch.zeros(1, 1, ph, pw, device=images[0].device)
    for top in _window_starts(ph, win_h, stride):
        for left in _window_starts(pw, win_w, stride):
            crops = tuple(x[..., top : top + win_h, left : left + win_w] for x in images)
            logits = model(*crops).float()
            if logits.shape[1] != nclass:
                raise SemisegError(f"the model predicts {logits.shape[1]} classes but nclass is {nclass}")
            probs[..., top : top + win_h, left : left + win_w] += logits.softmax(dim=1)
            count[..., top : top + win_h, left : left + win_w] += 1
    return _log_probs(probs[..., :h, :w] / count[..., :h, :w])


def predict_logits(
    model: Model,
    images: Sequence[Tensor],
    mode: str = "original",
    window: int | None = None,
    stride: int | None = None,
    nclass: int | None = None,
    flip_tta: bool = False,
) -> Tensor:
    """Predict B x K x H x W logits at the input size for normalised float images (one tensor per date).

    `model(*images)` must return logits at its inputs' size. Flip TTA averages the probabilities of the image
    and of its horizontal flip (flipped back).
    """
    if mode not in MODES:
        raise SemisegError(f"unknown eval mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "sliding_window":
        if window is None or nclass is None:
            raise SemisegError("sliding_window evaluation needs `window` and `nclass`")
        if window <= 0 or window % PATCH:
            raise SemisegError(
                f"sliding window must be a positive multiple of {PATCH} (ViT patch), got {window}"
            )
        stride = stride if stride is not None else int(window * 2 / 3)
        if stride <= 0:
            raise SemisegError(f"sliding-window stride must be positive, got {stride}")

        def run(xs: Sequence[Tensor]) -> Tensor:
            return _predict_sliding(model, xs, window, stride, nclass)
    else:

        def run(xs: Sequence[Tensor]) -> Tensor:
            return _predict_original(model, xs)

    images = tuple(images)
    logits = run(images)
    if not flip_tta:
        return logits
    flipped = run(tuple(x.flip(-1) for x in images)).flip(-1)
    return _log_probs((logits.softmax(dim=1) + flipped.softmax(dim=1)) / 2)


def _progress_enabled(progress: bool) -> bool:
    rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )
    return progress and rank0 and sys.stderr.isatty()


@torch.inference_mode()
def evaluate(
    model: Model,
    loader: Iterable[dict],
    nclass: int,
    task: str = "segmentation",
    mode: str = "original",
    window: int | None = None,
    stride: int | None = None,
    flip_tta: bool = False,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    progress: bool = True,
) -> dict:
    """Evaluate `model` over `loader` (batches of sample dicts) and return segmentation or change scores.

    The confusion matrix is accumulated on `device` and summed over processes once at the end (each process
    evaluates its own shard of the loader). Pixels whose label is `ignore_index`, or that the sample marks as
    padding (`ignore` == 255), are not counted. The model is put in eval mode and restored afterwards.
    """
    if task not in ("segmentation", "change"):
        raise SemisegError(f"unknown task {task!r}; use 'segmentation' or 'change'")
    if task == "change" and nclass != 2:
        raise SemisegError(f"change detection is evaluated with 2 classes, got nclass={nclass}")
    device = torch.device(device)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    cm = ConfusionMatrix(nclass, ignore_index=ignore_index, device=device)
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for batch in tqdm(loader, desc="eval", disable=not _progress_enabled(progress), leave=False):
            images = tuple(normalize(x.to(device, non_blocking=True), mean, std) for x in batch["images"])
            label = batch["label"].to(device, non_blocking=True).long()
            if "ignore" in batch:
                label = label.masked_fill(batch["ignore"].to(device) == 255, ignore_index)
            with amp:
                logits = predict_logits(model, images, mode, window, stride, nclass, flip_tta)
            cm.update(logits.argmax(dim=1), label)
    finally:
        if was_training:
            model.train()
    cm.all_reduce()
    return change_scores(cm) if task == "change" else segmentation_scores(cm)
