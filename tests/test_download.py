"""semicd download: a fake official archive, from a local file or an offline Hugging Face cache, verified and
unpacked atomically against (fake, tiny) shipped lists."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import yaml
from fakes import fill_hub_cache
from PIL import Image

from semicd.cli import main as semicd_main
from semicd.data import download
from semiseg.data.lists import read_name_list

LISTS = {"train": ["train_1_1.png", "train_1_2.png"], "val": ["val_1_1.png"], "test": ["test_1_1.png"]}


@pytest.fixture
def fake_lists(tmp_path, monkeypatch):
    """Tiny official lists for levir_cd in place of the shipped ones."""
    folder = tmp_path / "datasets" / "levir_cd"
    folder.mkdir(parents=True)
    for s, names in LISTS.items():
        (folder / f"{s}.txt").write_text("".join(f"{n}\n" for n in names))
    monkeypatch.setattr(download, "LISTS_DIR", tmp_path / "datasets")
    return folder


def fake_archive(path, drop=None, top="LEVIR-CD"):
    """A zip laid out like the official one: <top>/A, B, label/<name>.png (optionally one file left out)."""
    with zipfile.ZipFile(path, "w") as z:
        for names in LISTS.values():
            for name in names:
                for folder in ("A", "B", "label"):
                    if f"{folder}/{name}" == drop:
                        continue
                    png = io.BytesIO()
                    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(png, format="PNG")
                    z.writestr(f"{top}/{folder}/{name}" if top else f"{folder}/{name}", png.getvalue())
    return path


def test_a_local_archive_is_verified_unpacked_and_its_checksum_recorded(fake_lists, tmp_path, capsys):
    archive = fake_archive(tmp_path / "LEVIR-CD.zip")
    out = tmp_path / "data"
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(archive)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "downloaded, verified" and (
        summary["train"],
        summary["val"],
        summary["test"],
    ) == (2, 1, 1)
    root = out / "LEVIR-CD"
    assert sorted(p.name for p in (root / "label").iterdir()) == sorted(n for v in LISTS.values() for n in v)
    assert read_name_list(root / "test.txt") == LISTS["test"]
    assert yaml.safe_load((out / "checksums.yaml").read_text()) == {"LEVIR-CD.zip": summary["sha256"]}
    assert sorted(p.name for p in out.iterdir()) == ["LEVIR-CD", "checksums.yaml", "download-levir-cd.yaml"]
    # A second run keeps the verified folder; a different archive under the same name is refused.
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(archive)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "already there, verified"
    root.rename(tmp_path / "moved")
    (tmp_path / "other").mkdir()
    other = fake_archive(
        tmp_path / "other" / "LEVIR-CD.zip", top=None
    )  # same tiles, another zip: another checksum
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(other)]) == 2
    assert (
        "differs from the LEVIR-CD.zip first downloaded here" in capsys.readouterr().err and not root.exists()
    )


def test_an_archive_missing_a_listed_tile_leaves_nothing_behind(fake_lists, tmp_path, capsys):
    archive = fake_archive(tmp_path / "LEVIR-CD.zip", drop="B/val_1_1.png")
    out = tmp_path / "data"
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(archive)]) == 2
    err = capsys.readouterr().err
    assert (
        "lacks 1 tiles of the official lists (e.g. B/val_1_1.png)" in err
        and len(err.strip().splitlines()) == 1
    )
    assert (
        list(out.iterdir()) == []
    )  # no folder, no temporaries, no checksum of an archive that did not verify
    # The damaged archive recorded nothing: the good one downloaded next is accepted (and recorded).
    (tmp_path / "good").mkdir()
    good = fake_archive(tmp_path / "good" / "LEVIR-CD.zip")
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(good)]) == 0
    sha256 = json.loads(capsys.readouterr().out)["sha256"]
    assert yaml.safe_load((out / "checksums.yaml").read_text()) == {"LEVIR-CD.zip": sha256}


def test_a_download_that_loses_the_race_to_another_is_one_line(fake_lists, tmp_path, monkeypatch, capsys):
    """Two downloads into the same --out: the one whose rename comes second keeps the other's folder when it
    verifies, else stops in one line (never an OSError traceback)."""
    archive = fake_archive(tmp_path / "LEVIR-CD.zip")
    out = tmp_path / "data"
    record = download._record_sum

    def the_other_finishes_first(*args):
        record(*args)
        monkeypatch.setattr(download, "_record_sum", record)
        download.download_dataset("levir-cd", out, archive)  # the other download, all the way

    monkeypatch.setattr(download, "_record_sum", the_other_finishes_first)
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(archive)]) == 0
    assert json.loads(capsys.readouterr().out)["status"].endswith("(another download finished first)")
    assert sorted(p.name for p in out.iterdir()) == ["LEVIR-CD", "checksums.yaml", "download-levir-cd.yaml"]

    def a_stranger_is_there(*args):
        record(*args)
        (out / "LEVIR-CD").mkdir()
        (out / "LEVIR-CD" / "notes.txt").write_text("not tiles")

    (out / "download-levir-cd.yaml").unlink()
    (tmp_path / "moved").mkdir()
    (out / "LEVIR-CD").rename(tmp_path / "moved" / "LEVIR-CD")
    monkeypatch.setattr(download, "_record_sum", a_stranger_is_there)
    assert semicd_main(["download", "levir-cd", "--out", str(out), "--archive", str(archive)]) == 2
    err = capsys.readouterr().err
    assert "cannot move the unpacked tiles to" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and sorted(p.name for p in out.iterdir()) == ["LEVIR-CD", "checksums.yaml"]


def test_the_archive_comes_from_an_offline_hugging_face_cache(fake_lists, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "data"
    assert (
        semicd_main(["download", "levir-cd", "--out", str(out)]) == 2
    )  # not cached, offline: one line, the URL
    err = capsys.readouterr().err
    assert (
        "https://huggingface.co/LiheYoung/UniMatch-V2/resolve/main/LEVIR-CD.zip" in err
        and len(err.splitlines()) == 1
    )
    fill_hub_cache(
        cache, "LiheYoung/UniMatch-V2", {"LEVIR-CD.zip": fake_archive(tmp_path / "z.zip").read_bytes()}
    )
    assert semicd_main(["download", "levir-cd", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["archive"].startswith(str(cache)) and (out / "LEVIR-CD" / "A" / "train_1_2.png").is_file()
