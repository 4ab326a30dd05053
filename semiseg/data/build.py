"""`build(cfg, stage)`: a validated config in, the datasets of one stage of a run out, for any task.

The task's `DatasetSpec` for `data.dataset` builds them (`semiseg.task`); this module owns what is the same for
every task and dataset: which sets a stage needs, and the errors when one is missing. Stages (as torchgeo's
`setup(stage)`):

- `fit`: labeled, unlabeled (only when the method trains on unlabeled images) and evaluation data, all checked
  on disk before training starts;
- `eval`: the evaluation data only, so scoring a checkpoint needs neither the training lists nor their files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from semiseg.config import Config
from semiseg.errors import SemisegError
from semiseg.registry import METHODS
from semiseg.task import get_task

Stage = Literal["fit", "eval"]
STAGES: tuple[Stage, ...] = ("fit", "eval")


@dataclass(frozen=True)
class DataRequest:
    """What a dataset builder is asked for: `stage`, and whether the unlabeled set is needed."""

    stage: Stage
    unlabeled: bool

    @property
    def training(self) -> bool:
        return self.stage == "fit"


@dataclass
class DataBundle:
    """The datasets of a run; `labeled`/`unlabeled` are None when the stage or method does not use them.
    `input_bands` (the raster bands the datasets read, defaults included) goes into checkpoints so prediction
    reads the same ones."""

    labeled: Dataset | None
    unlabeled: Dataset | None
    val: Dataset
    classes: list[str]
    input_bands: list[int] | None = None  # raster bands read (1-based), when the data are rasters


def require_root(cfg: Config) -> Path:
    if not cfg.data.root:
        raise SemisegError("data.root is not set: pass --set data.root=/path/to/dataset")
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise SemisegError(f"data.root does not exist: {root}")
    return root


def build(cfg: Config, stage: Stage) -> DataBundle:
    """The datasets `stage` needs, checked; bad data fails here with a message naming the file or list."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    task = get_task(cfg.task)
    spec = task.dataset(cfg.data.dataset)
    request = DataRequest(stage, unlabeled=stage == "fit" and METHODS[cfg.method.name].needs_unlabeled)
    bundle = spec.build(cfg, request)
    if request.training and bundle.labeled is None:
        raise SemisegError(f"data.dataset={cfg.data.dataset} gave no labeled training data")
    if request.unlabeled and bundle.unlabeled is None:
        raise SemisegError(
            f"method {cfg.method.name} needs unlabeled data, but none was found for this split "
            "(add unlabeled.txt to the split, set data.unlabeled_list, or use method.name=supervised)"
        )
    if not request.unlabeled:
        bundle.unlabeled = None
    if bundle.val is None:
        raise SemisegError(f"data.dataset={cfg.data.dataset} gave no evaluation data: set data.val_list")
    return bundle
