"""The shared model: encoder taps, DPT head, fusion, complementary dropout, checkpoint formats, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

import semiseg
import semiseg.models.encoder as encoder_module
from semiseg.errors import SemisegError
from semiseg.models.checkpoints import (
    export_model,
    from_official_state_dict,
    load_model,
    to_official_state_dict,
)
from semiseg.models.encoder import Encoder, resample_pos_embed_official
from semiseg.models.segmentor import Segmentor, build_model, complementary_masks
from semiseg.task import get_task


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(model: torch.nn.Module) -> None:
    """Move every weight off its init (layer-scale 1e-5 would hide mistakes in the blocks)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("fusion,n_images", [("identity", 1), ("absdiff", 2)])
def test_logits_have_input_resolution_for_both_fusions(fusion, n_images):
    model = Segmentor("tiny", 5, fusion).eval()
    images = [torch.randn(2, 3, 42, 56) for _ in range(n_images)]
    assert model(*images).shape == (2, 5, 42, 56)


def test_absdiff_fusion_is_symmetric_and_zero_change_for_identical_dates():
    model = Segmentor("tiny", 2, "absdiff").eval()
    _randomise(model)
    a, b = torch.randn(1, 3, 28, 28), torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(model(a, b), model(b, a))
    feats = model.features(a, a)
    assert all(f.abs().max() < 1e-5 for f in feats)  # batched kernels may differ in the last bits


def test_encoder_returns_four_final_normed_taps_without_cls():
    enc = Encoder("tiny").eval()
    _randomise(enc)
    x = torch.randn(1, 3, 56, 42)
    taps = enc(x)
    assert len(taps) == 4 and all(t.shape == (1, 48, 4, 3) for t in taps)
    # Recompute by hand: tokens through the blocks, each tapped output through the final LayerNorm, CLS dropped.
    vit = enc.vit
    tokens = vit._pos_embed(vit.patch_embed(x))
    expected = []
    for i, blk in enumerate(vit.blocks):
        tokens = blk(tokens)
        if i in enc.spec.taps:
            expected.append(vit.norm(tokens)[:, 1:].reshape(1, 4, 3, 48).permute(0, 3, 1, 2))
    for got, want in zip(taps, expected):
        torch.testing.assert_close(got, want)


def test_tapped_layers_follow_the_official_indices():
    from semiseg.models.specs import ENCODER_SPECS

    assert ENCODER_SPECS["small"].taps == ENCODER_SPECS["base"].taps == (2, 5, 8, 11)
    assert ENCODER_SPECS["large"].taps == (4, 11, 17, 23)
    assert ENCODER_SPECS["giant"].taps == (9, 19, 29, 39)


def test_position_embeddings_resample_like_official_dinov2_not_like_timm():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert resample_pos_embed_official(pos, 37, 37) is pos
    out = resample_pos_embed_official(pos, 18, 25)
    assert out.shape == (1, 1 + 18 * 25, 8)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    # The official call: bicubic driven by scale factor (grid + 0.1) / 37, no antialias.
    ref = F.interpolate(grid, scale_factor=(18.1 / 37, 25.1 / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 8))
    from timm.layers import resample_abs_pos_embed

    timm_way = resample_abs_pos_embed(pos, new_size=(18, 25), old_size=(37, 37), num_prefix_tokens=1)
    assert (timm_way - out).abs().max() > 1e-3  # the two really differ: the reason for our override


def _capture_head_inputs(model: Segmentor):
    seen = []
    handle = model.head.register_forward_pre_hook(lambda mod, args: seen.append([f.clone() for f in args[0]]))
    return seen, handle


def test_complementary_dropout_masks_are_exact_complements_with_half_the_pairs_untouched():
    masks = complementary_masks(16, 32, torch.device("cpu"))[:, :, 0, 0]
    m1, m2 = masks[:8], masks[8:]
    torch.testing.assert_close(m1 + m2, torch.full_like(m1, 2.0))
    assert set(masks.unique().tolist()) <= {0.0, 1.0, 2.0}
    untouched = (m1 == 1).all(1)
    assert int(untouched.sum()) == 4  # int(B * 0.5) of the B = 8 pairs
    assert ((m1[~untouched] == 0) | (m1[~untouched] == 2)).all()


def test_complementary_dropout_applies_one_mask_to_all_layers_and_positions_only_when_asked():
    model = Segmentor("tiny", 3).eval()
    _randomise(model)
    x = torch.randn(8, 3, 28, 28) + 3.0  # positive shift keeps features away from exact zeros
    seen, handle = _capture_head_inputs(model)
    model(x)
    model(x, comp_drop=True)
    handle.remove()
    plain, dropped = seen
    ratios = [d / p for d, p in zip(dropped, plain)]
    mask = ratios[0][:, :, :1, :1]
    for r in ratios:
        torch.testing.assert_close(r, mask.expand_as(r), rtol=1e-4, atol=1e-4)
    m = mask[:, :, 0, 0]
    torch.testing.assert_close(m[:4] + m[4:], torch.full_like(m[:4], 2.0), rtol=1e-4, atol=1e-4)
    # without the flag the head sees the encoder's features untouched
    torch.testing.assert_close(plain[0], model.encoder(x)[0])


