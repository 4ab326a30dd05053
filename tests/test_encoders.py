"""Encoders beyond RGB DINOv2: every family at a tiny size, their weights, and N-band imagery end to end.

The full-size entries are checked against timm's own definitions on the meta device (no memory, no weights);
the tiny ones run the real code path of each family. N-band: the patch-embedding rule, checkpoints that carry
bands and statistics, `band-stats`, and a 4-band uint16 GeoTIFF pair trained and predicted from the command line.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin

import semiseg.models.encoder as encoder_module
from semicd.cli import main as semicd_main
from semiseg.config import load_config
from semiseg.errors import SemisegError
from semiseg.models.bands import adapt_patch_embedding
from semiseg.models.checkpoints import export_model, infer_architecture, load_model
from semiseg.models.encoder import Encoder, _build_vit
from semiseg.models.segmentor import build_model
from semiseg.models.specs import ENCODER_SPECS, SAT493M_MEAN, encoder_spec

TINY = ("tiny", "tiny_reg", "tiny_dinov3")


@contextlib.contextmanager
def meta_device(monkeypatch):
    """Build full-size models without memory or weights. Older timm (1.0.20) reads the stochastic-depth rates
    with `.item()` while building, which a meta tensor cannot give: that one schedule is made on the CPU."""
    real = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: real(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        yield


def _randomise(module: torch.nn.Module) -> None:
    """Random values everywhere (timm zero-inits some tensors, which would hide a mis-loaded key)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))


@pytest.mark.parametrize("name", TINY)
def test_every_family_gives_four_patch_grid_maps_without_class_or_register_tokens(name):
    spec = encoder_spec(name)
    p = spec.patch_size
    encoder = Encoder(spec).eval()
    features = encoder(torch.randn(2, 3, 5 * p, 3 * p))
    assert [tuple(f.shape) for f in features] == [(2, spec.dim, 5, 3)] * 4
    assert encoder.vit.num_prefix_tokens == (1 if spec.family == "dinov2" else 5)  # class (+ 4 registers)


@pytest.mark.parametrize("name", [n for n, s in ENCODER_SPECS.items() if s.arch and not n.startswith("tiny")])
def test_full_size_entries_match_timms_definitions(name, monkeypatch):
    import timm

    spec = encoder_spec(name)
    with meta_device(monkeypatch):
        ours = _build_vit(spec)
        hub = timm.create_model(spec.hub_name.split(".")[0], pretrained=False, num_classes=0)
    assert ours.embed_dim == hub.embed_dim == spec.dim and len(ours.blocks) == spec.depth
    assert ours.patch_embed.patch_size == (spec.patch_size, spec.patch_size) and ours.num_prefix_tokens == 5
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in hub.state_dict().items()
    }
    assert timm.models.get_pretrained_cfg(spec.hub_name) is not None  # the hub name exists in this timm


def test_timm_names_select_the_same_entry_and_the_satellite_statistics():
    sat = encoder_spec("vit_large_patch16_dinov3.sat493m")
    assert sat.name == "dinov3_large_sat" and sat.mean == SAT493M_MEAN and sat.patch_size == 16
    assert encoder_spec("vit_base_patch14_reg4_dinov2").name == "base_reg"
    assert encoder_spec("vit_base_patch16_dinov3").name == "dinov3_base"
    with pytest.raises(SemisegError, match="256 or 272"):
        load_config(None, ["model.encoder=vit_base_patch16_dinov3", "data.crop_size=260", "data.nclass=2"])


# --- N bands -----------------------------------------------------------------------------------------------


def test_visible_bands_keep_their_filters_and_the_others_start_from_the_scaled_mean():
    rgb = torch.randn(8, 3, 16, 16)
    four = adapt_patch_embedding(rgb, 4, None)  # default: bands 1, 2, 3 are red, green, blue
    torch.testing.assert_close(four[:, :3], rgb)
    torch.testing.assert_close(four[:, 3], rgb.mean(1) * 3 / 4)
    sentinel = adapt_patch_embedding(rgb, 13, (4, 3, 2))  # Sentinel-2: B4 red, B3 green, B2 blue
    torch.testing.assert_close(sentinel[:, [3, 2, 1]], rgb)
    torch.testing.assert_close(sentinel[:, 0], rgb.mean(1) * 3 / 13)
    assert adapt_patch_embedding(rgb, 3, None) is rgb
    with pytest.raises(SemisegError, match="three different input band positions"):
        adapt_patch_embedding(rgb, 4, (1, 2, 5))


