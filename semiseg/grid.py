"""Integer geometry shared by every place that lays windows over an image or rounds a side to the patch size.

There is exactly one formula for window starts along an axis. It serves sliding-window evaluation, the window
grid of GeoTIFF prediction and the training windows laid over a GeoTIFF pair, so the three can never drift
apart by one pixel.
"""

from __future__ import annotations


def window_starts(length: int, window: int, stride: int) -> tuple[int, ...]:
    """Offsets of windows of `window` px every `stride` px along an axis of `length` px.

    Every multiple of `stride` below `length - window`, then `length - window` itself: the last window is
    clamped to end exactly on the border, so no window hangs outside and the border is always covered. An axis
    no longer than one window gets the single start 0 (the caller pads or crops that window).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if length <= window:
        return (0,)
    return (*range(0, length - window, stride), length - window)


def round_to_multiple(side: int | float, multiple: int) -> int:
    """`side` rounded to the nearest multiple of `multiple` (halves up), at least one `multiple`.

    This is how the official evaluation brings an image to a size a patch-`multiple` ViT accepts.
    """
    return max(multiple, int(side / multiple + 0.5) * multiple)


def ceil_to_multiple(side: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `side`."""
    return -(-side // multiple) * multiple
