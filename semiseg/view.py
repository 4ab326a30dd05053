"""`view`: a folder that shows a scene and its prediction as an interactive web map, offline, in any browser.

`build_view([before, after], "change.tif", "view/")` writes `view/index.html` (the page, Bokeh's JavaScript
inline: see `semiseg.view_page`) and beside it a static tile pyramid per layer (`semiseg.geo.tiles`): the dates,
the class map, optionally the probabilities. Polygons (with their attributes, for the popup) and reference
outlines (a truth raster or polygon file) are drawn as vectors. The dates are read through `open_scene`, so they
are checked onto one grid and non-8-bit data gets one display stretch for every date (`shared` by default: the
pooled dates' 2-98 % percentiles), the rule prediction uses. The class map and probabilities must lie on the
first date's grid (what `predict` writes).

The folder is written under a temporary name and renamed onto `out` at the end, so `out` holds a complete view or
nothing new; an existing view there is replaced, any other existing folder is refused.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
from tqdm import tqdm

from semiseg.errors import SemisegError
from semiseg.geo.crs import short_crs
from semiseg.geo.pair import close_source, grid_differences, open_raster, open_scene, open_source
from semiseg.geo.tiles import Pyramid, image_tile_reader, lookup_tile_reader, make_pyramid, write_layer
from semiseg.geo.writer import NODATA, class_colormap
from semiseg.io import remove_stale_temporaries, temp_path_for
from semiseg.stopping import deferred_stop
from semiseg.view_page import PageContent, PageLayer, build_page, outline_columns, polygon_columns

INDEX = "index.html"
RECORD = "view.yaml"
MARKER = ".semiseg-view"  # in every view folder: only such a folder is replaced by a new view
# Above this many full-resolution pixels, building every level takes minutes: say so, offer --max-zoom or --yes.
MAX_PIXELS_WITHOUT_ASKING = 256e6
CLASS_OPACITY = 0.7


def build_view(
    images: Sequence[str | os.PathLike],
    classes: str | os.PathLike,
    out: str | os.PathLike,
    *,
    roles: Sequence[str] = ("before", "after"),
    probs: str | os.PathLike | None = None,
    polygons: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    align: str = "error",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    stretch: str | None = "auto",
    max_zoom: int | None = None,
    yes: bool = False,
    title: str | None = None,
    progress: bool = True,
    record: Callable[[Path], object] | None = None,
) -> dict:
    """Write the view folder `out`; return a summary (paths, levels, tiles, bytes, seconds).

    `images`: one raster (segmentation) or a before/after pair; `classes`: the class map predicted for them;
    `roles` names the images. `truth`: a label raster (non-zero = the class of interest) or a polygon file drawn
    as outlines. `max_zoom` stops the pyramid at that level (0 = the whole scene in one tile); without it a scene
    above `MAX_PIXELS_WITHOUT_ASKING` pixels is refused unless `yes`. `record(folder)` writes the command's record
    into the folder before it is published.
    """
    start = time.perf_counter()
    out = check_view_out(out, [*images, classes, probs, polygons, truth])
    scene = open_scene(list(images), align=align, bands=bands, nodata=nodata, stretch=stretch)
    grid = SimpleNamespace(crs=scene.crs, transform=scene.transform, height=scene.height, width=scene.width)
    tags = _check_on_grid(classes, grid, "class map")
    if probs is not None:
        _check_on_grid(probs, grid, "probability raster")
    pyramid = make_pyramid(scene.width, scene.height, scene.transform, max_zoom)
    _check_size(pyramid, max_zoom, yes)
    names = tags["names"]
    colours = class_colormap(len(names))

    content = _page_content(scene, pyramid, roles, classes, probs, names, colours, tags, title)
    if polygons is not None:  # vectors first: a bad file is reported before minutes of tiling
        content.polygons = _polygon_layer(polygons, scene.crs, colours, names)
    if truth is not None:
        content.outlines = outline_columns(_truth_geometries(truth, grid))
        content.outline_title = f"reference outlines ({Path(truth).name})"

    remove_stale_temporaries(out)
    tmp = temp_path_for(out, "")
    tmp.mkdir()
    try:
        counts = _write_tiles(scene, pyramid, tmp, classes, probs, colours, roles, progress)
        (tmp / INDEX).write_text(build_page(content), encoding="utf-8")
        (tmp / MARKER).write_text(
            "a folder written by `view`: a new view replaces it whole\n", encoding="utf-8"
        )
        if record is not None:
            record(tmp)
        with deferred_stop():
            _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "view": str(out / INDEX),
        "levels": pyramid.max_level + 1,
        "full_resolution_level": pyramid.full_level,
        "tiles_written": counts,
        "megabytes": round(size / 1e6, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }


def check_view_out(out: str | os.PathLike, inputs: Sequence) -> Path:
    """The view folder: its parent must exist, it must not be an input, and an existing one must be a view."""
    if Path.cwd().is_relative_to(Path(out).resolve()):
        raise SemisegError(
            f"--out {out} is (or holds) the current folder, which a new view would replace whole; "
            "give a new folder name"
        )
    out = Path(os.path.normpath(out))  # `a/b/..` is `a`: the temporary and old copies are named after it
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise SemisegError(f"the folder holding --out {out} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise SemisegError(f"cannot write --out {out} into {parent}: permission denied")
    if out.exists() and not out.is_dir():
        raise SemisegError(f"--out {out} is a file; give a folder name for the view")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SemisegError(
            f"--out {out} is a folder that holds something other than a view; give a new folder"
        )
    for path in inputs:
        if path is not None and Path(path).resolve().is_relative_to(out.resolve()):
            raise SemisegError(
                f"the input {path} lies inside --out {out}, which a new view replaces; move it"
            )
    return out


def check_view_scene(image: str | os.PathLike, max_zoom: int | None, yes: bool) -> None:
    """Refuse now what `build_view` would refuse about the scene's grid and size (pixels not square, --max-zoom
    too deep, a scene too large without --max-zoom or --yes): `predict --view` checks it before predicting."""
    with open_raster(image) as ds:
        pyramid = make_pyramid(ds.width, ds.height, ds.transform, max_zoom)
    _check_size(pyramid, max_zoom, yes)


def _check_on_grid(path, grid, what: str) -> dict:
    """Refuse a raster off the scene's grid (or not one band of bytes); return its class names and tags."""
    with open_raster(path, what) as ds:
        diffs = grid_differences(grid, ds)
        if diffs:
            raise SemisegError(
                f"the {what} {path} is not on the grid of the images (it differs in {', '.join(diffs)}); "
                "give the rasters `predict` wrote for these images"
            )
        if ds.count != 1 or ds.dtypes[0] != "uint8":
            raise SemisegError(f"the {what} {path} must be one band of uint8 values, as `predict` writes it")
        tags = ds.tags()
        values = int(ds.read(1, out_shape=(min(ds.height, 512), min(ds.width, 512))).max())
    names = tags.get("classes")
    tags["names"] = names.split(",") if names else [f"class {c}" for c in range(max(2, values + 1))]
    return tags


