"""TensorBoard pictures at every evaluation: what the models see and say on a few fixed samples.

For fixed evaluation samples: the input (both dates side by side for change detection), the truth, and the
prediction of each evaluated model (student, EMA). For semi-supervised runs, for fixed unlabeled samples: the input,
the teacher's pseudo-label on the whole un-augmented sample (the weak view without its random crop) and its
confidence mask (white where the confidence reaches `method.conf_thresh`, the pixels the unlabeled loss uses), so
a user sees the pseudo-labels improve or collapse over the run.

Training must not notice: the samples are fixed indices spread over each list (no random draw), read without
augmentation (`read`, the dataset's un-augmented images; the evaluation set's `__getitem__` is deterministic),
and the forward passes run under `torch.inference_mode` on a forked RNG with the models put back in their mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from semiseg.inference import predict_logits
from semiseg.models.normalize import normalize

SAMPLES = 2  # per list
IGNORED = (96, 96, 96)  # grey: pixels without a label
GAP = 4  # px between the dates of one input
MAX_SIDE = 512  # px: longer pictures are subsampled


def fixed_indices(length: int, count: int = SAMPLES) -> list[int]:
    """`count` indices spread evenly over `length` items (first and last included); no randomness."""
    if length <= 0:
        return []
    count = min(count, length)
    return sorted({round(k * (length - 1) / max(count - 1, 1)) for k in range(count)})


def palette(nclass: int) -> np.ndarray:
    """256 x 3 colours of class values: the class maps' colours (change: black unchanged, red changed)."""
    from semiseg.geo.writer import class_colormap  # the one palette of the toolkit

    table = np.zeros((256, 3), dtype=np.uint8)
    for value, rgba in class_colormap(nclass).items():
        table[value] = rgba[:3]
    table[255] = IGNORED
    return table


def side_by_side(images: Sequence[np.ndarray]) -> np.ndarray:
    """H x W x 3 uint8 images in a row, a white gap between them."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, GAP, 3), 255, np.uint8))
        parts.append(np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=1)


def rgb(image: np.ndarray) -> np.ndarray:
    """The first three bands (one band repeated) of an H x W x C uint8 image."""
    return image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)


class EvalPictures:
    """The fixed samples of a run and the pictures written for them at each evaluation."""

    def __init__(self, val, unlabeled, nclass: int, conf_thresh: float, eval_options: Mapping) -> None:
        self.val = [val[i] for i in fixed_indices(len(val))]
        self.unlabeled = []
        if unlabeled is not None:
            for i in fixed_indices(len(unlabeled)):
                images, _, valid = unlabeled.read(i)
                self.unlabeled.append((unlabeled.name(i), images, valid))
        self.colours = palette(nclass)
        self.nclass = nclass
        self.conf_thresh = conf_thresh
        self.eval_options = dict(eval_options)

    def write(
        self,
        writer,
        step: int,
        models: Mapping[str, nn.Module],
        teacher: nn.Module | None,
        device: torch.device,
    ) -> None:
        """Add every picture at `step`; `models` are the evaluated ones by name, `teacher` makes pseudo-labels."""
        if writer is None:
            return
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            for k, sample in enumerate(self.val):
                images = [im.numpy().transpose(1, 2, 0) for im in sample["images"]]
                truth = sample["label"].numpy().copy()
                truth[sample["ignore"].numpy() == 255] = 255
                self._add(writer, f"val_{k}/input", side_by_side([rgb(im) for im in images]), step)
                self._add(writer, f"val_{k}/truth", self.colours[truth.clip(0, 255)], step)
                for name, model in models.items():
                    _, label = self._predict(model, sample["images"])
                    self._add(writer, f"val_{k}/prediction_{name}", self.colours[label], step)
            for k, (_, images, valid) in enumerate(self.unlabeled if teacher is not None else []):
                tensors = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in images]
                conf, label = self._predict(teacher, tensors)
                confident = conf >= self.conf_thresh
                if valid is not None:
                    label = np.where(valid, label, 255)
                    confident &= valid
                self._add(writer, f"unlabeled_{k}/input", side_by_side([rgb(im) for im in images]), step)
                self._add(writer, f"unlabeled_{k}/pseudo_label", self.colours[label], step)
                mask = np.repeat((confident * 255).astype(np.uint8)[..., None], 3, axis=-1)
                self._add(writer, f"unlabeled_{k}/confidence_mask", mask, step)

    def _predict(self, model: nn.Module, images: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, class) per pixel of one sample, as evaluation predicts it; the model's mode is restored."""
        device = next(model.parameters()).device
        batch = tuple(normalize(x[None].to(device), model.mean, model.std) for x in images)
        was_training = model.training
        model.eval()
        try:
            o = self.eval_options
            logits = predict_logits(
                model, batch, o["mode"], o["window"], o["stride"], self.nclass, o["flip_tta"]
            )
        finally:
            model.train(was_training)
        conf, label = logits.float().softmax(1)[0].max(0)
        return conf.cpu().numpy(), label.cpu().numpy().astype(np.uint8)

    @staticmethod
    def _add(writer, tag: str, image: np.ndarray, step: int) -> None:
        """One picture, every `k`-th pixel kept so its longer side is at most `MAX_SIDE` (event files stay small
        over hundreds of evaluations of large images; class colours stay exact)."""
        k = -(-max(image.shape[:2]) // MAX_SIDE)
        writer.add_image(f"pictures/{tag}", np.ascontiguousarray(image[::k, ::k]), step, dataformats="HWC")
