"""Config: every shipped YAML validates; overrides, typos and wrong types are named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.config import load_config
from semiseg.errors import SemisegError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.data.crop_size % 14 == 0
    assert cfg.optim.lr == 5.0e-6 and cfg.optim.lr_multi == 40 and cfg.method.conf_thresh == 0.95


def test_paper_settings_per_benchmark():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    assert (by_name["pascal"].data.crop_size, by_name["pascal"].train.epochs) == (518, 60)
    city = by_name["cityscapes"]
    assert (city.data.crop_size, city.train.epochs, city.eval.mode, city.method.loss) == (
        798, 180, "sliding_window", "ohem"
    )  # fmt: skip
    assert by_name["coco"].data.nclass == 81 and by_name["coco"].train.epochs == 20
    levir = by_name["levir_cd"]
    assert (levir.task, levir.data.crop_size, levir.data.batch_size, levir.method.teacher) == (
        "change_detection", 252, 8, "student"
    )  # fmt: skip
    assert by_name["levir_cd_small"].model.encoder == "small"


def test_overrides_parse_yaml_values_and_nested_keys():
    cfg = load_config(None, ["data.split=92", "optim.lr=1e-5", "method.extras=[prevmatch]", "data.root=/x"])
    assert cfg.data.split == "92" and cfg.optim.lr == 1e-5 and cfg.method.extras == ["prevmatch"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.crop_sise=518", r"unknown config key data.crop_sise \(did you mean 'crop_size'\?\)"),
        ("trian.epochs=3", r"unknown config key trian \(did you mean 'train'\?\)"),
        ("train.epochs=many", "train.epochs: expected an integer"),
        ("method.name=meanteacher", "method.name: 'meanteacher' is not one of"),
        ("data.crop_size=500", "multiple of 14"),
        ("method.extras=[prevmach]", r"did you mean 'prevmatch'"),
        ("task=change_detection;data.nclass=3", "2 classes"),
        ("nokey", "key=value"),
    ],
)
def test_config_mistakes_are_named(override, message):
    with pytest.raises(SemisegError, match=message):
        load_config(None, override.split(";"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SemisegError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(SemisegError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
