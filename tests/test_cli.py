"""The commands as a user runs them: help, one-line errors, train -> eval -> predict -> export, for both tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from conftest import SHARED_DATA
from fakes import make_change_tiles, make_segmentation_benchmark, write_geotiff
from rasterio.transform import from_origin

from semicd.cli import build_parser as semicd_parser
from semicd.cli import main as semicd_main
from semiseg.segmentation.cli import build_parser as semiseg_parser
from semiseg.segmentation.cli import main as semiseg_main

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "cmd",
    [
        ["semiseg", "--help"], ["semiseg", "train", "--help"], ["semiseg", "eval", "--help"],
        ["semiseg", "predict", "--help"], ["semiseg", "splits", "--help"], ["semiseg", "export", "--help"],
        ["semicd", "--help"], ["semicd", "train", "--help"], ["semicd", "predict", "--help"],
        ["semicd", "prepare", "--help"], ["semicd", "splits", "--help"], ["semicd", "demo", "--help"],
        ["semicd", "suggest", "--help"], ["semicd", "pseudolabels", "--help"], ["semiseg", "suggest", "--help"],
        ["semicd", "view", "--help"], ["semiseg", "view", "--help"],
    ],
)  # fmt: skip
def test_every_command_has_help(cmd):
    proc = run(cmd)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_help_does_not_import_torch():
    code = "import sys; from semicd.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


@pytest.mark.parametrize(
    "cmd,message",
    [
        (["semiseg", "train", "--config", "nope.yaml", "--out", "OUT"], "config file not found"),
        (["semiseg", "train", "--config", "configs/pascal.yaml", "--out", "OUT", "--set", "data.crop_sise=5"],
         "did you mean 'crop_size'"),
        (["semiseg", "train", "--config", "configs/pascal.yaml", "--out", "OUT"], "data.root is not set"),
        (["semicd", "eval", "--checkpoint", "missing.pt", "--config", "configs/levir_cd.yaml"], "checkpoint not found"),
        (["semicd", "predict", "--before", "a.tif", "--after", "b.tif", "--checkpoint", "c.pt", "--out", "o.tif"],
         "input raster not found"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_with_non_zero_exit(cmd, message, tmp_path):
    cmd = [str(tmp_path / "run") if c == "OUT" else c for c in cmd]
    proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert not (tmp_path / "run").exists()  # a refused run leaves no run folder that looks like a run
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _geotiff(path: Path, array: np.ndarray, **extra) -> None:
    write_geotiff(path, array, **extra)


def test_segmentation_train_eval_predict_export(tmp_path, capsys):
    split = make_segmentation_benchmark(tmp_path, "folder")
    sets = [f"data.root={tmp_path / 'data'}", f"data.split={split}", "data.dataset=folder", "data.nclass=3",
            "data.crop_size=28", "data.batch_size=2", "data.workers=0", "model.encoder=tiny", "model.weights=null",
            "train.epochs=1", "method.conf_thresh=0.5", "train.global_batch=null"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    run_dir = tmp_path / "run"
    assert (
        semiseg_main(["train", "--config", str(REPO / "configs/pascal.yaml"), "--out", str(run_dir), *args])
        == 0
    )
    assert "model:\n  encoder: tiny" in (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert (
        semiseg_main(
            [
                "eval",
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--config",
                str(REPO / "configs/pascal.yaml"),
                *args,
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 3 and set(scores["iou_per_class"]) == {"class_0", "class_1", "class_2"}
    assert 0 <= scores["miou"] <= 100
    assert (
        semiseg_main(["eval", "--checkpoint", str(run_dir / "best.pt"), *args, "--set", "data.nclass=4"]) == 2
    )
    assert "predicts 3 classes" in capsys.readouterr().err
    masks = tmp_path / "masks"
    assert (
        semiseg_main(
            [
                "predict",
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--input",
                str(tmp_path / "data/images/val"),
                "--out",
                str(masks),
            ]
        )
        == 0
    )
    written = sorted(masks.glob("*.png"))
    assert len(written) == 3
    from PIL import Image

    assert np.asarray(Image.open(written[0])).max() < 3
    assert (
        semiseg_main(["export", "--checkpoint", str(run_dir / "best.pt"), "--out", str(tmp_path / "release")])
        == 0
    )
    assert (tmp_path / "release.safetensors").is_file() and (tmp_path / "release.yaml").is_file()
    # a GeoTIFF scene gets a georeferenced class map
    capsys.readouterr()
    before = tmp_path / "a.tif"
    _geotiff(before, np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8))
    classes = tmp_path / "classes.tif"
    assert semiseg_main(["predict", "--image", str(before), "--checkpoint", str(run_dir / "best.pt"),
                         "--out", str(classes), "--window", "28", "--workers", "0"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["num_classes"] == 3
    with rasterio.open(classes) as ds:
        assert (ds.height, ds.width) == (40, 50) and ds.crs.to_epsg() == 32618 and ds.read(1).max() < 3
    # a segmentation model cannot map change, and the refusal leaves nothing behind
    out = tmp_path / "change.tif"
    assert (
        semicd_main(
            [
                "predict",
                "--before",
                str(before),
                "--after",
                str(before),
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "segmentation checkpoint" in capsys.readouterr().err and not out.exists()


def test_segmentation_splits_command(tmp_path, capsys):
    make_segmentation_benchmark(tmp_path, "folder", n_labeled=5, n_unlabeled=5, n_val=2)
    data = tmp_path / "data"
    # the folder layout lists images/train and images/val
    assert (
        semiseg_main(
            [
                "splits",
                "--dataset",
                "folder",
                "--root",
                str(data),
                "--labeled",
                "3",
                "--out",
                str(tmp_path / "s3"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "s3/labeled.txt").read_text().split("\n")) - 1 == 3
    assert len((tmp_path / "s3/unlabeled.txt").read_text().strip().split("\n")) == 7


def test_change_detection_train_eval_predict(tmp_path, capsys):
    root = tmp_path / "levir"
    make_change_tiles(root)
    sets = [f"data.root={root}", f"data.split={root / 'splits' / '20%'}", "data.crop_size=42", "data.batch_size=2", "data.workers=0",
            "model.encoder=tiny", "model.weights=null", "train.epochs=1"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    run_dir = tmp_path / "run"
    assert (
        semicd_main(["train", "--config", str(REPO / "configs/levir_cd.yaml"), "--out", str(run_dir), *args])
        == 0
    )
    capsys.readouterr()
    assert (
        semicd_main(
            [
                "eval",
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--config",
                str(REPO / "configs/levir_cd.yaml"),
                *args,
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert {"iou", "f1", "precision", "recall", "oa", "kappa"} <= set(scores) and scores["images"] == 3
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    b = a.copy()
    b[:, 10:30, 20:50] = 250
    _geotiff(tmp_path / "a.tif", a)
    _geotiff(tmp_path / "b.tif", b)
    out = tmp_path / "change.tif"
    code = semicd_main(["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"),
                        "--checkpoint", str(run_dir / "best.pt"), "--out", str(out), "--window", "56",
                        "--workers", "0", "--polygons", str(tmp_path / "change.gpkg"), "--view", str(tmp_path / "view")])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["height"] == 70 and summary["width"] == 90
    # --view: the web map of the pair and this prediction, with the command's record inside
    assert summary["view"] == str(tmp_path / "view" / "index.html")
    assert (tmp_path / "view" / "after" / "0" / "0" / "0.webp").exists()
    assert (tmp_path / "view" / "view.yaml").exists()
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32618 and ds.transform == from_origin(500000, 4000000, 0.5, 0.5)
        assert ds.tags()["checkpoint_sha256"]
    import yaml

    record = yaml.safe_load(
        (tmp_path / "change.predict.yaml").read_text()
    )  # the resolved arguments, beside it
    assert record["arguments"]["window"] == 56 and record["result"]["height"] == 70
    # the checkpoint knows how it was trained: eval needs only the data's location, predict its crop
    assert semicd_main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--set", f"data.root={root}"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    code = semicd_main(["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"),
                        "--checkpoint", str(run_dir / "best.pt"), "--out", str(tmp_path / "c2.tif"), "--workers", "0"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["window"] == 42  # the training crop
    # what the view would refuse is refused before predicting: no prediction written, one line
    code = semicd_main(["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"),
                        "--checkpoint", str(run_dir / "best.pt"), "--out", str(tmp_path / "c3.tif"), "--workers", "0",
                        "--view", str(tmp_path / "view3"), "--max-zoom", "9"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--max-zoom 9" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c3.tif").exists() and not (tmp_path / "view3").exists()


def test_change_detection_prepare_and_splits_commands(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val", "test"):
        for sub in ("A", "B", "label"):
            (tmp_path / "src" / split / sub).mkdir(parents=True)
            Image.fromarray(np.zeros((64, 64, 3) if sub != "label" else (64, 64), np.uint8)).save(
                tmp_path / "src" / split / sub / f"{split}_1.png"
            )
    assert (
        semicd_main(
            [
                "prepare",
                "levir",
                "--src",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "tiles"),
                "--tile",
                "16",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["train"] == 16
    assert (
        semicd_main(
            [
                "splits",
                "--root",
                str(tmp_path / "tiles"),
                "--out",
                str(tmp_path / "splits"),
                "--percents",
                "25,50",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"25%": 4, "50%": 8}


@pytest.mark.skipif(
    not (SHARED_DATA / "levir_cd_samples").is_dir(), reason="shared LEVIR-CD samples not present"
)
def test_real_levir_tiles_smoke_run_reports_all_metrics(tmp_path, capsys):
    src = SHARED_DATA / "levir_cd_samples"
    names = sorted(p.name for p in (src / "A").glob("*.png"))
    split = tmp_path / "split"
    split.mkdir()
    (split / "labeled.txt").write_text("\n".join(n for n in names if n.startswith("train")) + "\n")
    (split / "unlabeled.txt").write_text("\n".join(n for n in names if not n.startswith("train")) + "\n")
    (split / "test.txt").write_text("\n".join(n for n in names if n.startswith("test"))[:400] + "\n")
    sets = [f"data.root={src}", f"data.split={split}", f"data.val_list={split / 'test.txt'}", "data.crop_size=56",
            "data.batch_size=2", "data.workers=0", "model.encoder=tiny", "model.weights=null", "train.epochs=1",
            "train.max_iters=3"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    assert (
        semicd_main(
            ["train", "--config", str(REPO / "configs/levir_cd.yaml"), "--out", str(tmp_path / "run"), *args]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        semicd_main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "run/latest.pt"),
                "--config",
                str(REPO / "configs/levir_cd.yaml"),
                *args,
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert {"iou", "f1", "precision", "recall", "oa", "kappa"} <= set(scores)
    assert scores["images"] >= 1 and 0 <= scores["oa"] <= 100


def test_print_config_shows_the_resolved_config_and_each_command_keeps_to_its_task(capsys):
    assert semicd_main(["train", "--config", str(REPO / "configs/whu_cd.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task"] == "change_detection" and printed["data"]["dataset"] == "whu_cd"
    assert printed["data"]["ratio_range"] == [0.8, 1.2] and printed["method"]["teacher"] == "student"
    assert semiseg_main(["train", "--config", str(REPO / "configs/levir_cd.yaml"), "--print-config"]) == 2
    assert "use `semicd` for it" in capsys.readouterr().err
    assert semiseg_main(["train", "--config", str(REPO / "configs/pascal.yaml")]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_help_states_every_default():
    proc = run(["semicd", "predict", "--help"])
    assert "(default: 0.25)" in proc.stdout and "(default: auto)" in proc.stdout
    assert "default: the crop the model was trained on" in " ".join(proc.stdout.split())


@pytest.mark.parametrize("build", [semiseg_parser, semicd_parser], ids=["semiseg", "semicd"])
def test_every_option_of_every_command_has_help(build):
    import argparse

    parser = build()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == [] and len(commands) >= 4


def test_scene_bands_must_be_the_models_or_chosen_never_guessed(tmp_path, capsys):
    """An RGB model given a 4-band file (RGB+NIR? BGR+NIR?) or a 1-band file says so in one line; --bands picks."""
    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    checkpoint = export_model(build_model("tiny", 3), tmp_path / "seg")
    rng = np.random.default_rng(0)
    for bands in (4, 1):  # four plain bands (GDAL would call a default 4-band byte file RGBA)
        _geotiff(
            tmp_path / f"b{bands}.tif",
            rng.integers(0, 255, (bands, 30, 30), dtype=np.uint8),
            photometric="MINISBLACK",
        )
    common = ["--checkpoint", str(checkpoint), "--window", "28", "--workers", "0"]
    for bands, hint in ((4, "--bands 1,2,3 if those are red, green, blue"), (1, "--bands 1,1,1 to repeat")):
        out = tmp_path / f"o{bands}.tif"
        assert (
            semiseg_main(["predict", "--image", str(tmp_path / f"b{bands}.tif"), "--out", str(out), *common])
            == 2
        )
        err = capsys.readouterr().err
        assert f"trained on RGB (3 bands) but {tmp_path / f'b{bands}.tif'} has {bands}" in err and hint in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    for bands, chosen in ((4, "3,2,1"), (1, "1,1,1")):
        out = tmp_path / f"o{bands}.tif"
        assert semiseg_main(
            ["predict", "--image", str(tmp_path / f"b{bands}.tif"), "--out", str(out), "--bands", chosen, *common]
        ) == 0 and out.exists()  # fmt: skip


@pytest.mark.parametrize("parser", [semiseg_parser, semicd_parser])
def test_set_takes_several_pairs_per_flag_and_repeats(parser):
    args = parser().parse_args(["train", "--out", "o", "--set", "a.b=1", "c.d=[2, 3]", "--set", "e.f=x"])
    assert args.overrides == ["a.b=1", "c.d=[2, 3]", "e.f=x"]