def _check_size(pyramid: Pyramid, max_zoom: int | None, yes: bool) -> None:
    pixels = pyramid.width * pyramid.height
    if max_zoom is not None or yes or pixels <= MAX_PIXELS_WITHOUT_ASKING:
        return
    level = pyramid.full_level
    while level > 0 and pixels / 4 ** (pyramid.full_level - level) > MAX_PIXELS_WITHOUT_ASKING:
        level -= 1
    raise SemisegError(
        f"the scene is {pyramid.width} x {pyramid.height} px ({pixels / 1e6:.0f} Mpx): a full-resolution pyramid "
        f"is {pyramid.count():,} tiles per layer and takes long to build; pass --max-zoom {level} (levels 0-"
        f"{pyramid.full_level}, {pyramid.full_level} = full resolution; each level below halves it) or --yes"
    )


def _write_tiles(
    scene, pyramid: Pyramid, folder: Path, classes, probs, colours, roles, progress: bool
) -> dict:
    """Tiles of the dates, the class map and the probabilities, one thread per layer (GDAL's reads and the image
    encoders release the GIL; each thread opens its own handle); returns the files written per layer."""
    bar = tqdm(
        total=pyramid.count() * (len(scene.sources) + 1 + (probs is not None)),
        unit="tile",
        desc="view",
        disable=not progress or not sys.stderr.isatty(),
    )

    cancelled = threading.Event()  # set when the main thread leaves early (an error, Ctrl-C, SIGTERM)

    def tick(n: int) -> None:
        if cancelled.is_set():
            raise CancelledError("view interrupted")
        bar.update(n)

    def image_layer(role: str, source) -> int:
        handle = open_source(source)
        try:
            reader = image_tile_reader(handle, source, scene.height, scene.width)
            return write_layer(pyramid, folder / role, reader, "webp", tick)
        finally:
            close_source(handle)

    def lookup_layer(name: str, path, table: np.ndarray) -> int:
        with rasterio.open(path) as handle:
            return write_layer(pyramid, folder / name, lookup_tile_reader(handle, table), "png", tick)

    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            jobs = {role: pool.submit(image_layer, role, s) for role, s in zip(roles, scene.sources)}
            jobs["classes"] = pool.submit(lookup_layer, "classes", classes, class_table(colours))
            if probs is not None:
                jobs["probs"] = pool.submit(lookup_layer, "probs", probs, prob_table())
            try:
                return {name: job.result() for name, job in jobs.items()}
            except BaseException:
                cancelled.set()  # the other layers stop at their next tile, before the pool is left
                raise
    finally:
        bar.close()