def _official_checkpoint(model: Segmentor) -> dict:
    """Our weights in the official UniMatch V2 layout, as its training script saves them (DDP prefix, mask token,
    the unused deepest-fusion residual unit)."""
    state = {f"module.{k}": v for k, v in to_official_state_dict(model).items()}
    state["module.backbone.mask_token"] = torch.zeros(1, model.encoder.embed_dim)
    f = model.head.fusion[0].skip_unit
    for name, p in f.named_parameters():
        state[f"module.head.scratch.refinenet4.resConfUnit1.{name}"] = torch.randn_like(p)
    return state


@pytest.mark.parametrize("task,n_images,nclass", [("segmentation", 1, 21), ("change_detection", 2, 2)])
def test_official_checkpoint_loads_and_reproduces_our_outputs(tmp_path, task, n_images, nclass):
    model = build_model("tiny", nclass, get_task(task).fusion).eval()
    _randomise(model)
    ema = build_model("tiny", nclass, get_task(task).fusion).eval()
    _randomise(ema)
    path = tmp_path / "best.pth"
    torch.save(
        {"model": _official_checkpoint(model), "model_ema": _official_checkpoint(ema), "epoch": 3}, path
    )
    images = [torch.randn(1, 3, 42, 42) for _ in range(n_images)]
    loaded = load_model(path, which="model")
    assert loaded.nclass == nclass and loaded.encoder_size == "tiny" and loaded.meta["task"] == task
    torch.testing.assert_close(loaded(*images), model(*images), rtol=0, atol=1e-6)
    torch.testing.assert_close(load_model(path)(*images), ema(*images), rtol=0, atol=1e-6)  # EMA by default


def test_bare_official_state_dict_without_prefix_loads(tmp_path):
    model = build_model("tiny", 4).eval()
    _randomise(model)
    state = {k.removeprefix("module."): v for k, v in _official_checkpoint(model).items()}
    torch.save(state, tmp_path / "weights.pth")
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(semiseg.load_model(tmp_path / "weights.pth")(x), model(x), rtol=0, atol=1e-6)


def test_official_key_names_round_trip_including_swiglu():
    state = {
        "module.backbone.blocks.3.mlp.w12.weight": torch.zeros(1),
        "module.backbone.blocks.3.mlp.w3.bias": torch.zeros(1),
        "module.backbone.mask_token": torch.zeros(1),
        "module.head.scratch.refinenet2.resConfUnit1.conv1.weight": torch.zeros(1),
        "module.head.scratch.layer4_rn.weight": torch.zeros(1),
        "module.head.scratch.output_conv.2.bias": torch.zeros(1),
    }
    ours = from_official_state_dict(state)
    assert set(ours) == {
        "encoder.vit.blocks.3.mlp.fc1.weight",
        "encoder.vit.blocks.3.mlp.fc2.bias",
        "head.fusion.1.skip_unit.conv1.weight",
        "head.reduce.3.weight",
        "head.output.2.bias",
    }


def test_encoder_loads_an_official_dinov2_pretrain_file(tmp_path):
    source = Encoder("tiny")
    _randomise(source)
    state = dict(source.vit.state_dict())
    state["mask_token"] = torch.zeros(1, 48)  # present in dinov2_vit*14_pretrain.pth
    torch.save(state, tmp_path / "dinov2_vitt14_pretrain.pth")
    model = build_model("tiny", 3, weights=str(tmp_path / "dinov2_vitt14_pretrain.pth"))
    for k, v in source.vit.state_dict().items():
        torch.testing.assert_close(model.encoder.vit.state_dict()[k], v)


def test_safetensors_export_round_trips_weights_and_metadata(tmp_path):
    model = build_model("tiny", 2, "absdiff").eval()
    _randomise(model)
    path = export_model(model, tmp_path / "levir_tiny", {"classes": ["unchanged", "changed"]})
    assert path.suffix == ".safetensors" and path.with_suffix(".yaml").is_file()
    assert not list(tmp_path.glob(".*tmp"))
    loaded = load_model(path)
    a, b = torch.randn(1, 3, 28, 28), torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(loaded(a, b), model(a, b), rtol=0, atol=0)
    assert loaded.meta["task"] == "change_detection" and loaded.meta["classes"] == ["unchanged", "changed"]


@pytest.mark.parametrize("size,total,encoder", [("small", 24.8e6, 22.1e6), ("base", 97.5e6, 86.6e6)])
def test_parameter_counts_match_the_official_model_within_one_percent(size, total, encoder):
    model = Segmentor(size, 21)
    n_total = sum(p.numel() for p in model.parameters())
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    assert abs(n_total - total) / total < 0.01
    assert abs(n_encoder - encoder) / encoder < 0.01


def test_unknown_encoder_size_is_a_user_error():
    with pytest.raises(SemisegError, match="unknown encoder 'huge'"):
        Segmentor("huge", 3)


