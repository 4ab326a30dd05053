"""Where to label next: score every window of a predicted scene by the model's uncertainty, pick a spread-out few.

The score of a window is the mean uncertainty of its valid pixels, read from the probability raster that
tile-and-predict writes (so scoring streams like prediction: one strip of `cell` rows at a time, memory flat in the
scene's height):

- a change map stores P(change) = p: the uncertainty is the binary entropy H(p) = -p log2 p - (1-p) log2 (1-p),
  1 at p = 0.5 and 0 when the model is sure either way;
- a K-class map stores the winning class's probability q: the uncertainty is (1 - q) K / (K - 1), 1 when every
  class is equally likely and 0 when one is certain.

Why this score: it needs one pass of the model that users already run, works for any task, and with `--tta` the
probability is the average over the flipped views, so disagreement between the views raises the entropy too. A
window where the model is unsure is where a label teaches it most; averaging over the window prefers large unsure
areas to a few unsure boundary pixels.

Why spread out: the most uncertain windows cluster (one unfamiliar district gives ten neighbouring windows), and
ten labels in one place teach less than ten across the scene. Windows are taken greedily by score, skipping any
whose centre is closer than `min_distance` px (Chebyshev; never less than one cell, so suggestions never overlap)
to one already taken, and any sharing ground with an area that is already labelled.

The candidate windows are the training windows of a scene (`semiseg.grid.window_starts`: every `cell` px, the last
one clamped to the border), so a suggestion given back as a labelled area selects exactly that training window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from semiseg.geo.vectors import shares_ground, window_box
from semiseg.geo.writer import NODATA, PROB_SCALE
from semiseg.grid import window_starts


@dataclass(frozen=True)
class WindowScore:
    """A window (pixel offsets and size on the scene grid) with its mean uncertainty and valid fraction."""

    col: int
    row: int
    width: int
    height: int
    score: float
    valid: float


def uncertainty(stored: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] (float32) from a stored probability raster (0-254; see the docstring)."""
    p = stored.astype(np.float32) / np.float32(PROB_SCALE)
    if num_classes <= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return np.nan_to_num(h, nan=0.0)
    return np.clip((1 - p) * (num_classes / (num_classes - 1)), 0.0, 1.0)


def score_windows(
    probs_path: str | os.PathLike, cell: int, num_classes: int, min_valid: float = 0.5
) -> list[WindowScore]:
    """Mean uncertainty of every training window of side `cell` over the probability raster.

    Windows with less than `min_valid` of their pixels valid are left out; a scene smaller than a cell is one
    window of the scene's size.
    """
    scores = []
    with rasterio.open(probs_path) as ds:
        h, w = min(cell, ds.height), min(cell, ds.width)
        cols = window_starts(ds.width, cell, cell)
        for row in window_starts(ds.height, cell, cell):
            strip = ds.read(1, window=Window(0, row, ds.width, h))
            valid = strip != NODATA
            u = np.where(valid, uncertainty(strip, num_classes), np.float32(0))
            for col in cols:
                n_valid = int(valid[:, col : col + w].sum())
                fraction = n_valid / (h * w)
                if n_valid and fraction >= min_valid:
                    score = float(u[:, col : col + w].sum(dtype=np.float64) / n_valid)
                    scores.append(WindowScore(col, row, w, h, score, fraction))
    return scores


def pick_spread(
    scores: Sequence[WindowScore], n: int, min_distance: float, excluded: Sequence[bool] | None = None
) -> list[WindowScore]:
    """Up to `n` windows by descending score, none within `min_distance` px (Chebyshev, centre to centre; at least
    one window, so none overlap) of one already picked and none flagged in `excluded`."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i].score)
    picked: list[WindowScore] = []
    for i in order:
        if len(picked) == n:
            break
        if excluded is not None and excluded[i]:
            continue
        s = scores[i]
        if all(
            abs(s.col - p.col) >= max(min_distance, p.width)
            or abs(s.row - p.row) >= max(min_distance, p.height)
            for p in picked
        ):
            picked.append(s)
    return picked


def window_polygons(windows: Sequence[WindowScore], transform) -> list:
    """The windows as shapely polygons in the raster's CRS."""
    return [window_box(transform, w.col, w.row, w.width, w.height) for w in windows]


def touching(windows: Sequence[WindowScore], transform, areas: Sequence) -> list[bool]:
    """Whether each window shares ground with any of the `areas` geometries (same CRS; see `shares_ground`)."""
    import shapely

    if not areas:
        return [False] * len(windows)
    hits = shares_ground(window_polygons(windows, transform), shapely.union_all(list(areas)))
    return [bool(hit) for hit in hits]


def default_min_distance(cell: int) -> int:
    """Two cells between centres: at least one unlabelled window between any two suggestions."""
    return 2 * cell
