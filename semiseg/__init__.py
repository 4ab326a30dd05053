"""semiseg: the engine of the toolkit (models, methods, training, inference, GeoTIFF I/O) and the segmentation task.

The engine serves every task through `semiseg.task.Task`; the segmentation task lives in `semiseg.segmentation`
and change detection in the `semicd` package. Heavy imports (torch, timm) are deferred so `semiseg --help` and
`import semiseg` stay fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model", "segment", "SemisegError", "__version__"]

from semiseg.errors import SemisegError
from semiseg.version import __version__


def load_model(path: Any, task: str | None = None, which: str = "auto") -> Any:
    """Load any checkpoint the toolkit knows (ours or official UniMatch V2); see `semiseg.models.checkpoints`."""
    from semiseg.models.checkpoints import load_model as _load

    return _load(path, task=task, which=which)


def segment(model: Any, image: Any, **options: Any) -> Any:
    """Class map of one image: a numpy array (bands x rows x cols, uint8 0..255 as the model sees it: not
    stretched, band-selected nor nodata-masked) or DataArray in, a `Prediction`
    (classes, probs) out; or a GeoTIFF path with `out=` in, files and their summary out. The options and the
    details: `semiseg.api.predict` (the same for change detection: `semicd.predict`)."""
    from semiseg.api import predict

    return predict(model, image, **options)
