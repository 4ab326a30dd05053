"""Where to label next: score every window of a predicted scene by the model's uncertainty, pick a spread-out few.

The score of a window is the mean uncertainty of its valid pixels, read from the probability raster that
tile-and-predict writes (so scoring streams like prediction: one strip of `window` rows at a time, memory flat in
the scene's height):

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
whose centre is closer than `min_distance` px (Chebyshev) to one already taken, and any touching an area that is
already labelled. Candidate windows tile the scene without overlap, so suggestions never overlap each other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from semiseg.geo.writer import NODATA, PROB_SCALE


@dataclass(frozen=True)
class WindowScore:
    """A window (pixel offsets and size on the scene grid) with its mean uncertainty and valid fraction."""

    col: int
    row: int
    size: int
    score: float
    valid: float


def uncertainty(stored: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] from a stored probability raster (0-254; see the module docstring)."""
    p = stored.astype(np.float64) / PROB_SCALE
    if num_classes <= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return np.nan_to_num(h, nan=0.0)
    return np.clip((1 - p) * num_classes / (num_classes - 1), 0.0, 1.0)


def score_windows(
    probs_path: str | os.PathLike, window: int, num_classes: int, min_valid: float = 0.5
) -> list[WindowScore]:
    """Mean uncertainty of every `window` px cell of a non-overlapping grid over the probability raster.

    Cells at the right and bottom edges are partial (the scene need not be a multiple of the window); cells with
    less than `min_valid` of their pixels valid are left out.
    """
    scores = []
    with rasterio.open(probs_path) as ds:
        for row in range(0, ds.height, window):
            h = min(window, ds.height - row)
            strip = ds.read(1, window=Window(0, row, ds.width, h))
            valid = strip != NODATA
            u = np.where(valid, uncertainty(strip, num_classes), 0.0)
            for col in range(0, ds.width, window):
                cell = slice(col, col + window)
                n_valid = int(valid[:, cell].sum())
                fraction = n_valid / (window * window)
                if n_valid and fraction >= min_valid:
                    scores.append(WindowScore(col, row, window, float(u[:, cell].sum() / n_valid), fraction))
    return scores


def pick_spread(
    scores: Sequence[WindowScore], n: int, min_distance: float, excluded: Sequence[bool] | None = None
) -> list[WindowScore]:
    """Up to `n` windows by descending score, none within `min_distance` px (Chebyshev, centre to centre) of one
    already picked and none flagged in `excluded` (e.g. touching a labelled area)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i].score)
    picked: list[WindowScore] = []
    for i in order:
        if len(picked) == n:
            break
        if excluded is not None and excluded[i]:
            continue
        s = scores[i]
        if all(max(abs(s.col - p.col), abs(s.row - p.row)) >= min_distance for p in picked):
            picked.append(s)
    return picked


def window_polygons(windows: Sequence[WindowScore], transform) -> list:
    """The windows as shapely polygons in the raster's CRS."""
    import shapely

    t = transform
    boxes = []
    for w in windows:
        (x0, x1), (y0, y1) = (
            [t.a * c + t.b * r + t.c for c, r in ((w.col, w.row), (w.col + w.size, w.row + w.size))],
            [t.d * c + t.e * r + t.f for c, r in ((w.col, w.row), (w.col + w.size, w.row + w.size))],
        )
        boxes.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return boxes


def touching(windows: Sequence[WindowScore], transform, areas: Sequence) -> list[bool]:
    """Whether each window shares ground with any of the `areas` geometries (same CRS); a window that only meets
    an area along its edge (the labelled window next door) does not."""
    import shapely

    if not areas:
        return [False] * len(windows)
    union = shapely.union_all(list(areas))
    boxes = window_polygons(windows, transform)
    return [bool(hit) for hit in shapely.intersects(boxes, union) & ~shapely.touches(boxes, union)]


def default_min_distance(window: int) -> int:
    """Two windows' widths between centres: at least one unlabelled window between any two suggestions."""
    return 2 * window


def chance_ratio(picked: int, inside: int, candidates: int, region: int) -> float:
    """How many times more suggestions fall in a region than a random pick would put there (for reports)."""
    expected = picked * region / max(candidates, 1)
    return math.inf if expected == 0 else inside / expected
