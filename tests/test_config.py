"""Config: every shipped YAML validates; overrides, typos and wrong types are named errors."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import pytest
from fakes import load_shipped_config

from semiseg.config import DataConfig, MethodConfig, TrainConfig, config_yaml, load_config
from semiseg.data.geometry import geometry_from_config
from semiseg.errors import SemisegError
from semiseg.models.specs import encoder_spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    cfg = load_shipped_config(path)
    assert cfg.data.crop_size % encoder_spec(cfg.model.encoder).patch_size == 0
    assert cfg.optim.lr == 5.0e-6 and cfg.optim.lr_multi == 40 and cfg.method.conf_thresh == 0.95


def test_paper_settings_per_benchmark():
    by_name = {p.stem: load_shipped_config(p) for p in CONFIGS}
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
    # Only the frozen-encoder ADE20K config freezes (the published main-table ADE20K runs trained the encoder).
    assert [n for n, c in by_name.items() if c.model.freeze_encoder] == ["ade20k_frozen"]


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
        ("base=pascal.yaml", "base is read from config files only"),
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


# ---------------------------------------------------------------- task and dataset defaults
def test_a_change_detection_config_without_ratio_range_gets_the_change_detection_default():
    cfg = load_config(None, ["task=change_detection"])
    assert cfg.data.ratio_range == (0.8, 1.2) and geometry_from_config(cfg).ratio_range == (0.8, 1.2)
    assert (cfg.data.crop_size, cfg.data.batch_size, cfg.data.nclass) == (252, 8, 2)
    assert (cfg.method.teacher, cfg.method.grayscale_p, cfg.data.val_list) == ("student", 0.0, "test")
    # segmentation keeps its own, and the user's values win over either
    assert load_config(None, []).data.ratio_range == (0.5, 2.0)
    assert load_config(None, ["task=change_detection", "data.ratio_range=[0.9,1.1]"]).data.ratio_range == (
        0.9,
        1.1,
    )


def test_dataset_defaults_fill_class_counts_and_a_null_means_the_default():
    assert load_config(None, ["data.dataset=cityscapes"]).data.nclass == 19
    assert load_config(None, ["data.dataset=coco"]).data.nsample == 30000
    with pytest.raises(SemisegError, match="data.nclass is not set"):
        load_config(None, ["data.dataset=folder"])
    # an old resolved config wrote `grayscale_p: null` for "the task's default"
    assert load_config(None, ["task=change_detection", "method.grayscale_p=null"]).method.grayscale_p == 0.0


def test_vertical_flips_apply_to_segmentation():
    cfg = load_config(None, ["data.vflip=1.0", "data.rot90=true"])
    geometry = geometry_from_config(cfg)
    assert geometry.vflip == 1.0 and geometry.rot90 is True


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.before=a.tif"], r"data.before does not apply to data.dataset=pascal \(it is read by change detection datasets \(geotiff_pair: use `semicd`\)"),
        (["task=change_detection", "data.ignore_mask_values=[3]"], r"ignore_mask_values does not apply to data.dataset=levir_cd"),
        (["task=change_detection", "data.dataset=geotiff_pair", "data.split=5%"], "data.split does not apply"),
        (["data.dataset=levir_cd"], r"not a segmentation dataset \(it is a change detection dataset: use `semicd`\)"),
        (["task=change_detection", "data.dataset=pascal"], "use `semiseg`"),
        (["task=depth"], "unknown task 'depth'"),
        (["model.encoder=huge"], "unknown encoder 'huge'"),
        (["data.ratio_range=[2.0,0.5]"], "ratio_range"),
        (["data.batch_size=0"], "data.batch_size must be at least 1"),
        (["method.ema_decay=2"], "method.ema_decay must lie in"),
        (["train.max_iters=0"], "train.max_iters must be at least 1"),
        (["data.crop_size=0"], r"data.crop_size must be a positive multiple of 14 .*got 0; use 14$"),
        (["data.crop_size=100"], r"got 100; use 98 or 112$"),
        (["train.eval_every=0"], "train.eval_every must be at least 1"),
        (["train.log_every=0"], "train.log_every must be at least 1"),
        (["optim.lr=-1e-3"], "optim.lr and optim.lr_multi must be positive"),
        (["data.workers=-1"], "data.workers must be 0 or more"),
        (["data.hflip=1.5"], r"data.hflip must lie in \[0, 1\]"),
        (["method.name=supervised", "method.extras=[prevmatch]"], "semi-supervised base method"),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_or_make_no_sense_are_refused(overrides, message):
    with pytest.raises(SemisegError, match=message):
        load_config(None, overrides)


# ---------------------------------------------------------------- bases
def test_extras_and_benchmark_configs_are_deltas_of_their_base():
    for name in ("pascal_prevmatch", "levir_cd_maskmatch", "levir_cd_prevmatch_maskmatch", "whu_cd", "coco"):
        text = (CONFIGS[0].parent / f"{name}.yaml").read_text()
        assert (
            "base:" in text
            and len([line for line in text.splitlines() if line and not line.startswith("#")]) <= 8
        )
    whu = load_config(CONFIGS[0].parent / "whu_cd.yaml").to_dict()
    levir = load_config(CONFIGS[0].parent / "levir_cd.yaml").to_dict()
    assert whu["data"].pop("dataset") == "whu_cd" and levir["data"].pop("dataset") == "levir_cd"
    assert whu == levir
    both = load_config(CONFIGS[0].parent / "pascal_prevmatch_maskmatch.yaml")
    assert both.method.extras == ["prevmatch", "maskmatch"] and both.data.crop_size == 518


def test_bases_chain_relative_to_the_file_and_refuse_cycles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("data: {crop_size: 28, batch_size: 2}\ntrain: {epochs: 3}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ndata: {batch_size: 5}\n")
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\ntrain: {epochs: 7}\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["data.workers=1"])
    assert (cfg.data.crop_size, cfg.data.batch_size, cfg.train.epochs, cfg.data.workers) == (28, 5, 7, 1)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SemisegError, match="cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(SemisegError, match="gone.yaml .*named as base by"):
        load_config(tmp_path / "orphan.yaml")


def test_the_configs_readme_is_generated_from_the_schema():
    sys.path.insert(0, str(REPO / "tools"))
    import config_docs

    current = (REPO / "configs" / "README.md").read_text()
    assert current == config_docs.render(current), "run python tools/config_docs.py"
    for section, cls in (("data", DataConfig), ("method", MethodConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                assert f"| `{f.name}` |" in current, f"{section}.{f.name} is not documented"


def test_a_resolved_config_loads_back_as_it_is(tmp_path):
    for name in ("pascal", "cityscapes", "levir_cd", "scene_pair"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        (tmp_path / "c.yaml").write_text(config_yaml(cfg))
        assert load_config(tmp_path / "c.yaml") == cfg, name


def test_nulls_mean_the_default_and_values_replace_whole(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "task: change_detection\ndata: {dataset: geotiff_pair, areas: {labeled: a.gpkg, val: v.gpkg}}\n"
        "method: {grayscale_p: 0.5}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: base.yaml\ndata: {areas: {val: w.gpkg}}\nmethod: {grayscale_p: null}\n"
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.data.areas == {"val": "w.gpkg"}  # a mapping value is replaced, not merged entry by entry
    assert cfg.method.grayscale_p == 0.0  # null: the task's default, in a file as on the command line
    assert load_config(tmp_path / "base.yaml", ["method.grayscale_p=null"]).method.grayscale_p == 0.0
    assert (
        load_config(None, ["task=change_detection", "data.nclass=null"]).data.nclass == 2
    )  # the task fixes it


def test_a_bare_yaml_off_is_the_word_off_where_a_setting_takes_it(tmp_path):
    """YAML 1.1 reads `compile: off` as False; a setting whose values include "off" takes it as that word."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: off\n")
    assert load_config(path, []).train.compile == "off"
    assert load_config(path, ["train.compile=max-autotune"]).train.compile == "max-autotune"
    with pytest.raises(SemisegError, match="train.compile: True is not one of"):
        load_config(None, ["train.compile=true"])
