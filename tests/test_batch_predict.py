"""Batch prediction from a CSV: one model load, failures isolated, resumable, one summary table."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import rasterio
from fakes import change_pair, tiny_checkpoint, write_geotiff

from semicd.cli import main as semicd_main
from semiseg.batch import Job, read_jobs
from semiseg.errors import SemisegError
from semiseg.segmentation.cli import main as semiseg_main

COMMON = ["--window", "28", "--workers", "0"]


def batch_args(tmp, out):
    """`semicd predict` of tmp/pairs.csv into `out` with a tiny checkpoint made in tmp/cd."""
    checkpoint = tiny_checkpoint(tmp / "cd")
    return [
        "predict",
        "--pairs",
        str(tmp / "pairs.csv"),
        "--out-dir",
        str(out),
        "--checkpoint",
        str(checkpoint),
    ]


@pytest.fixture
def three_pairs(tmp_path):
    """pairs.csv: two good pairs (p1, p3) and a corrupt before image (p2), with relative paths."""
    rng = np.random.default_rng(0)
    for i in (1, 3):
        before, after = change_pair(rng)
        write_geotiff(tmp_path / f"a{i}.tif", before, x0=500000 + 100 * i)
        write_geotiff(tmp_path / f"b{i}.tif", after, x0=500000 + 100 * i)
    (tmp_path / "a2.tif").write_bytes(b"II*\x00 this is not a GeoTIFF")
    write_geotiff(tmp_path / "b2.tif", change_pair(rng)[1])
    (tmp_path / "pairs.csv").write_text(
        "before,after,name\n" + "".join(f"a{i}.tif,b{i}.tif,p{i}\n" for i in (1, 2, 3))
    )
    return tmp_path


def test_a_corrupt_pair_is_reported_while_the_others_are_predicted(three_pairs, capsys):
    tmp = three_pairs
    out = tmp / "out"
    args = batch_args(tmp, out)
    assert semicd_main([*args, *COMMON]) == 1
    captured = capsys.readouterr()
    assert (
        "p2 failed:" in captured.err
        and "1 of 3 scenes failed" in captured.err
        and "Traceback" not in captured.err
    )
    result = json.loads(captured.out)
    assert (result["done"], result["failed"], result["skipped"]) == (2, 1, 0) and list(
        result["failures"]
    ) == ["p2"]
    assert sorted(p.name for p in out.glob("p*.tif")) == ["p1.tif", "p3.tif"] and not list(out.glob(".*tmp*"))
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [("p1", "done"), ("p2", "failed"), ("p3", "done")]
    assert "a2.tif" in rows[1]["error"] and rows[1]["out"] == ""
    for row in (
        rows[0],
        rows[2],
    ):  # the table's changed area is the map's non-zero pixels times the pixel area
        with rasterio.open(out / f"{row['name']}.tif") as ds:
            classes = ds.read(1)
        changed = int(((classes != 0) & (classes != 255)).sum())
        assert int(row["changed_pixels"]) == changed and float(row["changed_area_m2"]) == pytest.approx(
            changed * 0.25
        )
        assert (out / f"{row['name']}.gpkg").is_file() and (out / f"{row['name']}.json").is_file()
    features = json.loads((out / "summary.geojson").read_text())["features"]
    assert [f["geometry"] is None for f in features] == [False, True, False]
    lon, lat = np.array(features[0]["geometry"]["coordinates"][0]).T
    assert (
        -76 < lon.min() < lon.max() < -74 and 36 < lat.min() < lat.max() < 37
    )  # UTM 18N near x 500 km, y 4000 km
    assert (out / "predict.yaml").is_file()

    # Resumable: a second run predicts only what is missing; the finished maps are not touched.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("p*.tif")}
    (tmp / "a2.tif").unlink()  # the bad file is replaced by a good one
    write_geotiff(tmp / "a2.tif", change_pair(np.random.default_rng(5))[0])
    assert semicd_main([*args, *COMMON]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["done"], result["skipped"], result["failed"]) == (1, 2, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("p[13].tif")} == stamps


def test_a_batch_writes_the_same_bytes_as_single_pair_predict(three_pairs, capsys):
    tmp = three_pairs
    checkpoint = tiny_checkpoint(tmp / "cd")
    (tmp / "pairs.csv").write_text("before,after\na1.tif,b1.tif\n")  # no name column: the before file's stem
    common = ["--checkpoint", str(checkpoint), *COMMON]
    assert (
        semicd_main(["predict", "--pairs", str(tmp / "pairs.csv"), "--out-dir", str(tmp / "out"), *common])
        == 0
    )
    assert semicd_main(["predict", "--before", str(tmp / "a1.tif"), "--after", str(tmp / "b1.tif"),
                        "--out", str(tmp / "one.tif"), "--polygons", str(tmp / "one.gpkg"), *common]) == 0  # fmt: skip
    assert (tmp / "out" / "a1.tif").read_bytes() == (tmp / "one.tif").read_bytes()


def test_segmentation_predicts_a_csv_of_images(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(2):
        write_geotiff(tmp_path / f"s{i}.tif", rng.integers(0, 255, (3, 30, 34), dtype=np.uint8))
    (tmp_path / "scenes.csv").write_text("image\ns0.tif\ns1.tif\n")
    checkpoint = tiny_checkpoint(tmp_path / "seg", task="segmentation")
    code = semiseg_main(["predict", "--images", str(tmp_path / "scenes.csv"), "--out-dir", str(tmp_path / "maps"),
                         "--checkpoint", str(checkpoint), "--polygon-format", "none", "--with-probs", *COMMON])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "maps" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["done", "done"] and rows[0]["changed_pixels"] == ""
    areas = json.loads(rows[0]["area_m2_per_class"])
    assert sum(areas.values()) == pytest.approx(30 * 34 * 0.25)
    assert (tmp_path / "maps" / "s1.probs.tif").is_file() and not list((tmp_path / "maps").glob("*.gpkg"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("before,name\nx.tif,x\n", "missing: after"),
        ("before,after\n", "it has no rows"),
        ("before,after,name\na.tif,b.tif,x\nc.tif,d.tif,x\n", "'x' is also on line 2"),
        ("before,after,name\na.tif,b.tif,Scene\nc.tif,d.tif,scene\n", "'scene' is also on line 2"),
        (
            "before,after,name\na.tif,b.tif,x\nc.tif,d.tif,x.probs\n",
            "'x.probs' would overwrite another output",
        ),
        ("before,after\nsummary.tif,d.tif\n", "'summary' would overwrite another output"),
        ("before,after,name\na.tif,b.tif,Summary\n", "'Summary' would overwrite another output"),
        ("before,after,name\na.tif,b.tif,../x\n", "must be a plain file name"),
        ("before,after\na.tif,\n", "line 2: every scene needs before, after"),
    ],
)
def test_bad_csvs_are_refused_in_one_line(tmp_path, text, message, capsys):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(SemisegError, match=message):
        read_jobs(tmp_path / "pairs.csv", ("before", "after"))
    code = semicd_main(["predict", "--pairs", str(tmp_path / "pairs.csv"), "--out-dir", str(tmp_path / "o"),
                        "--checkpoint", "missing.pt"])  # fmt: skip
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_csv_paths_are_read_from_the_csv_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pairs.csv").write_text(f"before,after\nx/a.tif,{tmp_path}/b.tif\n")
    assert read_jobs(tmp_path / "sub" / "pairs.csv", ("before", "after")) == [
        Job("a", (str(tmp_path / "sub" / "x" / "a.tif"), str(tmp_path / "b.tif")))
    ]


def test_one_scene_and_a_batch_do_not_mix(tmp_path, capsys):
    assert (
        semicd_main(
            ["predict", "--pairs", "p.csv", "--out-dir", "o", "--out", "x.tif", "--checkpoint", "c.pt"]
        )
        == 2
    )
    assert "drop --out" in capsys.readouterr().err
    assert semicd_main(["predict", "--before", "a.tif", "--checkpoint", "c.pt"]) == 2
    assert "give --after, --out (one scene), or --pairs CSV --out-dir DIR (many)" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_outputs_of_another_checkpoint_are_never_overwritten(three_pairs, capsys):
    tmp = three_pairs
    (tmp / "pairs.csv").write_text("before,after,name\na1.tif,b1.tif,p1\n")
    out = tmp / "out"
    for seed, expected in ((0, 0), (1, 1)):
        checkpoint = tiny_checkpoint(tmp / f"cd{seed}", seed=seed)
        code = semicd_main(["predict", "--pairs", str(tmp / "pairs.csv"), "--out-dir", str(out),
                            "--checkpoint", str(checkpoint), *COMMON])  # fmt: skip
        assert code == expected
        if seed == 0:
            first = (out / "p1.tif").read_bytes()
    assert "p1.json was made with another checkpoint" in capsys.readouterr().err
    assert (out / "p1.tif").read_bytes() == first


def test_a_resume_refuses_outputs_made_from_other_inputs_or_options(three_pairs, capsys):
    tmp = three_pairs
    (tmp / "pairs.csv").write_text("before,after,name\na1.tif,b1.tif,p1\na3.tif,b3.tif,p3\n")
    out = tmp / "out"
    args = batch_args(tmp, out)
    assert semicd_main([*args, *COMMON]) == 0
    first = {p.name: p.read_bytes() for p in out.glob("p[13].*")}
    record = json.loads((out / "p1.json").read_text())
    assert (
        record["inputs"][0]["path"] == str((tmp / "a1.tif").resolve()) and record["options"]["window"] == 28
    )
    capsys.readouterr()

    # The same inputs and options: skipped.
    assert semicd_main([*args, *COMMON]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2

    # Another option that shapes the maps: every scene is a failure, nothing is overwritten.
    assert semicd_main([*args, *COMMON, "--threshold", "0.9"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["failed"], result["skipped"], result["done"]) == (2, 0, 0)
    assert "made with other options (threshold None now 0.9)" in result["failures"]["p1"]

    # A changed input (same path, new content): that scene fails, the other is skipped.
    write_geotiff(tmp / "a1.tif", change_pair(np.random.default_rng(9))[0])
    assert semicd_main([*args, *COMMON]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["failed"], result["skipped"]) == (1, 1)
    assert "p1.json was made from other inputs (a1.tif" in result["failures"]["p1"]
    assert {p.name: p.read_bytes() for p in out.glob("p[13].*")} == first


def test_records_written_with_amp_resume_as_the_same_precision(three_pairs, capsys):
    tmp = three_pairs
    (tmp / "pairs.csv").write_text("before,after,name\na1.tif,b1.tif,p1\n")
    out = tmp / "out"
    args = batch_args(tmp, out)
    assert semicd_main([*args, *COMMON, "--precision", "fp32"]) == 0
    path = out / "p1.json"
    record = json.loads(path.read_text())
    assert record["options"]["precision"] == "fp32" and "amp" not in record["options"]
    capsys.readouterr()

    # A record from before --precision said amp: none, which is fp32; `--amp none` is the same run too.
    options = {k: v for k, v in record["options"].items() if k != "precision"}
    path.write_text(json.dumps({**record, "options": {**options, "amp": "none"}}))
    assert semicd_main([*args, *COMMON]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert semicd_main([*args, *COMMON, "--amp", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1

    # One made in bf16 is another run, said in today's name.
    path.write_text(json.dumps({**record, "options": {**options, "amp": "bf16"}}))
    assert semicd_main([*args, *COMMON]) == 1
    result = json.loads(capsys.readouterr().out)
    assert "made with other options (precision 'bf16' now 'fp32')" in result["failures"]["p1"]


def test_a_batch_starts_no_reader_processes_unless_asked_and_names_geojson_layers(
    three_pairs, monkeypatch, capsys
):
    import semiseg.api

    (three_pairs / "pairs.csv").write_text("before,after\na1.tif,b1.tif\n")
    seen, predict = [], semiseg.api.predict

    def spy(*args, **kwargs):
        seen.append(kwargs["num_workers"])
        return predict(*args, **kwargs)

    monkeypatch.setattr(semiseg.api, "predict", spy)
    args = batch_args(three_pairs, three_pairs / "out")
    assert semicd_main([*args, "--window", "28", "--polygon-format", "geojson"]) == 0
    # the GeoJSON's layer is the scene's name, not the temporary file's it was written under
    assert json.loads((three_pairs / "out" / "a1.geojson").read_text())["name"] == "a1"
    assert (
        semicd_main([*batch_args(three_pairs, three_pairs / "out2"), "--window", "28", "--workers", "1"]) == 0
    )
    assert seen == [0, 1]
