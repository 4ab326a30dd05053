"""The Task seam: a third task plugs into the engine from outside it, and the two tasks come from entry points."""

from __future__ import annotations

import csv
from importlib.metadata import entry_points

import pytest
from fakes import make_segmentation_benchmark

from semiseg.config import load_config
from semiseg.errors import SemisegError
from semiseg.segmentation.datasets import build_segmentation
from semiseg.segmentation.task import KEYS
from semiseg.task import DatasetSpec, Task, get_task, infer_task, register_task, tasks, unregister_task
from semiseg.train.loop import train


def _iou_of_class_one(cm) -> dict:
    from semiseg.metrics import change_scores

    return {"building_iou": change_scores(cm)["iou"]}


BUILDINGS = Task(
    name="building_footprints",
    title="building footprints",
    command="buildings",
    fusion="identity",
    primary_metric="building_iou",
    scores=_iou_of_class_one,
    nclass=2,
    classes=("ground", "building"),
    datasets={"folder": DatasetSpec(build_segmentation, KEYS, {}, "image/mask folders")},
    defaults={
        "data": {"dataset": "folder", "nclass": 2, "ratio_range": [0.9, 1.1]},
        "method": {"grayscale_p": 0.0},
    },
)


@pytest.fixture
def buildings():
    register_task(BUILDINGS)
    yield BUILDINGS
    unregister_task(BUILDINGS.name)


def test_the_two_tasks_come_from_the_installed_entry_points():
    declared = {ep.name: ep.value for ep in entry_points(group="semiseg.tasks")}
    assert declared == {
        "segmentation": "semiseg.segmentation.task:TASK",
        "change_detection": "semicd.task:TASK",
    }
    assert {"segmentation", "change_detection"} <= set(tasks())
    assert infer_task(nclass=2).name == "change_detection" and infer_task(nclass=21).name == "segmentation"
    assert (
        infer_task("identity", 2).name == "segmentation"
    )  # fusion known: only segmentation fuses by identity


def test_a_third_task_trains_on_the_engine_without_touching_it(tmp_path, buildings):
    split = make_segmentation_benchmark(tmp_path, "folder", nclass=2)
    cfg = load_config(
        None,
        [
            "task=building_footprints", f"data.root={tmp_path / 'data'}", f"data.split={split}", "data.crop_size=28",
            "data.batch_size=2", "data.workers=0", "model.encoder=tiny", "train.epochs=1", "method.conf_thresh=0.0",
        ],
    )  # fmt: skip
    assert (
        cfg.data.ratio_range == (0.9, 1.1) and cfg.method.grayscale_p == 0.0
    )  # its defaults, before the user's
    result = train(cfg, tmp_path / "run", progress=False)
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert "student_building_iou" in row and "ema_building_iou" in row  # its scores, its primary metric
    best = max(float(row["student_building_iou"]), float(row["ema_building_iou"]))
    assert result["best"]["value"] == pytest.approx(best, abs=1e-4)  # metrics.csv keeps 4 decimals
    with pytest.raises(SemisegError, match="building footprints has 2 classes"):
        load_config(None, ["task=building_footprints", "data.nclass=3"])


def test_unknown_tasks_are_named_with_the_known_ones():
    with pytest.raises(SemisegError, match=r"unknown task 'segmentaton' \(did you mean 'segmentation'\?\)"):
        get_task("segmentaton")
