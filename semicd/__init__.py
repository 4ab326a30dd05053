"""semicd: semi-supervised remote-sensing change detection, a task on the `semiseg` engine.

`semicd.task.TASK` tells the engine what change detection is (two dates, |f_A - f_B| fusion, change IoU, the
official remote-sensing defaults, LEVIR-CD / WHU-CD tiles and GeoTIFF pairs); `semicd.cli` is the `semicd`
command. Loading any checkpoint works the same as for segmentation: `semicd.load_model(path)`.
"""

from semiseg import SemisegError, __version__, load_model

__all__ = ["SemisegError", "__version__", "load_model"]