def test_input_sides_not_multiple_of_14_are_rejected():
    with pytest.raises(SemisegError, match="multiples of 14"):
        Segmentor("tiny", 3)(torch.randn(1, 3, 30, 28))


def test_wrong_number_of_images_is_rejected():
    with pytest.raises(SemisegError, match="takes 2 image"):
        Segmentor("tiny", 2, "absdiff")(torch.randn(1, 3, 28, 28))


def test_checkpoint_with_missing_or_unexpected_keys_names_them(tmp_path):
    state = build_model("tiny", 3).state_dict()
    del state["head.output.0.weight"]
    state["head.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(
        SemisegError, match=r"1 missing keys \(e.g. head.output.0.weight\).*1 unexpected keys"
    ):
        load_model(tmp_path / "broken.pt")


def test_files_that_are_not_checkpoints_are_user_errors(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SemisegError, match="not a readable checkpoint"):
        load_model(tmp_path / "notes.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SemisegError, match="not a checkpoint"):
        load_model(tmp_path / "list.pt")
    with pytest.raises(SemisegError, match="not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SemisegError, match="no model weights"):
        load_model(tmp_path / "other.pt")


def test_task_recorded_in_a_checkpoint_is_enforced(tmp_path):
    model = build_model("tiny", 2, "absdiff")
    path = export_model(model, tmp_path / "cd")
    with pytest.raises(SemisegError, match="is a change_detection checkpoint"):
        load_model(path, task="segmentation")


def test_hub_weights_load_through_the_timm_layout(monkeypatch):
    """The `weights: hub` path with the download replaced by a local random model of the hub's architecture."""
    import timm

    real_create = timm.create_model
    created = {}

    def offline_create(name, pretrained=False, **kwargs):
        created["name"], created["pretrained"] = name, pretrained
        model = real_create(name, pretrained=False, **kwargs)
        _randomise(model)
        created["state"] = model.state_dict()
        return model

    monkeypatch.setattr(timm, "create_model", offline_create)
    monkeypatch.setattr(encoder_module, "_hub_reachable", lambda: True)  # as if online (no network in tests)
    encoder = Encoder("small")
    encoder.load_pretrained("hub")
    assert created["name"] == "vit_small_patch14_dinov2.lvd142m" and created["pretrained"] is True
    for k, v in created["state"].items():
        torch.testing.assert_close(encoder.vit.state_dict()[k], v)
    with pytest.raises(SemisegError, match="no pretrained weights on the hub"):
        Encoder("tiny").load_pretrained("hub")


def test_hub_download_failure_is_a_user_error(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(encoder_module, "_hub_reachable", lambda: True)
    with pytest.raises(SemisegError, match="could not fetch 'vit_small_patch14_dinov2.lvd142m'"):
        Encoder("small").load_pretrained("hub")


def test_hub_weights_offline_fail_at_once_naming_the_file(monkeypatch, tmp_path):
    import time

    import timm

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(encoder_module, "_hub_reachable", lambda: False)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("must not try the network"))
    start = time.perf_counter()
    with pytest.raises(
        SemisegError, match=r"not cached and the hub cannot be reached .*dinov2_vits14_pretrain.pth"
    ):
        Encoder("small").load_pretrained("hub")
    assert time.perf_counter() - start < 5


def test_exports_are_whole_readable_and_say_where_they_come_from(tmp_path):
    model = build_model("tiny", 2, "absdiff").eval()
    path = export_model(model, tmp_path / "cd", {"classes": ["unchanged", "changed"]})
    for f in (path, path.with_suffix(".yaml")):
        assert f.stat().st_mode & 0o044 == 0o044  # group and others may read a release
    card = yaml.safe_load(path.with_suffix(".yaml").read_text())
    assert (
        card["format_version"] >= 2
        and card["toolkit_version"] == semiseg.__version__
        and card["torch_version"]
    )
    assert (
        card["bands"] == 3
        and card["classes"] == ["unchanged", "changed"]
        and card["task"] == "change_detection"
    )
    path.with_suffix(".yaml").unlink()  # the header carries the same card: the weights load on their own
    loaded = load_model(path)
    assert loaded.meta["task"] == "change_detection" and loaded.meta["classes"] == ["unchanged", "changed"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"std": [0.2, 0.0, 0.2]}, "std of 0.0"),
        ({"mean": [0.5, 0.5]}, "2 means and 3 stds, but its encoder takes 3 bands"),
        ({"task": "change_detection"}, "predicts 3 classes, but change detection models predict 2"),
    ],
)
def test_inconsistent_checkpoints_are_one_line_errors(tmp_path, change, message):
    path = export_model(build_model("tiny", 3), tmp_path / "m")
    card = yaml.safe_load(path.with_suffix(".yaml").read_text())
    path.with_suffix(".yaml").write_text(yaml.safe_dump({**card, **change}))
    with pytest.raises(SemisegError, match=message):
        load_model(path)


def test_an_empty_checkpoint_file_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(
        SemisegError, match=r"empty.pt is not a readable checkpoint: the file is empty \(0 bytes\)$"
    ):
        load_model(tmp_path / "empty.pt")
