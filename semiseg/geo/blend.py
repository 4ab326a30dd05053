"""Blend overlapping window predictions into one seamless probability map, one strip of rows at a time.

Weights are separable raised-cosine ramps. Along each axis, consecutive windows hand over to each other in a
zone centred in their overlap (the whole overlap for the usual overlaps <= 1/2): the earlier window ramps down
as the later one ramps up, mirror images with sin^2 + cos^2 = 1. A window has weight 1 in its own part, and
no ramp on the raster's outer edges, where nothing else covers the pixels. The 1-D weights of all windows sum
to exactly one at every pixel, so the 2-D products do too (a partition of unity); the blender still divides by
the accumulated weight, so the output is an exact weighted average of the windows' probabilities.

`StripBlender` keeps only a `window`-tall band of accumulators (K x window x width floats): windows arrive in
row-major order, and once a strip of windows is done the rows above the next strip's start are final, are
handed out, and the band slides down. Memory is O(window x width), never the whole raster.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from semiseg.geo.windows import Tile, TileGrid


def cosine_ramp(length: int) -> np.ndarray:
    """Rising raised-cosine weights over `length` px: strictly positive, and w + reversed(w) == 1."""
    i = np.arange(length, dtype=np.float64)
    return np.sin(0.5 * np.pi * (i + 0.5) / length) ** 2


@functools.lru_cache(maxsize=64)
def transitions(starts: tuple[int, ...], size: int) -> tuple[tuple[int, int], ...]:
    """(first pixel, width) of the hand-over zone between each pair of consecutive windows along an axis.

    A zone sits centred in the pair's overlap and spans all of it when it can; it is narrowed only where zones
    would otherwise touch a third window (the clamped last window, or overlaps above one half), so every pixel
    is in at most one zone and the two windows sharing it have complementary weights.
    """
    overlaps = [(starts[j + 1], starts[j] + size) for j in range(len(starts) - 1)]
    centres = [(a + b) / 2 for a, b in overlaps]
    zones = []
    for j, (a, b) in enumerate(overlaps):
        width = max(0, b - a)
        if j > 0:
            width = min(width, math.floor(centres[j] - centres[j - 1]))
        if j + 1 < len(overlaps):
            width = min(width, math.floor(centres[j + 1] - centres[j]))
        first = a + (b - a - width) // 2
        if zones and first < zones[-1][0] + zones[-1][1]:  # integer rounding: never share a pixel
            shift = zones[-1][0] + zones[-1][1] - first
            first, width = first + shift, max(0, width - shift)
        zones.append((first, width))
    return tuple(zones)


def axis_weights(starts: tuple[int, ...], index: int, size: int) -> np.ndarray:
    """1-D weights of window `index` along one axis: 1 in its own part, ramps in its hand-over zones, 0
    beyond.

    Outer raster edges have no neighbour, hence no ramp: those pixels have nobody else to share with.
    """
    w = np.ones(size, dtype=np.float64)
    zones = transitions(tuple(starts), size)
    if index > 0:
        first, width = zones[index - 1]
        p = first - starts[index]
        w[:p] = 0.0
        w[p : p + width] *= cosine_ramp(width)
    if index + 1 < len(starts):
        first, width = zones[index]
        p = first - starts[index]
        w[p : p + width] *= cosine_ramp(width)[::-1]
        w[p + width :] = 0.0
    return w


def blend_weights(grid: TileGrid, tile: Tile) -> np.ndarray:
    """The separable 2-D weight (size x size, float32) of one window of the grid."""
    wy = axis_weights(grid.row_starts, tile.row_index, grid.size)
    wx = axis_weights(grid.col_starts, tile.col_index, grid.size)
    return np.outer(wy, wx).astype(np.float32)


class StripBlender:
    """Accumulates weighted window probabilities for the current band of rows and hands out finished rows.

    The number of classes is learnt from the first window added, so windows skipped because they hold no valid
    pixel never need a prediction; rows no window was added to come out with `probs=None`.
    """

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.rows = min(grid.size, grid.height)
        self.top = 0  # raster row of the band's first row
        self.acc: np.ndarray | None = None
        self.weight = np.zeros((self.rows, grid.width), dtype=np.float32)
        self.valid = np.zeros((self.rows, grid.width), dtype=bool)

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray) -> None:
        """Blend one window: `probs` K x size x size (None if it has no valid pixel), `valid` size x size."""
        r0 = tile.row - self.top
        h = min(tile.size, self.grid.height - tile.row)
        w = min(tile.size, self.grid.width - tile.col)
        if r0 < 0 or r0 + h > self.rows:
            raise RuntimeError("windows must be added in row-major order, after flushing finished rows")
        cols = slice(tile.col, tile.col + w)
        self.valid[r0 : r0 + h, cols] |= valid[:h, :w]
        if probs is None:
            return
        if self.acc is None:
            self.acc = np.zeros((probs.shape[0], self.rows, self.grid.width), dtype=np.float32)
        weight = blend_weights(self.grid, tile)[:h, :w]
        self.acc[:, r0 : r0 + h, cols] += probs[:, :h, :w] * weight
        self.weight[r0 : r0 + h, cols] += weight

    def flush(self, until_row: int) -> tuple[int, np.ndarray | None, np.ndarray]:
        """Hand out rows [top, until_row) as (first row, K x n x width probabilities or None, validity)."""
        n = until_row - self.top
        valid = self.valid[:n].copy()
        probs = None
        if self.acc is not None:
            weight = self.weight[:n]
            probs = np.divide(self.acc[:, :n], weight, out=np.zeros_like(self.acc[:, :n]), where=weight > 0)
            valid &= weight > 0
        first = self.top
        self._slide(n)
        return first, probs, valid

    def _slide(self, n: int) -> None:
        """Drop the first `n` rows of the band and zero the rows that enter at its bottom."""
        arrays = [self.weight, self.valid] + ([self.acc] if self.acc is not None else [])
        for a in arrays:
            a[..., : self.rows - n, :] = a[..., n:, :].copy()
            a[..., self.rows - n :, :] = 0
        self.top += n
