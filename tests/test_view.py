"""`view`: the web map folder, rendered in headless Chromium and checked on the screenshot's pixels.

The browser tests skip when no Chromium is installed, except under CI=true, where a missing browser fails (CI
installs the Debian `chromium` package: see .ci/run). Scenes are tiny so each page renders in about a second.
"""

import functools
import json
import os
import re
import shutil
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

import semiseg.view as view_module
from semicd.cli import main as semicd_main
from semiseg.geo import open_pair
from semiseg.geo import predict_raster as geo_predict_raster
from semiseg.geo.tiles import TILE, make_pyramid
from semiseg.segmentation.cli import main as semiseg_main
from semiseg.view import INDEX, RECORD, build_view

predict_raster = functools.partial(
    geo_predict_raster, patch_size=14, num_workers=0, progress=False, window=56
)

H, W = 96, 128
CHANGE = (slice(30, 60), slice(40, 80))  # rows, cols of the new "building"
NODATA_COLS = slice(112, 128)  # a collar without data in both dates
BEFORE, AFTER, ROOF = (30, 60, 200), (30, 60, 120), (230, 230, 230)
PIXEL = 1.0


def write_rgb(path, colour_map, nodata=0):
    profile = dict(driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs="EPSG:32631", nodata=nodata)
    with rasterio.open(path, "w", transform=from_origin(430000, 5400000, PIXEL, PIXEL), **profile) as ds:
        ds.write(colour_map)
    return path


