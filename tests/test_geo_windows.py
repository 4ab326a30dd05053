"""Window grid and blending weights: every pixel covered, seams weighted to an exact average."""

import numpy as np
import pytest

from semiseg.errors import SemisegError
from semiseg.geo.blend import StripBlender, blend_weights
from semiseg.geo.windows import make_grid as geo_make_grid


def make_grid(height: int, width: int, window: int, overlap: float = 0.25):
    return geo_make_grid(height, width, window, overlap, patch_size=14)  # DINOv2's patch


def weight_sum(grid) -> np.ndarray:
    total = np.zeros((grid.height, grid.width))
    for t in grid.tiles:
        h, w = min(t.size, grid.height - t.row), min(t.size, grid.width - t.col)
        total[t.row : t.row + h, t.col : t.col + w] += blend_weights(grid, t)[:h, :w]
    return total


def test_grid_clamps_last_window_inside_raster():
    grid = make_grid(150, 97, window=56, overlap=0.25)
    assert grid.row_starts == (0, 42, 84, 94)  # stride 56 - 14 = 42, last clamped to 150 - 56
    assert grid.col_starts == (0, 41)
    assert all(t.row + t.size <= 150 and t.col + t.size <= 97 for t in grid.tiles)


def test_small_raster_gets_one_padded_window():
    grid = make_grid(20, 30, window=56)
    assert len(grid) == 1 and grid.tiles[0].size == 56


@pytest.mark.parametrize("window, overlap", [(50, 0.25), (0, 0.25), (56, 1.0), (56, -0.1)])
def test_bad_window_or_overlap_is_refused(window, overlap):
    with pytest.raises(SemisegError):
        make_grid(100, 100, window=window, overlap=overlap)


@pytest.mark.parametrize("shape, overlap", [((150, 97), 0.25), ((131, 200), 0.25), ((90, 61), 0.5)])
def test_blend_weights_are_a_partition_of_unity(shape, overlap):
    grid = make_grid(*shape, window=56, overlap=overlap)
    np.testing.assert_allclose(weight_sum(grid), 1.0, atol=1e-6)


def test_blend_weights_sum_to_one_for_random_grids():
    rng = np.random.default_rng(1)
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(20, 260, size=2))
        grid = make_grid(*shape, window=28 * int(rng.integers(1, 3)), overlap=float(rng.uniform(0, 0.9)))
        np.testing.assert_allclose(weight_sum(grid), 1.0, atol=1e-6, err_msg=str((shape, grid)))


def test_blend_weights_have_no_ramp_on_raster_edges():
    grid = make_grid(150, 97, window=56, overlap=0.25)
    first, last = grid.tiles[0], grid.tiles[-1]
    w_first, w_last = blend_weights(grid, first), blend_weights(grid, last)
    assert np.all(w_first[0, :28] == 1.0) and np.all(w_first[:28, 0] == 1.0)  # top and left edges flat
    assert np.all(w_last[-1, -20:] == 1.0) and np.all(w_last[-20:, -1] == 1.0)  # bottom and right edges flat
    assert w_first[42, 0] > 0.99 and 0.0 < w_first[55, 0] < 0.01  # ramps down over rows 42..55, shared
    assert w_first[41, 0] == 1.0


def test_strip_blender_keeps_one_window_of_rows_and_reassembles_raster():
    grid = make_grid(300, 45, window=28, overlap=0.25)
    truth = np.random.default_rng(0).random((300, 45)).astype(np.float32)
    padded = np.pad(truth, ((0, 28), (0, 28)))
    blender = StripBlender(grid)
    out = np.zeros_like(truth)
    strip = 0
    for t in grid.tiles:
        if t.row_index != strip:
            row, probs, valid = blender.flush(grid.row_starts[t.row_index])
            out[row : row + probs.shape[1]] = probs[0]
            strip = t.row_index
        blender.add(t, padded[None, t.row : t.row + 28, t.col : t.col + 28], np.ones((28, 28), bool))
        assert blender.acc.shape == (1, 28, 45)  # never more than one window of rows in memory
    row, probs, valid = blender.flush(300)
    out[row:] = probs[0]
    assert valid.all()
    np.testing.assert_allclose(out, truth, rtol=1e-5)