@pytest.mark.parametrize("bands", [1, 2])
def test_without_visible_bands_a_grey_image_embeds_as_the_rgb_model_sees_grey(bands):
    rgb = torch.randn(8, 3, 4, 4)
    adapted = adapt_patch_embedding(rgb, bands, None if bands == 1 else ())
    grey = torch.rand(1, 1, 8, 8)
    ours = torch.nn.functional.conv2d(grey.expand(1, bands, 8, 8), adapted, stride=4)
    pretrained = torch.nn.functional.conv2d(grey.expand(1, 3, 8, 8), rgb, stride=4)
    torch.testing.assert_close(ours, pretrained)


@pytest.mark.parametrize("name", TINY)
def test_rgb_weights_files_load_into_a_four_band_encoder(name, tmp_path):
    from safetensors.torch import save_file

    rgb = Encoder(name)
    _randomise(rgb)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.vit.state_dict().items()}, str(path))
    four = Encoder(encoder_spec(name).with_input((0.5,) * 4, (0.2,) * 4))
    four.load_pretrained(str(path))
    got, want = four.vit.state_dict(), rgb.vit.state_dict()
    for key, value in want.items():
        if key == "patch_embed.proj.weight":
            torch.testing.assert_close(got[key][:, :3], value)
            torch.testing.assert_close(got[key][:, 3], value.mean(1) * 3 / 4)
        else:
            torch.testing.assert_close(got[key], value)


def test_offline_dinov3_weights_name_the_file_to_fetch_and_where_it_goes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(encoder_module, "_hub_reachable", lambda: False)
    with meta_device(monkeypatch):
        encoder = Encoder("dinov3_large_sat")
    with pytest.raises(SemisegError) as err:
        encoder.load_pretrained("hub")
    message = str(err.value)
    assert "huggingface.co/timm/vit_large_patch16_dinov3.sat493m/resolve/main/model.safetensors" in message
    assert "model.weights" in message and "\n" not in message


@pytest.mark.parametrize("name", TINY)
def test_a_checkpoint_carries_its_family_bands_and_statistics(name, tmp_path):
    spec = encoder_spec(name).with_input((0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8))
    model = build_model(spec, 2, "absdiff").eval()
    _randomise(model)
    path = export_model(model, tmp_path / "cd", {"input_bands": [1, 2, 3, 4], "stretch": "fixed:0,3000"})
    loaded = load_model(path)
    assert loaded.spec.family == spec.family and loaded.spec.bands == 4 and loaded.mean == spec.mean
    assert loaded.meta["input_bands"] == [1, 2, 3, 4] and loaded.meta["stretch"] == "fixed:0,3000"
    x = torch.rand(1, 4, 2 * spec.patch_size, 2 * spec.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, x.flip(-1)), model(x, x.flip(-1)))
    state = {k: v for k, v in loaded.state_dict().items()}
    assert infer_architecture(state)[0].family == spec.family  # even without the recorded name


# --- a 4-band uint16 GeoTIFF pair from the command line --------------------------------------------------------


def _four_band_pair(folder, size=96):
    """Before/after uint16 RGB+NIR with a square that changes; the change shows most in NIR (band 4)."""
    rng = np.random.default_rng(0)
    before = rng.integers(800, 1200, (4, size, size)).astype(np.uint16)
    after = before.copy()
    after[3, 20:60, 30:70] += 1500
    after[:3, 20:60, 30:70] += 300
    label = np.zeros((1, size, size), np.uint8)
    label[0, 20:60, 30:70] = 255
    profile = dict(
        driver="GTiff", width=size, height=size, crs="EPSG:32618", transform=from_origin(5e5, 4e6, 1, 1)
    )
    paths = {}
    for name, data in (("before", before), ("after", after), ("label", label)):
        paths[name] = folder / f"{name}.tif"
        extra = {"photometric": "MINISBLACK"} if data.shape[0] == 4 else {}
        with rasterio.open(paths[name], "w", count=data.shape[0], dtype=data.dtype, **profile, **extra) as ds:
            ds.write(data)
    return paths


