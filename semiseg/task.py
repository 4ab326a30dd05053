"""What a task is, in one object, and how the engine finds the tasks that are installed.

A task (semantic segmentation, change detection, or a third one someone adds) tells the engine everything that
differs between tasks: how many images make one sample, how the model fuses their features, which score
selects models, the task's configuration defaults, its datasets and the words its command line uses. The
engine asks the task and never compares task names.

Tasks are found through the `semiseg.tasks` entry-point group, so a new task plugs in from its own package
without editing the engine:

    [project.entry-points."semiseg.tasks"]
    my_task = "my_package.task:TASK"

`register_task` adds one at run time (tests, notebooks). This module is plain Python (no torch) so that the
configuration and the command-line help can use it at no cost; dataset builders and score functions are
imported only when they are called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from semiseg.errors import SemisegError, did_you_mean

ENTRY_POINT_GROUP = "semiseg.tasks"

# The ways the model (`semiseg.models.segmentor.Segmentor`) combines the features of one sample's images, and how
# many images each takes: `identity` for one image, `absdiff` (|f_A - f_B| per tapped layer, one encoder for both
# dates) for a before/after pair.
FUSIONS: dict[str, int] = {"identity": 1, "absdiff": 2}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a task can train on.

    `build(cfg, request)` takes a `semiseg.config.Config` and a `semiseg.data.build.DataRequest` and returns the
    run's datasets as a `semiseg.data.build.DataBundle`, for what the request asks (the evaluation list only, or
    everything training needs). (This module names those types in words only: it sits below both modules.) `keys` are the `data.*` options this
    dataset reads on top of the ones every dataset reads (`semiseg.config.COMMON_DATA_KEYS`): any other
    `data.*` option a user sets is refused rather than ignored. `defaults` are nested config values the
    dataset implies (e.g. its class count), applied over the task's defaults and under the user's values.
    """

    build: Callable[[Any, Any], Any]
    keys: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True)
class Task:
    """Everything the engine needs to know about a task.

    - `name`: the config value of `task`; `title` and `command`: how the command line speaks of it.
    - the model `fusion` that combines the features of a sample's images, which fixes how many images make one
      sample (`num_images`): `identity` for one image, `absdiff` for a before/after pair.
    - `scores(confusion_matrix) -> dict` of percentages; `primary_metric` names the one that selects models.
    - `nclass`: a class count the task fixes (change detection: 2), else None; `classes`: default names.
    - `defaults`: nested config values applied before the user's (e.g. change detection's 0.8-1.2 rescale).
    - `datasets`: name -> `DatasetSpec`.
    """

    name: str
    title: str
    command: str
    fusion: str
    primary_metric: str
    scores: Callable[[Any], dict]
    datasets: Mapping[str, DatasetSpec]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    nclass: int | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(
                f"task {self.name}: unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}"
            )

    @property
    def num_images(self) -> int:
        return FUSIONS[self.fusion]

    def dataset(self, name: str | None) -> DatasetSpec:
        """The spec of dataset `name`, or an error that lists this task's datasets (and names the task that has
        it, when it belongs to another one)."""
        if name in self.datasets:
            return self.datasets[name]
        owner = next((t for t in tasks().values() if name in t.datasets), None)
        where = (
            f" (it is a {owner.title} dataset: use `{owner.command}`)"
            if owner
            else did_you_mean(name, self.datasets)
        )
        raise SemisegError(
            f"data.dataset {name!r} is not a {self.title} dataset{where}; choose one of {', '.join(self.datasets)}"
        )


_registered: dict[str, Task] = {}
_loaded: dict[str, Task] | None = None


def _installed() -> dict[str, Task]:
    """Tasks declared by installed packages, loaded once."""
    global _loaded
    if _loaded is None:
        found: dict[str, Task] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            task = ep.load()
            if not isinstance(task, Task):
                raise TypeError(f"entry point {ep.name} = {ep.value} is not a semiseg.task.Task")
            found[task.name] = task
        _loaded = found
    return _loaded


def tasks() -> dict[str, Task]:
    """Every known task by name: the installed ones, then those registered at run time."""
    return {**_installed(), **_registered}


def register_task(task: Task) -> Task:
    """Make `task` known to the engine for this process (installed packages use the entry point instead)."""
    _registered[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _registered.pop(name, None)


def get_task(name: str) -> Task:
    known = tasks()
    if name not in known:
        hint = (
            did_you_mean(name, known)
            if known
            else (" (no task is installed: reinstall the package with `pip install -e .`)")
        )
        raise SemisegError(f"unknown task {name!r}{hint}; choose one of {', '.join(known) or 'none'}")
    return known[name]


def infer_task(fusion: str | None = None, nclass: int | None = None) -> Task:
    """The task of weights that do not record one (official checkpoints).

    Among the tasks with this fusion (any, when unknown), one whose fixed class count equals `nclass` wins
    over one that takes any count: 2-class official weights are change detection, 21-class ones
    segmentation. Fusion has no weights, so the files themselves cannot tell the two apart.
    """
    candidates = [t for t in tasks().values() if fusion is None or t.fusion == fusion]
    exact = [t for t in candidates if t.nclass is not None and t.nclass == nclass]
    free = [t for t in candidates if t.nclass is None]
    if exact or free:
        return (exact or free)[0]
    raise SemisegError(f"no installed task takes {nclass}-class weights with {fusion or 'any'} fusion")
