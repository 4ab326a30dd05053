"""The grid of overlapping windows a scene is predicted in, grouped in rows for streaming.

Windows are square, a multiple of the model's patch size (14 px for DINOv2), and overlap by a fraction so seams
can be blended away. Along each axis the starts step by `stride = window - round(window * overlap)`
(`semiseg.grid.window_starts`); the last window is clamped to end exactly at the raster's edge (so no window
hangs outside a raster larger than it), and a raster smaller than a window gets one window that is read padded.
"""

from __future__ import annotations

from dataclasses import dataclass

from semiseg.errors import SemisegError
from semiseg.grid import window_starts


@dataclass(frozen=True)
class Tile:
    """One window of the grid: its top-left corner on the output grid and its (square) size.

    `row_index`/`col_index` are the window's position in the grid; windows of one `row_index` form a strip.
    """

    row: int
    col: int
    size: int
    row_index: int
    col_index: int


@dataclass(frozen=True)
class TileGrid:
    """All windows of a `height` x `width` raster, plus the per-axis starts the blending weights need."""

    height: int
    width: int
    size: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def tiles(self) -> list[Tile]:
        """Windows in row-major order: the order they are read, predicted and blended in."""
        return [
            Tile(r, c, self.size, i, j)
            for i, r in enumerate(self.row_starts)
            for j, c in enumerate(self.col_starts)
        ]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def check_window(window: int, overlap: float, patch_size: int) -> None:
    """Refuse window sizes the model cannot take and overlaps that make no sense, before any compute."""
    if window <= 0 or window % patch_size:
        raise SemisegError(
            f"--window {window} must be a positive multiple of {patch_size}, the model's patch size "
            f"(e.g. {36 * patch_size})"
        )
    if not 0.0 <= overlap < 1.0:
        raise SemisegError(f"--overlap {overlap} must be a fraction in [0, 1), e.g. 0.25")


def make_grid(height: int, width: int, window: int, overlap: float, patch_size: int) -> TileGrid:
    """The window grid of a raster: windows of `window` px overlapping by `overlap` of their size."""
    check_window(window, overlap, patch_size)
    if height <= 0 or width <= 0:
        raise SemisegError(f"the raster to predict is empty ({height}x{width} px)")
    stride = max(1, window - round(window * overlap))
    return TileGrid(
        height, width, window, window_starts(height, window, stride), window_starts(width, window, stride)
    )