def test_a_four_band_pair_measures_trains_and_predicts_with_its_bands_and_statistics(tmp_path, capsys):
    paths = _four_band_pair(tmp_path)
    rgb_weights = tmp_path / "dinov3_rgb.safetensors"
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in Encoder("tiny_dinov3").vit.state_dict().items()}, str(rgb_weights)
    )
    base = tmp_path / "scene.yaml"
    base.write_text(yaml.safe_dump({
        "task": "change_detection",
        "data": {"dataset": "geotiff_pair", "before": str(paths["before"]), "after": str(paths["after"]),
                 "label": str(paths["label"]), "window": 48, "crop_size": 32, "batch_size": 2, "workers": 0,
                 "fractions": [0.25, 0.25], "bands": [1, 2, 3, 4]},
        "model": {"encoder": "tiny_dinov3", "weights": str(rgb_weights)},
        "train": {"epochs": 1, "max_iters": 2, "global_batch": None, "log_every": 1},
        "method": {"conf_thresh": 0.5},
    }))  # fmt: skip
    stats_path = tmp_path / "scene_4band.yaml"
    assert semicd_main(["band-stats", str(paths["before"]), str(paths["after"]), "--bands", "1,2,3,4",
                        "--config", str(base), "--out", str(stats_path)]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    written = yaml.safe_load(stats_path.read_text())
    assert (
        written["base"] == "scene.yaml"
        and written["data"]["mean"] == stats["mean"]
        and len(stats["std"]) == 4
    )
    lo, hi = (float(v) for v in written["data"]["stretch"].removeprefix("fixed:").split(";")[3].split(","))
    assert 800 <= lo < 900 and 2000 < hi <= 2700  # band 4's robust limits span the NIR change

    run = tmp_path / "run"
    assert semicd_main(["train", "--config", str(stats_path), "--out", str(run)]) == 0
    log = (run / "log.txt").read_text()
    assert "input: 4 band(s) (raster bands [1, 2, 3, 4]), patch 16" in log
    model = load_model(run / "best.pt")
    assert model.spec.bands == 4 and list(model.mean) == pytest.approx(stats["mean"])
    assert model.meta["input_bands"] == [1, 2, 3, 4] and model.meta["stretch"] == written["data"]["stretch"]

    out = tmp_path / "change.tif"
    capsys.readouterr()
    assert semicd_main(["predict", "--before", str(paths["before"]), "--after", str(paths["after"]),
                        "--checkpoint", str(run / "best.pt"), "--out", str(out), "--window", "48",
                        "--workers", "0"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    with rasterio.open(out) as ds:
        assert ds.count == 1 and ds.read(1).shape == (96, 96)
    assert summary["stretch"].startswith("a fixed stretch of the uint16 values")  # the checkpoint's, per band


def test_the_weights_licence_is_said_at_the_start_and_kept_in_the_checkpoint():
    from semiseg.train.loop import weights_notice

    notice = weights_notice("dinov3_vitl16_pretrain_sat493m.pth", encoder_spec("dinov3_large_sat"))
    assert notice.startswith("pretrained weights dinov3_vitl16_pretrain_sat493m.pth: licence DINOv3 License")
    assert "Apache-2.0" in weights_notice("hub", encoder_spec("base_reg"))
    assert weights_notice(None, encoder_spec("dinov3_large_sat")) is None


def test_bands_without_statistics_point_to_band_stats():
    with pytest.raises(SemisegError, match="band-stats"):
        load_config(None, ["data.dataset=geotiff_pair", "data.bands=[1,2,3,4]", "model.encoder=tiny"],
                    task="change_detection")  # fmt: skip


def test_rgb_bands_reorder_a_three_band_model_too(tmp_path):
    from safetensors.torch import save_file

    rgb = Encoder("tiny")
    _randomise(rgb)
    state = {k: v.contiguous() for k, v in rgb.vit.state_dict().items()}
    path = tmp_path / "rgb.safetensors"
    save_file(state, str(path))
    bgr = Encoder("tiny")
    bgr.load_pretrained(str(path), rgb_bands=(3, 2, 1))
    torch.testing.assert_close(bgr.vit.patch_embed.proj.weight, state["patch_embed.proj.weight"].flip(1))


def test_a_weights_file_of_another_family_is_one_line(tmp_path):
    plain = Encoder("tiny")
    state = {k: v for k, v in plain.vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 48)  # as in an official DINOv2 file
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    with pytest.raises(
        SemisegError, match="holds a DINOv2 encoder, but model.encoder=tiny_reg is dinov2_reg"
    ):
        Encoder("tiny_reg").load_pretrained(str(path))


@pytest.mark.parametrize(
    "mean,std,message",
    [([float("nan")] * 3, [0.2] * 3, "must be a number"), ([0.5] * 3, [float("inf")] * 3, "positive number")],
)
def test_statistics_must_be_finite(mean, std, message):
    with pytest.raises(SemisegError, match=message):
        load_config(None, [f"data.mean={mean}".replace("nan", ".nan"), f"data.std={std}".replace("inf", ".inf"),
                           "data.nclass=2"])  # fmt: skip


def test_rgb_only_datasets_refuse_other_band_counts():
    with pytest.raises(SemisegError, match="data.dataset=pascal reads RGB images only"):
        load_config(None, ["data.dataset=pascal", "data.mean=[0.5,0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2,0.2]"],
                    task="segmentation")  # fmt: skip


def test_resuming_with_other_bands_is_refused_in_one_line(tmp_path, capsys):
    paths = _four_band_pair(tmp_path)
    common = ["--set", f"data.before={paths['before']}", f"data.after={paths['after']}", f"data.label={paths['label']}",
              "data.dataset=geotiff_pair", "data.root=null", "data.split=null", "data.val_list=null", "data.window=48",
              "data.crop_size=32", "data.batch_size=2", "data.workers=0", "data.fractions=[0.25,0.25]",
              "model.encoder=tiny_dinov3", "model.weights=null", "train.epochs=2", "train.max_iters=1",
              "train.global_batch=null", "method.conf_thresh=0.5"]  # fmt: skip
    run = tmp_path / "run"
    assert semicd_main(["train", "--out", str(run), *common]) == 0
    model = load_model(run / "latest.pt")
    assert model.meta["input_bands"] == [1, 2, 3]  # the bands training read, recorded though not configured
    capsys.readouterr()
    four = [
        "data.bands=[1,2,3,4]",
        "data.mean=[0.5,0.5,0.5,0.5]",
        "data.std=[0.2,0.2,0.2,0.2]",
        "train.max_iters=2",
    ]
    assert semicd_main(["train", "--out", str(run), *common, *four]) == 2
    err = capsys.readouterr().err
    assert "was trained with data.bands=None" in err and len(err.strip().splitlines()) == 1


def test_band_stats_applies_a_given_stretch_to_8_bit_data_and_refuses_a_missing_out_folder(tmp_path, capsys):
    data = np.tile(np.arange(0, 200, dtype=np.uint8), (3, 200, 1))
    path = tmp_path / "u8.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(5e5, 4e6, 1, 1)) as ds:  # fmt: skip
        ds.write(data)
    assert semicd_main(["band-stats", str(path), "--stretch", "fixed:0,100"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["mean"][0] == pytest.approx(
        (np.clip(np.arange(200) * 2.55, 0, 255).round() / 255).mean(), abs=1e-3
    )
    assert semicd_main(["band-stats", str(path), "--out", str(tmp_path / "nope" / "s.yaml")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
