"""Whole-image prediction (resize to the patch grid or sliding window, optional flip TTA) and the evaluation loop.

The encoder is a ViT with p-pixel patches (p = 14 for DINOv2; the model says), so every input the model sees has
sides that are multiples of p. Two ways to get there, as in the official UniMatch V2 evaluation:

- `original` (Pascal, ADE20K, COCO, LEVIR-CD, WHU-CD): resize each image (bilinear, align_corners=True) so each
  side is the nearest multiple of p, `int(side / p + 0.5) * p`, predict, resize the logits back the same way.
- `sliding_window` (Cityscapes): square windows of `window` pixels (a multiple of p) every `stride` pixels
  (default `int(window * 2 / 3)`, the official 798/532), the last window of a row/column clamped to the border
  (`semiseg.grid.window_starts`); the softmax probabilities of overlapping windows are summed and divided by how
  many windows saw each pixel. A side shorter than the window gets one window of that side rounded up to a
  multiple of p, the image being padded by the < p missing pixels (replicated border), which keeps the model's
  input close to the image's own content.

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

from semiseg.errors import SemisegError
from semiseg.grid import ceil_to_multiple, round_to_multiple, window_starts
from semiseg.metrics import ConfusionMatrix
from semiseg.models.normalize import normalize
from semiseg.task import Task

MODES = ("original", "sliding_window")
Model = Callable[..., Tensor]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _log_probs(probs: Tensor) -> Tensor:
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _predict_original(model: Model, images: Sequence[Tensor], patch: int) -> Tensor:
    h, w = images[0].shape[-2:]
    size = (round_to_multiple(h, patch), round_to_multiple(w, patch))
    logits = model(*(_resize(x, size) for x in images)).float()
    return _resize(logits, (h, w))


def _predict_sliding(
    model: Model, images: Sequence[Tensor], window: int, stride: int, nclass: int, patch: int
) -> Tensor:
    b, _, h, w = images[0].shape
    # A side shorter than the window: one window covering it, rounded up to a multiple of the patch by padding.
    win_h, win_w = min(window, ceil_to_multiple(h, patch)), min(window, ceil_to_multiple(w, patch))
    pad_h, pad_w = max(win_h - h, 0), max(win_w - w, 0)
    if pad_h or pad_w:
        images = tuple(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") for x in images)
    ph, pw = h + pad_h, w + pad_w
    probs = torch.zeros(b, nclass, ph, pw, device=images[0].device)
    count = torch.zeros(1, 1, ph, pw, device=images[0].device)
    for top in window_starts(ph, win_h, stride):
        for left in window_starts(pw, win_w, stride):
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
    patch_size: int | None = None,
) -> Tensor:
    """Predict B x K x H x W logits at the input size for normalised float images (one tensor per date).

    `model(*images)` must return logits at its inputs' size. `patch_size` defaults to the model's. Flip TTA
    averages the probabilities of the image and of its horizontal flip (flipped back).
    """
    if mode not in MODES:
        raise SemisegError(f"unknown eval mode {mode!r}; use one of {', '.join(MODES)}")
    patch = patch_size or getattr(model, "patch_size", None)
    if patch is None:
        raise SemisegError("predict_logits needs the encoder's patch_size (the model does not say)")
    if mode == "sliding_window":
        if window is None or nclass is None:
            raise SemisegError("sliding_window evaluation needs `window` and `nclass`")
        if window <= 0 or window % patch:
            raise SemisegError(
                f"sliding window must be a positive multiple of {patch} (ViT patch), got {window}"
            )
        stride = stride if stride is not None else int(window * 2 / 3)
        if stride <= 0:
            raise SemisegError(f"sliding-window stride must be positive, got {stride}")

        def run(xs: Sequence[Tensor]) -> Tensor:
            return _predict_sliding(model, xs, window, stride, nclass, patch)
    else:

        def run(xs: Sequence[Tensor]) -> Tensor:
            return _predict_original(model, xs, patch)

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
    task: Task,
    mode: str = "original",
    window: int | None = None,
    stride: int | None = None,
    flip_tta: bool = False,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    patch_size: int | None = None,
    ignore_index: int = 255,
    progress: bool = True,
) -> dict:
    """Evaluate `model` over `loader` (batches of sample dicts) and return the task's scores.

    `mean`, `std` and `patch_size` default to the model's own (a `Segmentor` knows its encoder's input). The
    confusion matrix is accumulated on `device` and summed over processes once at the end (each process
    evaluates its own shard of the loader). Pixels whose label is `ignore_index`, or that the sample marks as
    padding (`ignore` == 255), are not counted. The model is put in eval mode and restored afterwards.
    """
    if task.nclass is not None and nclass != task.nclass:
        raise SemisegError(f"{task.title} is evaluated with {task.nclass} classes, got nclass={nclass}")
    mean = mean if mean is not None else getattr(model, "mean", None)
    std = std if std is not None else getattr(model, "std", None)
    if mean is None or std is None:
        raise SemisegError("evaluate needs the input normalisation (mean, std): the model does not say")
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
                logits = predict_logits(model, images, mode, window, stride, nclass, flip_tta, patch_size)
            cm.update(logits.argmax(dim=1), label)
    finally:
        if was_training:
            model.train()
    cm.all_reduce()
    return task.scores(cm)