def bright_predictor(images):
    """Change where the later date is bright (the new roof): p = 0.9 there, 0.1 elsewhere."""
    after = images[1].float()
    p = torch.where(after.mean(1, keepdim=True) > 180, 0.9, 0.1)
    return torch.cat([1 - p, p], dim=1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A before/after pair (blue, darker blue with a white roof), its change map, probabilities and polygons."""
    folder = tmp_path_factory.mktemp("scene")
    before = np.empty((3, H, W), np.uint8)
    after = np.empty((3, H, W), np.uint8)
    before[:] = np.array(BEFORE, np.uint8)[:, None, None]
    after[:] = np.array(AFTER, np.uint8)[:, None, None]
    after[(slice(None), *CHANGE)] = np.array(ROOF, np.uint8)[:, None, None]
    before[:, :, NODATA_COLS] = 0
    after[:, :, NODATA_COLS] = 0
    paths = {
        "before": write_rgb(folder / "before.tif", before),
        "after": write_rgb(folder / "after.tif", after),
        "change": folder / "change.tif",
        "probs": folder / "probs.tif",
        "polygons": folder / "change.gpkg",
    }
    predict_raster(
        open_pair(paths["before"], paths["after"]), bright_predictor, paths["change"], probs_path=paths["probs"],
        polygons_path=paths["polygons"], tags={"classes": "unchanged,changed", "checkpoint": "toy.pt"},
    )  # fmt: skip
    view = build_view(
        [paths["before"], paths["after"]], paths["change"], folder / "view", probs=paths["probs"],
        polygons=paths["polygons"], progress=False,
    )  # fmt: skip
    return {**paths, "view": Path(view["view"]), "summary": view}


# ------------------------------------------------------------------------------------------------------------
# the folder


def test_view_folder_is_self_contained_offline(scene):
    page = scene["view"].read_text(encoding="utf-8")
    assert "Bokeh" in page and "before/{Z}/{X}/{Y}.webp" in page
    tags = re.findall(r"<(?:script|link|img)\b[^>]*>", page)
    assert tags and not [t for t in tags if re.search(r"(src|href)=[\"']?(https?:)?//", t)]  # nothing fetched
    folder = scene["view"].parent
    assert (folder / "before" / "0" / "0" / "0.webp").exists()
    assert (folder / "classes" / "0" / "0" / "0.png").exists() and (
        folder / "probs" / "0" / "0" / "0.png"
    ).exists()
    assert (
        "P(change)" in page and "toy.pt" in page
    )  # the probability layer's switch; the model tag beside the map
    assert scene["summary"]["megabytes"] < 5


def test_tiles_follow_the_pyramid_and_nodata_is_transparent(scene):
    folder = scene["view"].parent
    pyramid = make_pyramid(W, H, from_origin(430000, 5400000, PIXEL, PIXEL))
    assert pyramid.full_level == 0  # 128 px fit one tile: level 0 is full resolution
    tile = np.array(Image.open(folder / "before" / "0" / "0" / "0.webp").convert("RGBA"))
    assert tile.shape == (TILE, TILE, 4)
    assert (tile[:H, : NODATA_COLS.start - 2, 3] == 255).all()
    assert (tile[:, NODATA_COLS.start + 2 :, 3] == 0).all() and (tile[H + 2 :, :, 3] == 0).all()
    classes = np.array(Image.open(folder / "classes" / "0" / "0" / "0.png").convert("RGBA"))
    assert (classes[CHANGE[0], CHANGE[1]] == (255, 0, 0, 255)).all()
    assert classes[:H, : NODATA_COLS.start][..., 3].sum() == 255 * 30 * 40  # only the change is drawn


def test_pyramid_levels_cover_the_scene_and_max_zoom_stops_them(tmp_path):
    pyramid = make_pyramid(600, 300, from_origin(0, 300, 1, 1))
    assert pyramid.full_level == 2 and pyramid.initial_resolution == 4  # level 0: one tile of 1024 scene px
    assert [(x, y) for x, y, _ in pyramid.tiles(2)] == [(0, 3), (1, 3), (2, 3), (0, 2), (1, 2), (2, 2)]
    assert pyramid.count() == 1 + 2 + 6
    data = np.full((3, 300, 600), 90, np.uint8)
    profile = dict(driver="GTiff", width=600, height=300, dtype="uint8", crs="EPSG:32631")
    with rasterio.open(
        tmp_path / "a.tif", "w", count=3, transform=from_origin(0, 300, 1, 1), **profile
    ) as ds:
        ds.write(data)
    with rasterio.open(
        tmp_path / "c.tif", "w", count=1, transform=from_origin(0, 300, 1, 1), **profile
    ) as ds:
        ds.write(data[:1] * 0 + 1)
    summary = build_view(
        [tmp_path / "a.tif"], tmp_path / "c.tif", tmp_path / "v", roles=("image",), max_zoom=1
    )
    assert sorted(p.name for p in (tmp_path / "v" / "image").iterdir()) == ["0", "1"]
    assert summary["levels"] == 2 and summary["tiles_written"]["image"] == 3
    with pytest.raises(view_module.SemisegError, match="levels go from 0"):
        build_view([tmp_path / "a.tif"], tmp_path / "c.tif", tmp_path / "w", roles=("image",), max_zoom=3)
    with pytest.raises(view_module.SemisegError, match="square pixels"):
        make_pyramid(600, 300, from_origin(0, 300, 1, 2))


def test_uint16_dates_share_one_display_stretch(tmp_path):
    """A later date twice as bright must look brighter: one stretch for both dates, not one each."""
    ramp = np.tile(np.linspace(1000, 2000, W, dtype=np.float32), (H, 1))
    paths = []
    for name, data in (("a.tif", ramp), ("b.tif", ramp * 2)):
        profile = dict(driver="GTiff", width=W, height=H, count=1, dtype="uint16", crs="EPSG:32631")
        with rasterio.open(tmp_path / name, "w", transform=from_origin(0, 0, 1, 1), **profile) as ds:
            ds.write(data.astype(np.uint16)[None])
        paths.append(tmp_path / name)
    classes = tmp_path / "c.tif"
    profile.update(dtype="uint8", nodata=255)
    with rasterio.open(classes, "w", transform=from_origin(0, 0, 1, 1), **profile) as ds:
        ds.write(np.zeros((1, H, W), np.uint8))
    build_view(paths, classes, tmp_path / "view", progress=False)
    a, b = (
        np.array(Image.open(tmp_path / "view" / d / "0/0/0.webp").convert("RGB"))[:H, :W, 0]
        for d in ("before", "after")
    )
    assert a.mean() < 100 < b.mean()  # shared 2-98 % limits: the dark date stays dark
    assert abs(int(a[:, -1].mean()) - int(b[:, 0].mean())) < 16  # 2000 maps to one grey in both dates


def test_too_large_scene_asks_for_max_zoom(monkeypatch, tmp_path, scene):
    import semiseg.view as view

    monkeypatch.setattr(view, "MAX_PIXELS_WITHOUT_ASKING", 1000)
    with pytest.raises(view.SemisegError, match="--max-zoom 0"):
        build_view([scene["before"], scene["after"]], scene["change"], tmp_path / "v", progress=False)
    assert not (tmp_path / "v").exists() and not list(tmp_path.iterdir())


def test_cli_errors_are_one_line_and_leave_no_folder(tmp_path, scene, capsys, monkeypatch):
    args = ["view", "--before", str(scene["before"]), "--after", str(scene["after"])]
    other = tmp_path / "other.tif"
    write_rgb(other, np.zeros((3, H, W), np.uint8))
    with rasterio.open(other, "r+") as ds:
        ds.transform = from_origin(0, 0, 1, 1)
    assert semicd_main([*args, "--change", str(other), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not on the grid" in err and len(err.splitlines()) == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "index.html").write_text("my own page, not a view")
    assert semicd_main([*args, "--change", str(scene["change"]), "--out", str(tmp_path / "busy")]) == 2
    assert "something other than a view" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "busy")
    for out in (".", "..", str(tmp_path / "busy" / "new" / "..")):  # the current folder, or one holding it
        assert semicd_main([*args, "--change", str(scene["change"]), "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert "the current folder" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "other.tif"]


def test_cli_writes_view_with_its_record_and_replaces_an_old_view(tmp_path, scene, capsys):
    args = [
        "view",
        "--before",
        str(scene["before"]),
        "--after",
        str(scene["after"]),
        "--change",
        str(scene["change"]),
    ]
    out = tmp_path / "v"
    assert semicd_main([*args, "--out", str(out), "--title", "title-one"]) == 0
    assert json.loads(capsys.readouterr().out)["view"] == str(out / INDEX)
    assert "title-one" in (out / INDEX).read_text() and (out / RECORD).exists()
    assert semicd_main([*args, "--out", str(out), "--title", "title-two"]) == 0
    assert "title-two" in (out / INDEX).read_text() and "title-one" not in (out / INDEX).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary or old copy left


def test_interrupted_build_leaves_the_previous_view_and_no_temporaries(tmp_path, scene, monkeypatch):
    out = tmp_path / "v"
    build_view([scene["before"], scene["after"]], scene["change"], out, progress=False, title="title-old")

    def interrupted(handle, table):
        def read(window, shape):
            raise KeyboardInterrupt

        return read

    monkeypatch.setattr(view_module, "lookup_tile_reader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_view([scene["before"], scene["after"]], scene["change"], out, progress=False, title="title-new")
    assert "title-old" in (out / INDEX).read_text() and [p.name for p in tmp_path.iterdir()] == ["v"]


def test_polygons_from_other_tools_with_odd_attributes_are_drawn(tmp_path, scene):
    """A polygon file not written by predict: a missing class, text where numbers belong. Drawn (yellow where the
    class is unknown), their popups saying what is known, no traceback."""
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {"class": [1.0, None], "area_m2": ["big", "12.5"], "mean_prob": [None, "0.25"]},
        geometry=[box(430040, 5399940, 430080, 5399970), box(430010, 5399980, 430020, 5399990)],
        crs="EPSG:32631",
    )
    frame.to_file(tmp_path / "other.gpkg")
    build_view(
        [scene["before"], scene["after"]], scene["change"], tmp_path / "v", polygons=tmp_path / "other.gpkg",
        progress=False,
    )  # fmt: skip
    page = (tmp_path / "v" / INDEX).read_text(encoding="utf-8")
    assert '"#ff0000","#ffff00"' in page.replace(" ", "")  # class 1's red; no class: yellow
    # the second box's top (twice in its ring) is in the page once, though both maps draw the box
    assert page.count("5399990.0") == 2
    assert (
        view_module._polygon_layer(tmp_path / "other.gpkg", None, {1: (255, 0, 0, 255)}, [])["area_m2"][1]
        == 12.5
    )


def test_semiseg_view_shows_one_image_and_its_class_names(tmp_path, scene, capsys):
    out = tmp_path / "v"
    assert (
        semiseg_main(
            ["view", "--image", str(scene["after"]), "--classes", str(scene["change"]), "--out", str(out)]
        )
        == 0
    )
    page = (out / INDEX).read_text()
    assert "image/{Z}/{X}/{Y}.webp" in page and "after/{Z}" not in page and "&gt;changed&lt;/div" in page


# ------------------------------------------------------------------------------------------------------------
# in the browser


@pytest.fixture(scope="module")
def browser():
    from browser import Browser, find_chromium

    reason = None
    if find_chromium() is None:
        reason = "no Chromium on PATH (Debian: apt-get install chromium; or set SEMICD_CHROMIUM)"
    else:
        try:
            import websocket  # noqa: F401
        except ImportError:
            reason = "websocket-client is not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    with Browser(width=1200, height=800) as b:
        yield b


# Every tile each visible map needs for its current extent and zoom level is drawn (or absent: outside the scene), in
# every visible tiled layer of that map. Bokeh marks a tile `finished` once drawn or given up.
TILES_DRAWN = """(() => {
  const doc = Bokeh.documents[0];
  if (!doc) return false;
  const maps = ["map", "map_right"].map((name) => doc.get_model_by_name(name)).filter((m) => m && m.visible);
  return maps.length > 0 && maps.every((map) => {
    let view = null;
    for (const root of Object.values(Bokeh.index ?? {})) { view = view || root.owner.find_one(map); }
    if (!view) return false;
    const {width, height} = view.frame.bbox;
    const extent = [map.x_range.start, map.y_range.start, map.x_range.end, map.y_range.end];
    const layers = map.renderers.filter((m) => m.tile_source && m.visible);
    return layers.length > 0 && layers.every((m) => {
      const source = m.tile_source;
      const level = source.get_level_by_extent(extent, height, width);
      return source.get_tiles_by_extent(extent, level, 0).every(([x, y, z]) => {
        const tile = source.tiles.get(source.tile_xyz_to_key(x, y, z));
        return tile !== undefined && tile.finished;
      });
    });
  });
})()"""

# page pixels of scene coordinates on the map named `name`
TO_SCREEN = """((points, name = "map") => {
  const map = Bokeh.documents[0].get_model_by_name(name);
  let view = null;
  for (const root of Object.values(Bokeh.index)) { view = view || root.owner.find_one(map); }
  const box = view.el.getBoundingClientRect();
  return points.map(([x, y]) => [box.left + view.frame.x_scale.compute(x), box.top + view.frame.y_scale.compute(y)]);
})"""

X_SPAN = '((r) => r.end - r.start)(Bokeh.documents[0].get_model_by_name("map").x_range)'
FRAMES = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(() => r(true), 50))))"


def show(browser, index: Path) -> None:
    browser.open(index.resolve().as_uri())
    browser.wait_for(TILES_DRAWN, "its tiles drawn")
    browser.evaluate(FRAMES)


def set_widget(browser, name: str, value: float, attribute: str = "value") -> None:
    browser.evaluate(f'Bokeh.documents[0].get_model_by_name("{name}").{attribute} = {value}')
    browser.wait_for(TILES_DRAWN, "its tiles drawn")
    browser.evaluate(FRAMES)


def screen_points(browser, rows_cols, transform, name="map"):
    """Page pixel of each (row, col) scene pixel centre on the map `name`."""
    xy = [transform * (c + 0.5, r + 0.5) for r, c in rows_cols]
    return [
        (round(x), round(y))
        for x, y in browser.evaluate(f"{TO_SCREEN}({json.dumps(xy)}, {json.dumps(name)})")
    ]


def sample_grid(step=4, margin=3):
    """Scene pixels away from every edge (change, nodata, scene), labelled by what the change raster holds."""
    for r in range(margin, H - margin, step):
        for c in range(margin, W - margin, step):
            yield r, c


def test_change_colour_appears_exactly_where_the_change_raster_has_change(browser, scene):
    show(browser, scene["view"])
    shot = browser.screenshot()
    with rasterio.open(scene["change"]) as ds:
        change, transform = ds.read(1), ds.transform
    pixels = [
        (r, c)
        for r, c in sample_grid()
        if all(abs(r - e) > 2 for e in (30, 60)) and all(abs(c - e) > 2 for e in (40, 80, 112))
    ]
    kinds = {1: [], 0: [], 255: []}
    for (r, c), (x, y) in zip(pixels, screen_points(browser, pixels, transform)):
        kinds[int(change[r, c])].append(shot[y, x].astype(int))
    changed, unchanged, nodata = (np.array(kinds[k]) for k in (1, 0, 255))
    assert len(changed) > 20 and len(unchanged) > 100 and len(nodata) > 10
    # red at 70 % over the white roof; the darker blue of the later date elsewhere; page white where no data
    assert (changed[:, 0] > 200).all() and (changed[:, 1] < 110).all() and (changed[:, 2] < 110).all()
    assert (np.abs(unchanged - AFTER) < 12).all()
    assert (nodata > 240).all()


def test_date_slider_switches_between_before_and_after(browser, scene):
    show(browser, scene["view"])
    with rasterio.open(scene["change"]) as ds:
        transform = ds.transform
    ((x, y),) = screen_points(browser, [(10, 10)], transform)  # unchanged ground
    assert np.abs(browser.screenshot()[y, x].astype(int) - AFTER).max() < 12
    set_widget(browser, "date", 0)
    assert np.abs(browser.screenshot()[y, x].astype(int) - BEFORE).max() < 12
    set_widget(browser, "date", 0.5)
    blend = browser.screenshot()[y, x].astype(int)
    assert abs(blend[2] - (BEFORE[2] + AFTER[2]) / 2) < 12
    set_widget(browser, "opacity", 0)  # the change layer fades out too: the roof shows through
    ((cx, cy),) = screen_points(browser, [(45, 60)], transform)
    assert browser.screenshot()[cy, cx][1] > 120


def test_side_by_side_shows_before_left_after_right_and_pans_together(browser, scene):
    """Side by side: the same ground is the earlier date on the left map and the later one on the right, the change
    on both; dragging the right map moves the left one by as much (one pair of ranges)."""
    show(browser, scene["view"])
    with rasterio.open(scene["change"]) as ds:
        transform = ds.transform
    assert not browser.evaluate('Bokeh.documents[0].get_model_by_name("map_right").visible')
    set_widget(browser, "layout", 1, "active")
    ground, roof = (10, 50), (45, 60)  # unchanged ground; the centre of the new roof
    left = screen_points(browser, [ground, roof], transform, "map")
    right = screen_points(browser, [ground, roof], transform, "map_right")
    assert (
        right[0][0] - left[0][0] > 300 and right[0][1] == left[0][1]
    )  # two maps side by side, the right one beside the left
    shot = browser.screenshot().astype(int)
    assert np.abs(shot[left[0][1], left[0][0]] - BEFORE).max() < 12
    assert np.abs(shot[right[0][1], right[0][0]] - AFTER).max() < 12
    red = lambda p: p[0] > 150 and p[0] - max(p[1], p[2]) > 100  # noqa: E731  (70 % red over either date)
    assert red(shot[left[1][1], left[1][0]]) and red(shot[right[1][1], right[1][0]])
    # drag the right map 160 px to the right (more than half the roof's width on screen)
    (x, y), dx = right[0], 160
    assert (right[1][0] - right[0][0]) / (
        roof[1] - ground[1]
    ) * 20 < dx - 10  # 20 m: half the roof, in screen px
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    browser.call(
        "Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1
    )
    for step in range(1, 11):
        browser.call(
            "Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * step / 10, y=y, button="left", buttons=1
        )
    browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y, button="left", clickCount=1)
    browser.wait_for(TILES_DRAWN, "its tiles drawn")
    browser.evaluate(FRAMES)
    moved = screen_points(browser, [roof], transform, "map")[0]
    assert abs(moved[0] - (left[1][0] + dx)) <= 3 and abs(moved[1] - left[1][1]) <= 3
    shot = browser.screenshot().astype(int)
    assert red(shot[left[1][1], left[1][0] + dx])  # the roof moved on the left map too...
    assert np.abs(shot[left[1][1], left[1][0]] - BEFORE).max() < 12  # ...and earlier ground is where it was
    assert red(shot[right[1][1], right[1][0] + dx])
    # the polygons answer a click on the right map too; the change switch hides the change on both maps
    ((px, py),) = screen_points(browser, [roof], transform, "map_right")
    browser.click(px, py)
    browser.wait_for(
        'Bokeh.documents[0].get_model_by_name("popup_right").visible', "a popup on the right map"
    )
    assert "changed" in browser.evaluate('Bokeh.documents[0].get_model_by_name("popup_text_right").text')
    labels = browser.evaluate('Bokeh.documents[0].get_model_by_name("layers").labels')
    active = [i for i, label in enumerate(labels) if label != "change"]
    set_widget(browser, "layers", json.dumps(active), "active")
    shot = browser.screenshot().astype(int)
    assert not red(shot[moved[1], moved[0]]) and not red(shot[py, px])
    set_widget(browser, "layout", 0, "active")  # back to one map: the later date on top again
    assert not browser.evaluate('Bokeh.documents[0].get_model_by_name("map_right").visible')
    ((x, y),) = screen_points(browser, [ground], transform)
    assert np.abs(browser.screenshot()[y, x].astype(int) - AFTER).max() < 12


def test_zooming_in_loads_the_finer_levels_where_they_belong(browser, tmp_path):
    """A 1024 px checkerboard of 8 px squares: the map opens on a coarse level; after zooming in, full-resolution
    tiles are drawn, and each square shows its own colour at the right place."""
    side, square = 1024, 8
    rows, cols = np.indices((side, side)) // square
    board = np.where((rows + cols) % 2 == 0, 230, 20).astype(np.uint8)
    transform = from_origin(430000, 5400000, 1, 1)
    profile = dict(
        driver="GTiff", width=side, height=side, dtype="uint8", crs="EPSG:32631", transform=transform
    )
    with rasterio.open(tmp_path / "board.tif", "w", count=3, **profile) as ds:
        ds.write(np.stack([board] * 3))
    with rasterio.open(tmp_path / "classes.tif", "w", count=1, nodata=255, **profile) as ds:
        ds.write(np.zeros((1, side, side), np.uint8))
    view = build_view(
        [tmp_path / "board.tif"], tmp_path / "classes.tif", tmp_path / "v", roles=("image",), progress=False
    )
    show(browser, Path(view["view"]))
    levels = "[...Bokeh.documents[0].get_model_by_name('image').tile_source.tiles.values()].filter(t => t.finished && t.loaded).map(t => t.tile_coords[2])"
    assert max(browser.evaluate(levels)) < view["full_resolution_level"]
    ((cx, cy),) = screen_points(browser, [(side // 2, side // 2)], transform)
    while (
        browser.evaluate(X_SPAN) > 300
    ):  # metres across the map: zoom in on the centre until 1 m > 2 screen px
        browser.call("Input.dispatchMouseEvent", type="mouseWheel", x=cx, y=cy, deltaX=0, deltaY=-200)
    browser.wait_for(TILES_DRAWN, "its tiles drawn")
    browser.evaluate(FRAMES)
    assert view["full_resolution_level"] in browser.evaluate(levels)
    shot = browser.screenshot()
    centres = [
        (side // 2 + square * i + square // 2, side // 2 + square * j + square // 2)
        for i in range(-3, 3)
        for j in range(-3, 3)
    ]
    seen = [(r, c, x, y) for (r, c), (x, y) in zip(centres, screen_points(browser, centres, transform))]
    seen = [(r, c, x, y) for r, c, x, y in seen if 0 <= x < shot.shape[1] and 0 <= y < shot.shape[0]]
    assert len(seen) > 20
    assert all(abs(int(shot[y, x, 0]) - int(board[r, c])) < 40 for r, c, x, y in seen)


def test_click_on_polygon_opens_its_popup(browser, scene):
    show(browser, scene["view"])
    polygons = gpd.read_file(scene["polygons"], layer="change")
    assert len(polygons) == 1
    centre = polygons.geometry.iloc[0].representative_point()
    ((x, y),) = [
        (round(a), round(b)) for a, b in browser.evaluate(f"{TO_SCREEN}([[{centre.x}, {centre.y}]])")
    ]
    before = browser.screenshot()
    browser.click(x, y)
    browser.wait_for('Bokeh.documents[0].get_model_by_name("popup").visible', "a popup")
    browser.evaluate(FRAMES)
    text = browser.evaluate('Bokeh.documents[0].get_model_by_name("popup_text").text')
    assert f"area {polygons['area_m2'].iloc[0]:.1f} m²" in text
    assert f"mean probability {polygons['mean_prob'].iloc[0]:.3f}" in text and "changed" in text
    shown = browser.evaluate(
        "(() => { const el = [...document.body.children, ...(document.body.shadowRoot?.children ?? [])]"
        ".find(e => e.className && String(e.className).includes('Tooltip')); "
        "if (!el) return null; const b = el.getBoundingClientRect(); return [b.width, b.height]; })()"
    )
    assert shown is not None and min(shown) > 10  # the popup is on the page, not only in the model
    assert np.abs(browser.screenshot().astype(int) - before.astype(int)).max() > 50
    ((ox, oy),) = screen_points(browser, [(10, 10)], rasterio.open(scene["change"]).transform)
    browser.click(ox, oy)  # a click beside every polygon closes it
    browser.wait_for('!Bokeh.documents[0].get_model_by_name("popup").visible', "its popup closed")


def test_demo_scene_view_draws_truth_outlines_and_saves_screenshot(browser, tmp_path):
    """The demo's synthetic scene with a toy difference predictor; the screenshot goes to the README when
    SEMICD_VIEW_SCREENSHOT names a file."""
    from semicd.demo.scene import write_scene

    files = write_scene(tmp_path, size=512, seed=0)

    def difference(images):
        a, b = (x.float() for x in images)
        p = torch.sigmoid(((a - b).abs().mean(1, keepdim=True) - 40) / 5)
        return torch.cat([1 - p, p], 1)

    predict_raster(
        open_pair(files.before, files.after), difference, tmp_path / "change.tif", polygons_path=tmp_path / "change.gpkg",
        tags={"classes": "unchanged,changed", "checkpoint": "toy-difference"}, min_area_m2=20,
    )  # fmt: skip
    start = time.perf_counter()
    view = build_view(
        [files.before, files.after], tmp_path / "change.tif", tmp_path / "view", polygons=tmp_path / "change.gpkg",
        truth=files.truth, progress=False, title="semicd view: synthetic demo scene (toy predictor)",
    )  # fmt: skip
    assert time.perf_counter() - start < 30
    show(browser, Path(view["view"]))
    shot = browser.screenshot()
    with rasterio.open(files.truth) as ds:
        truth, transform = ds.read(1) > 0, ds.transform
    far = ~truth
    for _ in range(6):  # pixels at least 6 px from any truth
        far &= np.roll(far, 1, 0) & np.roll(far, -1, 0) & np.roll(far, 1, 1) & np.roll(far, -1, 1)
    cyan = lambda p: p[0] < 120 and p[1] > 170 and p[2] > 170  # noqa: E731
    outline = [
        g.boundary for g in view_module._truth_geometries(files.truth, open_pair(files.before, files.after))
    ]
    along = [line.interpolate(f, normalized=True) for line in outline for f in np.linspace(0, 1, 41)[:-1]]
    points = browser.evaluate(f"{TO_SCREEN}({json.dumps([[p.x, p.y] for p in along])})")
    on_line = [cyan(shot[round(y), round(x)]) for x, y in points]
    assert len(on_line) > 50 and np.mean(on_line) > 0.8
    rows, cols = np.nonzero(far[::9, ::9])
    away = [cyan(shot[y, x]) for x, y in screen_points(browser, list(zip(rows * 9, cols * 9)), transform)]
    assert np.mean(away) < 0.01
    # the picture for the README: the popup of the largest polygon open, kept small (palette PNG)
    polygons = gpd.read_file(tmp_path / "change.gpkg", layer="change")
    point = polygons.geometry.iloc[int(polygons["area_m2"].argmax())].representative_point()
    ((x, y),) = browser.evaluate(f"{TO_SCREEN}([[{point.x}, {point.y}]])")
    browser.click(x, y)
    browser.wait_for('Bokeh.documents[0].get_model_by_name("popup").visible', "a popup")
    browser.evaluate(FRAMES)
    picture = screenshot_png(browser.screenshot(), tmp_path / "view.png")
    assert picture.stat().st_size < 200_000
    target = os.environ.get("SEMICD_VIEW_SCREENSHOT")
    if target:
        shutil.copyfile(picture, target)


def screenshot_png(shot: np.ndarray, path: Path) -> Path:
    """A small palette PNG of a screenshot; the outline cyan and the change red kept as exact palette entries."""
    image = Image.fromarray(shot).resize((960, 640), Image.LANCZOS)
    fixed = [0, 255, 255, 255, 0, 0, 255, 255, 255, 0, 0, 0]
    palette = Image.new("P", (1, 1))
    colours = np.array(image.quantize(60, method=Image.Quantize.MEDIANCUT).getpalette()[: 60 * 3]).tolist()
    palette.putpalette(fixed + colours)
    image.quantize(palette=palette, dither=Image.Dither.NONE).save(path, optimize=True)
    return path
