"""hf://OWNER/REPO/PATH[@REV] names: resolved from the Hugging Face cache offline; offline and missing fails fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fakes import change_pair, fill_hub_cache, tiny_checkpoint, write_geotiff

from semicd.cli import main as semicd_main
from semiseg.errors import SemisegError
from semiseg.hub import HubFile, parse_hub_path, resolve_path
from semiseg.models.checkpoints import load_model
from semiseg.models.segmentor import build_model


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with the hub client set offline (no network is ever tried)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_names_parse_with_and_without_revision():
    assert parse_hub_path("hf://LiheYoung/UniMatch-V2/ckpt/levir.pth") == HubFile(
        "LiheYoung/UniMatch-V2", "ckpt/levir.pth"
    )
    assert parse_hub_path("hf://me/repo/m.safetensors@v1.0") == HubFile("me/repo", "m.safetensors", "v1.0")
    assert str(parse_hub_path("hf://me/repo/a/b.pt@abc")) == "hf://me/repo/a/b.pt@abc"
    assert parse_hub_path("hf://me/repo/b.pt").url == "https://huggingface.co/me/repo/resolve/main/b.pt"
    for bad in ("hf://me/repo", "hf://me//b.pt", "hf://me/repo/b.pt@"):
        with pytest.raises(SemisegError, match="OWNER/REPO/PATH"):
            parse_hub_path(bad)
    assert str(resolve_path("local/file.pt")) == "local/file.pt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf://o/r@v1/f.pt", HubFile("o/r", "f.pt", "v1")),  # huggingface_hub's own form
        ("hf://o/r@v1/a/b.pt", HubFile("o/r", "a/b.pt", "v1")),
        ("hf://o/r/f.pt@refs/pr/1", HubFile("o/r", "f.pt", "refs/pr/1")),
        ("hf://o/r@refs/pr/12/a/f.pt", HubFile("o/r", "a/f.pt", "refs/pr/12")),
        ("hf://o/r/model@2x.pt", HubFile("o/r", "model@2x.pt")),  # a file name with @, no revision
        ("hf://o/r/model@2x.pt@v1.0", HubFile("o/r", "model@2x.pt", "v1.0")),
        ("hf://o/r@main/model@2x", HubFile("o/r", "model@2x", "main")),
    ],
)
def test_hub_names_take_the_revision_after_repo_or_path(name, expected):
    assert parse_hub_path(name) == expected
    assert parse_hub_path(str(expected)) == expected  # the name we print reads back the same


@pytest.mark.parametrize(
    "bad", ["hf://o@x/r/f.pt", "hf://o/r@/f.pt", "hf://o/r@v1", "hf://o/r@v1/", "hf://o/r/a//f.pt"]
)
def test_malformed_hub_names_are_refused_in_one_line(bad):
    with pytest.raises(SemisegError, match="hf://OWNER/REPO@REVISION/PATH"):
        parse_hub_path(bad)


def test_a_name_the_hub_refuses_is_one_line_not_a_validation_traceback(offline_cache, capsys):
    code = semicd_main(["export", "--checkpoint", "hf://me/bad--name/x.pt", "--out", "never"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a valid hub name" in err and len(err.strip().splitlines()) == 1


def test_a_pull_request_revision_and_a_file_name_with_at_resolve_offline(offline_cache):
    fill_hub_cache(offline_cache, "me/m", {"w/model@2x.pt": b"weights"}, revision="refs/pr/1")
    for name in ("hf://me/m@refs/pr/1/w/model@2x.pt", "hf://me/m/w/model@2x.pt@refs/pr/1"):
        assert resolve_path(name).read_bytes() == b"weights"


def test_a_checkpoint_named_hf_loads_from_an_offline_cache_and_predicts(offline_cache, tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "cd")
    fill_hub_cache(offline_cache, "me/change-model", {"release/cd.safetensors": checkpoint.read_bytes()})
    model = load_model("hf://me/change-model/release/cd.safetensors")
    local = load_model(checkpoint)
    assert model.meta["source_sha256"] == local.meta["source_sha256"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
    before, after = change_pair(np.random.default_rng(0))
    write_geotiff(tmp_path / "a.tif", before)
    write_geotiff(tmp_path / "b.tif", after)
    code = semicd_main(["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"),
                        "--checkpoint", "hf://me/change-model/release/cd.safetensors", "--out", str(tmp_path / "c.tif"),
                        "--window", "28", "--workers", "0"])  # fmt: skip
    assert code == 0 and (tmp_path / "c.tif").is_file()


def test_encoder_weights_named_hf_load_from_an_offline_cache_at_a_revision(offline_cache, tmp_path):
    torch.manual_seed(1)
    source = build_model("tiny", 2)
    torch.save(source.encoder.vit.state_dict(), tmp_path / "enc.pth")
    fill_hub_cache(
        offline_cache, "me/encoders", {"tiny.pth": (tmp_path / "enc.pth").read_bytes()}, revision="v2"
    )
    model = build_model("tiny", 2, weights="hf://me/encoders/tiny.pth@v2")
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.vit.state_dict().values(),
                                                 source.encoder.vit.state_dict().values()))  # fmt: skip


def test_offline_and_not_cached_fails_at_once_naming_the_url(offline_cache, capsys):
    start = time.perf_counter()
    with pytest.raises(SemisegError, match=r"https://huggingface.co/me/none/resolve/main/x\.pt") as err:
        load_model("hf://me/none/x.pt")
    assert time.perf_counter() - start < 2 and "give the local path" in str(err.value)
    code = semicd_main(["export", "--checkpoint", "hf://me/none/x.pt", "--out", "never"])
    assert code == 2 and "not in the Hugging Face cache" in capsys.readouterr().err
