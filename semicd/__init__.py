"""semicd: semi-supervised remote-sensing change detection, a task on the `semiseg` engine.

`semicd.task.TASK` tells the engine what change detection is (two dates, |f_A - f_B| fusion, change IoU, the
official remote-sensing defaults, LEVIR-CD / WHU-CD tiles and GeoTIFF pairs); `semicd.cli` is the `semicd`
command. Loading any checkpoint works the same as for segmentation: `semicd.load_model(path)`; predicting a
pair of arrays (or files) from Python: `semicd.predict(model, before, after)`.
"""

from __future__ import annotations

from typing import Any

from semiseg import SemisegError, __version__, load_model

__all__ = ["SemisegError", "__version__", "load_model", "predict"]


def predict(model: Any, before: Any, after: Any, **options: Any) -> Any:
    """Change map of a before/after pair: numpy arrays (bands x rows x cols, uint8 0..255 as the model sees them:
    not stretched, band-selected nor nodata-masked) or DataArrays in, a `Prediction` (classes, probs) out; or GeoTIFF paths with `out=` in, files and their summary out. The options
    and the details: `semiseg.api.predict`."""
    from semiseg.api import predict as _predict

    return _predict(model, before, after, **options)