def class_table(colours) -> np.ndarray:
    """A 256 x 4 RGBA lookup of class values (nodata and values without a colour transparent)."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for value, rgba in colours.items():
        table[value] = rgba
    table[NODATA] = 0
    return table


def prob_table() -> np.ndarray:
    """Probabilities (x 254, 255 nodata) through Viridis, transparent where low so the image shows through."""
    from bokeh.palettes import Viridis256

    rgb = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in Viridis256], dtype=np.uint8)
    table = np.zeros((256, 4), dtype=np.uint8)
    index = np.clip(np.rint(np.arange(255) * 255 / 254).astype(int), 0, 255)
    table[:255, :3] = rgb[index]
    table[:255, 3] = np.clip(np.arange(255) * 255 // 254, 0, 255)
    return table


def _hex(rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def _page_content(scene, pyramid, roles, classes, probs, names, colours, tags, title) -> PageContent:
    images = [PageLayer(role, "webp", role) for role in roles]
    overlays = [
        PageLayer(
            "classes", "png", "change" if len(roles) == 2 else "classes", smooth=False, alpha=CLASS_OPACITY
        )
    ]
    if probs is not None:
        what = "P(change)" if len(roles) == 2 else "probability"
        overlays.append(PageLayer("probs", "png", what, visible=False, smooth=False, alpha=0.8))
    legend = [(name, _hex(colours[c])) for c, name in enumerate(names) if colours.get(c, (0, 0, 0, 0))[3]]
    metre = (
        scene.crs is not None
        and scene.crs.is_projected
        and (scene.crs.linear_units or "").lower() in ("metre", "meter", "m")
    )
    return PageContent(
        title=title or f"{' / '.join(roles)}: {Path(classes).name}", pyramid=pyramid, images=images,
        overlays=overlays, legend=legend, facts=_facts(scene, pyramid, roles, classes, probs, tags, metre),
        metre_units=metre,
    )  # fmt: skip


def _facts(scene, pyramid: Pyramid, roles, classes, probs, tags, metre: bool) -> list[tuple[str, str]]:
    """What the page says beside the map: the files and their dates, the model, the grid, the stretch."""
    facts = [
        (role, Path(s.path).name + (f" ({s.date})" if s.date else ""))
        for role, s in zip(roles, scene.sources)
    ]
    facts.append(("class map", Path(classes).name))
    if probs is not None:
        facts.append(("probabilities", Path(probs).name))
    if tags.get("checkpoint"):
        sha = tags.get("checkpoint_sha256")
        facts.append(("model", tags["checkpoint"] + (f" (sha256 {sha})" if sha else "")))
    facts += [
        ("CRS", short_crs(scene.crs)),
        ("pixel", f"{pyramid.pixel_size:g} {'m' if metre else 'CRS units'}"),
        ("size", f"{scene.width} x {scene.height} px"),
        ("display stretch", scene.stretch),
    ]
    if pyramid.max_level < pyramid.full_level:
        coarser = 2 ** (pyramid.full_level - pyramid.max_level)
        facts.append(("finest level", f"1/{coarser} of full resolution (--max-zoom)"))
    return facts


def _polygon_layer(path, crs, colours, names) -> dict:
    """The polygons with the attributes the popup shows (class name, area, mean probability, id)."""
    import geopandas
    import pandas

    from semiseg.geo.vectors import feature_layer

    if not Path(path).exists():
        raise SemisegError(f"--polygons {path} does not exist; check the path")
    try:
        frame = geopandas.read_file(path, layer=feature_layer(path))
    except Exception as err:  # pyogrio raises many types for unreadable files
        raise SemisegError(f"--polygons {path} is not a readable vector file ({err})") from None
    if frame.crs is not None and crs is not None and frame.crs != crs:
        frame = frame.to_crs(crs)
    frame = frame[~(frame.geometry.is_empty | frame.geometry.isna())]
    n = len(frame)

    def numbers(key: str, default) -> np.ndarray:
        """A column as floats (a missing or non-numeric value is NaN: any file may be given, not only ours)."""
        if key not in frame:
            return np.full(n, np.nan) if default is None else np.asarray(default, dtype=float)
        return pandas.to_numeric(frame[key], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    column = lambda key, default: frame[key].tolist() if key in frame else [default] * n  # noqa: E731
    classes = numbers("class", np.ones(n))
    values = np.where(np.isfinite(classes), classes, -1).astype(int)  # -1: no class colour, drawn yellow
    attributes = {
        "id": column("id", 0),
        "class_name": column("class_name", "polygon"),
        "area_m2": numbers("area_m2", frame.geometry.area).tolist(),
        "mean_prob": numbers("mean_prob", None).tolist(),
        "colour": [
            _hex(colours.get(v, (255, 255, 0, 255))) if colours.get(v, (0,) * 4)[3] else "#ffff00"
            for v in values
        ],
    }
    return polygon_columns(list(frame.geometry), attributes)


def _truth_geometries(path, grid) -> list:
    """Reference polygons: a polygon file as it is, or the non-zero regions of a label raster on the scene grid."""
    from semiseg.geo.vectors import VECTOR_SUFFIXES, read_vector

    if Path(path).suffix.lower() in VECTOR_SUFFIXES:
        return read_vector(path, grid.crs, "--truth")
    import shapely
    from rasterio.features import shapes

    with open_raster(path, "truth raster") as ds:
        diffs = grid_differences(grid, ds)
        if diffs:
            raise SemisegError(
                f"the truth raster {path} is not on the grid of the images (it differs in {', '.join(diffs)})"
            )
        data = ds.read(1)
        valid = ds.read_masks(1) > 0
    mask = (data > 0) & valid
    return [
        shapely.geometry.shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, transform=ds.transform)
    ]


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder onto `out`; an earlier view there is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = temp_path_for(out, ".old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
