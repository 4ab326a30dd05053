"""Tile-and-predict a whole scene: read windows in workers, predict in batches, blend and stream rows to disk.

The caller supplies `predictor(images) -> probabilities`: `images` is a tuple (one per date) of uint8 tensors
B x C x h x w with values 0..255, and the result is B x K x h x w class probabilities. Normalisation, the
device and the model are the caller's business (`semiseg.predict.make_predictor`), so this module works the same
for change detection (two dates) and segmentation (one image), and tests can pass a toy function. The result
must be a new tensor on every call (not a buffer the predictor reuses): the writer thread reads it while the
next batch runs. Windows must be a multiple of the model's patch size: the predictor's `patch_size` attribute,
or the `patch_size` argument.

Flow: `open_scene` checks the inputs; a `TileGrid` of overlapping windows is read by a DataLoader whose
workers open their own rasterio handles; windows without any valid pixel are not predicted; probabilities are
blended by `StripBlender`, and each strip of rows is decided (argmax or threshold), written, and forgotten as
soon as no later window touches it. Blending and writing run in one background thread (`StripPipeline`)
while the main thread runs the model on the next batch. Outputs are published only when everything succeeded
(see `writer.py`).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from semiseg.errors import SemisegError, error_reason
from semiseg.geo.area import pixel_area_m2
from semiseg.geo.blend import StripBlender
from semiseg.geo.gdal_errors import GDAL_ERRORS
from semiseg.geo.pair import RasterSource, Scene, close_source, open_source, read_window
from semiseg.geo.styles import add_gpkg_style, attribute_table_xml, class_raster_qml, polygons_qml
from semiseg.geo.windows import TileGrid, make_grid
from semiseg.geo.writer import (
    NODATA,
    PROB_SCALE,
    StreamingGeoTiff,
    check_output_path,
    class_colormap,
    writing,
)
from semiseg.io import remove_quietly, remove_stale_temporaries, temp_path_for
from semiseg.stopping import check_stop, deferred_stop

Predictor = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
POLYGON_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def polygon_driver(path: str | os.PathLike) -> str:
    """The vector driver for an output name, chosen by extension; other extensions are refused up front."""
    suffix = Path(path).suffix.lower()
    if suffix not in POLYGON_DRIVERS:
        raise SemisegError(f"--polygons {path}: use a .gpkg (GeoPackage) or .geojson file name")
    return POLYGON_DRIVERS[suffix]


class WindowDataset(Dataset):
    """Windows of a scene as (images tuple of C x s x s uint8 tensors, s x s bool validity, NaN/Inf count, index).

    Holds only plain descriptions of the sources; each process (main or worker) opens its own handles on first
    use, because rasterio/GDAL handles can neither be pickled nor shared across a fork safely. The NaN/Inf count
    covers only the window's own cell of the grid (from its start to the next window's start), so summed over all
    windows each pixel is counted once although windows overlap.
    """

    def __init__(self, sources: Sequence[RasterSource], grid: TileGrid) -> None:
        self.sources = tuple(sources)
        self.grid = grid
        self.tiles = grid.tiles
        self._handles = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int):
        if self._handles is None:
            self._handles = []
            for source in self.sources:
                try:
                    self._handles.append(open_source(source))
                except GDAL_ERRORS as exc:  # e.g. a warp GDAL cannot set up
                    raise SemisegError(f"opening {source.path} failed ({error_reason(exc)})") from None
        tile = self.tiles[index]
        images, valid, bad = [], None, None
        for source, handle in zip(self.sources, self._handles):
            try:
                image, ok, nonfinite = read_window(handle, source, tile.row, tile.col, tile.size, tile.size)
            except GDAL_ERRORS as exc:  # GDAL errors mid-file: a damaged input
                raise SemisegError(
                    f"reading {source.path} failed near row {tile.row}, col {tile.col} ({error_reason(exc)}); "
                    "the file may be damaged"
                ) from None
            images.append(torch.from_numpy(image))
            valid = ok if valid is None else valid & ok
            bad = nonfinite if bad is None else bad | nonfinite
        rows, cols = self.grid.row_starts, self.grid.col_starts
        h = (rows[tile.row_index + 1] if tile.row_index + 1 < len(rows) else self.grid.height) - tile.row
        w = (cols[tile.col_index + 1] if tile.col_index + 1 < len(cols) else self.grid.width) - tile.col
        return tuple(images), torch.from_numpy(valid), int(bad[:h, :w].sum()), index

    def close(self) -> None:
        for h in self._handles or []:
            close_source(h)
        self._handles = None


def outlive_group_sigterm(worker_id: int) -> None:
    """In a DataLoader worker: let the main process handle a SIGTERM sent to the whole process group.

    Slurm's scancel, systemd and `kill -TERM -PGID` signal every process of the job. A worker that died at once
    would make the main process fail with "DataLoader worker ... is killed" (at any point, through PyTorch's
    SIGCHLD handler) instead of stopping cleanly. So a worker ignores its first SIGTERM: the main process stops
    and shuts its workers down; a second SIGTERM (PyTorch terminating a worker that does not finish) ends it.
    """

    def handler(signum: int, frame: object) -> None:
        if handler.seen:  # type: ignore[attr-defined]
            os._exit(128 + signum)
        handler.seen = True  # type: ignore[attr-defined]

    handler.seen = False  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)


def decide(probs: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Class map and score map from K x h x w probabilities.

    One channel: a change probability, thresholded (0.5 by default). Two classes with a threshold: class 1
    where its probability reaches it. Otherwise argmax. The score is the change probability for 1-2 classes
    and the winning class's probability for more.
    """
    k = probs.shape[0]
    if k == 1 or (k == 2 and threshold is not None):
        p = probs[-1]
        t = 0.5 if threshold is None else threshold
        return (p >= t).astype(np.uint8), p
    if threshold is not None:
        raise SemisegError(f"--threshold only applies to change (2-class) models; this one has {k} classes")
    return probs.argmax(0).astype(np.uint8), (probs[1] if k == 2 else probs.max(0))


def run_predictor(predictor: Predictor, images: tuple[torch.Tensor, ...], tta: bool) -> torch.Tensor:
    """Probabilities (B x K x h x w) of a batch, left on the predictor's device (`to_host` brings them over
    without waiting); with TTA averaged with the horizontal flip."""
    probs = _checked(predictor(images), images[0])
    if tta:
        flipped = _checked(predictor(tuple(x.flip(-1) for x in images)), images[0]).flip(-1)
        probs = (probs + flipped) / 2
    return probs


def _checked(probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    b, _, h, w = image.shape
    if probs.ndim != 4 or probs.shape[0] != b or tuple(probs.shape[2:]) != (h, w):
        raise ValueError(f"predictor returned shape {tuple(probs.shape)} for input {tuple(image.shape)}")
    return probs


def _check_request(scene: Scene, out_path, probs_path, polygons_path, threshold: float | None) -> None:
    """Everything a user can get wrong about the outputs and the threshold, refused before any compute."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise SemisegError(f"--threshold {threshold} must be between 0 and 1")
    outputs = [check_output_path(out_path, "output")]
    if probs_path is not None:
        outputs.append(check_output_path(probs_path, "probability output"))
    if polygons_path is not None:
        polygon_driver(polygons_path)
        outputs.append(check_output_path(polygons_path, "polygon output"))
    _check_outputs(scene, outputs)


def _check_outputs(scene: Scene, outputs: Sequence[Path]) -> None:
    """Outputs must be distinct writable files and must not overwrite an input."""
    inputs = {os.path.abspath(s.path) for s in scene.sources}
    seen = set()
    for p in outputs:
        a = os.path.abspath(p)
        if a in inputs:
            raise SemisegError(f"output {p} is also an input; choose another output name")
        if a in seen:
            raise SemisegError(
                f"output {p} is given twice; use distinct names for --out, --probs, --polygons"
            )
        seen.add(a)


class _Stats:
    """Running pixel counts per class over the written rows, and the input pixels dropped as NaN/Inf."""

    def __init__(self) -> None:
        self.counts = np.zeros(256, dtype=np.int64)
        self.nonfinite = 0

    def add(self, classes: np.ndarray) -> None:
        self.counts += np.bincount(classes.ravel(), minlength=256)


def class_names_for(k: int, names: Sequence[str] | str | None) -> list[str]:
    """`k` class names: the given ones (a list or comma-separated text) when they fit, else `class 0`..."""
    if isinstance(names, str):
        names = names.split(",")
    names = list(names or [])
    return names if len(names) == k else [f"class {c}" for c in range(k)]


def predict_raster(
    scene: Scene,
    predictor: Predictor,
    out_path: str | os.PathLike,
    *,
    window: int = 504,
    overlap: float = 0.25,
    batch_size: int = 4,
    num_workers: int = 2,
    probs_path: str | os.PathLike | None = None,
    polygons_path: str | os.PathLike | None = None,
    threshold: float | None = None,
    tta: bool = False,
    progress: bool = True,
    tags: Mapping[str, object] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    background: int | None = 0,
    sieve_pixels: int = 4,
    min_area_m2: float = 0.0,
    simplify: float = 0.0,
    patch_size: int | None = None,
    writer_thread: bool = True,
) -> dict:
    """Predict a scene window by window and write the class map (and optionally probabilities and polygons).

    `scene` comes from `semiseg.geo.pair.open_scene` (checks, alignment, bands, nodata, stretch).
    `threshold` (2-class models) picks class 1 where its probability reaches it, else argmax is used.
    `tags` (e.g. classes, checkpoint hash) are written into the rasters, with the window, overlap, threshold,
    TTA and the input stretch added. `num_classes` is only needed to colour a map when no pixel was valid;
    `class_names` label the classes in the styles, the attribute table, the polygons and the summary (default:
    the `classes` tag). `simplify` (CRS units) simplifies polygon outlines. Returns a summary: pixel counts and
    areas per class, for a two-date scene the changed (non-zero) area and its share of the valid area, the
    input pixels dropped as NaN/Inf, seconds and megapixels per second. `writer_thread=False` blends and writes in
    the calling thread instead of beside the model (`StripPipeline`); the files are the same byte for byte.
    """
    patch_size = patch_size or getattr(predictor, "patch_size", None)
    if patch_size is None:
        raise SemisegError(
            "predict_raster needs the model's patch size: pass patch_size or a predictor that has one"
        )
    grid = make_grid(scene.height, scene.width, window, overlap, patch_size)
    _check_request(scene, out_path, probs_path, polygons_path, threshold)
    for path in (out_path, probs_path, polygons_path):
        if path is not None:
            remove_stale_temporaries(path)
    run_tags = {"window": window, "overlap": overlap, "threshold": threshold or "argmax", "tta": tta}
    run_tags["stretch"] = scene.stretch
    run_tags.update(tags or {})

    start = time.perf_counter()
    notes: list[str] = []
    polygon_files: list[tuple[Path, Path]] = []  # (temporary, final) of the polygons and their style
    try:
        with ExitStack() as stack:
            geo = dict(width=scene.width, height=scene.height, crs=scene.crs, transform=scene.transform)
            class_out = stack.enter_context(StreamingGeoTiff(out_path, tags=run_tags, **geo))
            probs_out = None
            if probs_path is not None or polygons_path is not None:
                target = probs_path if probs_path is not None else temp_path_for(out_path, ".probs.tif")
                probs_out = stack.enter_context(StreamingGeoTiff(target, tags=run_tags, **geo))
            stats = _Stats()
            k, stats.nonfinite = stream_windows(
                WindowDataset(scene.sources, grid), grid, predictor,
                _strip_writer(class_out, probs_out, stats, threshold), tta, batch_size, num_workers, progress,
                background=writer_thread,
            )  # fmt: skip
            k = k or num_classes or 2
            names = class_names_for(k, class_names or run_tags.get("classes"))
            colours = class_colormap(k)
            what = "change class" if len(scene.sources) == 2 and k == 2 else "class"
            # The probabilities are finished (overviews, COG copy) in a second thread while this one finishes the
            # class map: GDAL releases the GIL there, each raster has its own handle used by one thread, and leaving
            # the pool waits for that thread, so no handle is in use when an error closes and deletes the files.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="semiseg-finish") as pool:
                probs_job = None
                if probs_out is not None:
                    kind = "change probability" if k <= 2 else "winning-class probability"
                    probs_job = pool.submit(
                        probs_out.finish, None,
                        {"values": f"{kind} x 254 (band scale 1/254 gives 0-1), 255 = nodata"},
                        description=kind, scale=1.0 / PROB_SCALE,
                    )  # fmt: skip
                class_file = class_out.finish(
                    colours, {"classes": ",".join(names)}, description=what,
                    band_tags={str(c): name for c, name in enumerate(names)},
                    sidecars={".qml": class_raster_qml(colours, names),
                              ".aux.xml": attribute_table_xml(names, colours, what)},
                )  # fmt: skip
                probs_file = None if probs_job is None else probs_job.result()
            n_polygons = None
            if polygons_path is not None:
                n_polygons = _write_polygons(
                    scene, class_file, probs_file, Path(polygons_path), polygon_files, names, colours, run_tags,
                    set(class_out.sidecars), notes, background=background, sieve_pixels=sieve_pixels,
                    min_area_m2=min_area_m2, simplify=simplify,
                )  # fmt: skip
            # Publish: every file is complete; move them into place with signals held off, the class map last.
            with deferred_stop():
                for tmp, final in polygon_files:
                    os.replace(tmp, final)
                if probs_path is not None:
                    probs_out.publish()
                class_out.publish()
    finally:
        remove_quietly([tmp for tmp, _ in polygon_files])
    seconds = time.perf_counter() - start
    summary = _summary(scene, grid, stats, names, seconds, out_path, probs_path, polygons_path, n_polygons)
    summary["notes"] += notes
    return summary


def _write_polygons(
    scene, class_file, probs_file, polygons_path: Path, files: list, names, colours, run_tags, styles_taken,
    notes: list, **options,
) -> int:  # fmt: skip
    """Vectorise the finished class map with its style, under temporary names added to `files` (temporary, final)
    for the caller to publish; a GeoJSON's style is not written over one in `styles_taken` (said in `notes`)."""
    from semiseg.geo.vectorize import vectorize_classes  # the vector stack loads only here

    driver = polygon_driver(polygons_path)
    layer = polygons_path.stem
    roles = ("before", "after") if len(scene.sources) == 2 else ("image",)
    attributes: dict[str, object] = {}
    for role, source in zip(roles, scene.sources):
        attributes[role] = Path(source.path).name
        attributes[f"{role}_date"] = source.date
    attributes["model"] = str(run_tags.get("checkpoint", ""))
    attributes["model_sha256"] = str(run_tags.get("checkpoint_sha256", ""))
    tmp = temp_path_for(polygons_path)
    files.append((tmp, polygons_path))
    with writing(polygons_path):
        count = vectorize_classes(
            class_file, tmp, driver=driver, probs_path=probs_file, layer=layer, class_names=names,
            attributes=attributes, **options,
        )  # fmt: skip
        background = options.get("background")
        qml = polygons_qml({c: rgba for c, rgba in colours.items() if c != background}, names)
        if driver == "GPKG":
            add_gpkg_style(tmp, layer, qml)
        elif polygons_path.with_suffix(".qml") in styles_taken:  # the map's style has that name
            notes.append(
                f"no QGIS style for {polygons_path.name}: {polygons_path.stem}.qml is the class map's; name the "
                "polygons differently (or write a .gpkg, which keeps its style inside) to have one"
            )
        else:  # GeoJSON has nowhere to keep a style: QGIS reads <stem>.qml beside it
            style = polygons_path.with_suffix(".qml")
            files.insert(0, (temp_path_for(style), style))
            files[0][0].write_text(qml, encoding="utf-8")
    return count


StripSink = Callable[[int, "np.ndarray | None", np.ndarray], None]


def _strip_writer(class_out, probs_out, stats: _Stats, threshold: float | None) -> StripSink:
    """A strip sink that decides each strip (argmax or threshold) and writes classes and scores to the rasters."""

    def write(row: int, probs: np.ndarray | None, valid: np.ndarray) -> None:
        classes = np.full(valid.shape, NODATA, dtype=np.uint8)
        score = np.full(valid.shape, NODATA, dtype=np.uint8)
        if probs is not None:
            decided, p = decide(probs, threshold)
            classes[valid] = decided[valid]
            score[valid] = np.clip(np.rint(p[valid] * PROB_SCALE), 0, PROB_SCALE).astype(np.uint8)
        class_out.write_rows(row, classes)
        if probs_out is not None:
            probs_out.write_rows(row, score)
        stats.add(classes)

    return write


class StripPipeline:
    """Blend windows into strips and hand each finished strip to the sink, optionally in one background thread.

    Why a thread: the main thread reads windows (or gets them from DataLoader workers) and runs the model; blending,
    deciding, compressing and writing a strip are numpy and GDAL work that releases the GIL, so done beside the
    model they cost almost no wall time instead of adding to it. Why exactly one thread: rasterio/GDAL dataset
    handles are not thread-safe, and the blender must see windows in row-major order; one consumer keeps both
    true and makes the written bytes identical to the synchronous path (`background=False`, the same code run in
    the caller's thread). Why a bounded queue: the main thread blocks once `depth` batches wait, so host memory is
    a few batches of probabilities plus the blender's one band of rows, never a function of the scene's height.

    The handles stay usable by one thread at a time: the sink's rasters are opened in the caller's thread before
    the pipeline starts and finished/closed there after `finish()` or `close()` has joined the thread. An error in
    the thread is kept and raised again, unchanged, in the caller's thread at its next `put` or at `finish`, so
    the caller sees the same one-line error as before and its `finally` blocks remove the temporaries.
    """

    _FINISH = object()

    def __init__(self, grid: TileGrid, sink: StripSink, *, background: bool = True, depth: int = 2) -> None:
        self.grid = grid
        self.sink = sink
        self.blender = StripBlender(grid)
        self.strip = 0
        self.error: BaseException | None = None
        self._abort = threading.Event()
        self._done = threading.Event()  # set by the thread itself as it ends (see `_wait`)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="semiseg-strip-writer", daemon=True)
            self._thread.start()

    @property
    def num_classes(self) -> int | None:
        """Classes of the blended probabilities (None when no window was predicted); valid after `finish()`."""
        return None if self.blender.acc is None else int(self.blender.acc.shape[0])

    def put(
        self, tiles: Sequence, probs: HostProbs | None, slots: Sequence[int | None], valid: np.ndarray
    ) -> None:
        """Queue one batch: its tiles, their probabilities (`host_probs`), each tile's row in them (None: no valid
        pixel, not predicted) and their validity masks (B x size x size). Blocks while the queue is full."""
        item = (tiles, probs, slots, valid)
        if self._queue is None:
            self._handle(item)
            return
        self._put(item)

    def finish(self) -> None:
        """Flush the last rows and wait for every strip to be written; raise the thread's error if it had one."""
        if self._queue is None:
            self._flush(self.grid.height)
            return
        self._put(self._FINISH)
        self._wait()
        self._raise_error()

    def _put(self, item: object) -> None:
        """Queue `item`, raising the thread's error instead of blocking forever: the thread may have stopped on an
        error with the queue full."""
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop the thread (after the strip it is writing, if any) and wait for it; safe to call twice. Called
        on every way out, so no thread touches the rasters once the caller closes or deletes them."""
        if self._thread is None:
            return
        self._abort.set()
        try:
            self._queue.put_nowait(self._FINISH)  # wakes a thread waiting on an empty queue
        except queue.Full:
            pass  # a full queue: the thread is busy and sees the abort before taking the next item
        interrupted: BaseException | None = None
        while True:  # a second Ctrl-C or SIGTERM must not let the caller close the rasters under the thread
            try:
                self._wait()
                break
            # KeyboardInterrupt, or a SIGTERM handler's exception: held until the thread has ended
            except BaseException as exc:
                interrupted = interrupted or exc
        self._thread = None
        if interrupted is not None:
            raise interrupted

    def _wait(self) -> None:
        """Wait until the thread has ended. Not `Thread.join`: on CPython 3.11-3.12 a signal handler raising
        inside `join()` can leave the thread marked finished while it still runs, after which every `join()`
        returns at once; the thread's own event cannot be fooled that way."""
        while not self._done.wait(0.1):
            pass

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                item = self._queue.get()
                if self._abort.is_set():
                    return
                if item is self._FINISH:
                    self._flush(self.grid.height)
                    return
                self._handle(item)
        except BaseException as exc:  # kept for the caller's thread, which raises it
            self.error = exc
        finally:
            self._done.set()

    def _handle(self, item: tuple) -> None:
        tiles, probs, slots, valid = item
        array = None if probs is None else host_array(probs)
        for tile, slot, ok in zip(tiles, slots, valid):
            if tile.row_index != self.strip:
                self._flush(self.grid.row_starts[tile.row_index])
                self.strip = tile.row_index
            self.blender.add(tile, None if slot is None else array[slot], ok)

    def _flush(self, until_row: int) -> None:
        self.sink(*self.blender.flush(until_row))


HostProbs = tuple[torch.Tensor, "torch.cuda.Event | None"]


def to_host(probs: torch.Tensor) -> HostProbs:
    """Start copying a batch's probabilities to host memory without waiting for the device.

    On CUDA the copy goes into pinned memory with `non_blocking=True` and an event marks its end: the main
    thread goes on to read and launch the next batch while the device still computes this one, and only the
    writer thread waits (`host_array`). Elsewhere the tensor is already on the host."""
    probs = probs.detach().float()
    if probs.device.type != "cuda":
        return probs.cpu(), None  # a no-op on the CPU; other accelerators (mps, xpu) copy here
    host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
    host.copy_(probs, non_blocking=True)  # queued on the current stream of the tensor's device
    # blocking: the writer thread sleeps while it waits for the copy instead of spinning a core
    event = torch.cuda.Event(blocking=True)
    event.record(torch.cuda.current_stream(probs.device))  # that device's stream, whichever GPU is current
    return host, event


def host_array(probs: HostProbs) -> np.ndarray:
    """The numpy array of `to_host`'s copy, once the copy has finished."""
    tensor, event = probs
    if event is not None:
        event.synchronize()
    return tensor.numpy()


def stream_windows(
    dataset: Dataset, grid: TileGrid, predictor, sink: StripSink, tta: bool, batch_size: int, num_workers: int,
    progress: bool, *, background: bool = True,
) -> tuple[int | None, int]:  # fmt: skip
    """The streaming loop: read, predict, blend, and hand each strip of rows to `sink(row, probs, valid)` once it
    is final (probs K x h x w, None when no window of the strip had a valid pixel). Returns the class count (None
    when nothing was predicted) and the NaN/Inf input pixels the windows reported.

    `dataset[i]` gives (images, valid, nonfinite, i) for window i of `grid`: `WindowDataset` for rasters on
    disk, `semiseg.api` for arrays in memory; both go through this one loop, so they blend alike.

    Three stages overlap: DataLoader workers read the next windows (pinned memory on CUDA, so the predictor's
    `non_blocking` copy to the device does not wait), this thread runs the model, and a `StripPipeline` thread
    blends and calls `sink` (`background=False` runs that in this thread: the reference for tests, and easier
    to debug). `sink` is then called from that thread, one call at a time, in row order.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=outlive_group_sigterm,
    )
    nonfinite_total = 0
    done_px = 0
    start = time.perf_counter()
    bar = tqdm(total=len(grid), unit="win", desc="predict", disable=not progress or not sys.stderr.isatty())
    batches = iter(loader)
    pipeline = StripPipeline(grid, sink, background=background)
    try:
        with deferred_stop():  # a signal is acted on between batches (see semiseg.stopping)
            for images, valid, nonfinite, indices in batches:
                check_stop()
                nonfinite_total += int(nonfinite.sum())
                has_data = valid.flatten(1).any(1)
                keep = torch.nonzero(has_data).flatten()
                probs = None
                if len(keep):
                    # Indexing copies into ordinary memory; a whole batch keeps the loader's pinned one, whose
                    # copy to the GPU then does not wait for the model's previous batch.
                    whole = len(keep) == len(has_data)
                    batch = images if whole else tuple(x[keep] for x in images)
                    probs = to_host(run_predictor(predictor, batch, tta))
                slot = {b: j for j, b in enumerate(keep.tolist())}  # batch position -> row of `probs`
                tiles = [grid.tiles[index] for index in indices.tolist()]
                pipeline.put(tiles, probs, [slot.get(b) for b in range(len(tiles))], valid.numpy())
                for tile in tiles:
                    done_px += min(tile.size, grid.height - tile.row) * min(tile.size, grid.width - tile.col)
                bar.update(len(indices))
                bar.set_postfix_str(f"{done_px / 1e6 / max(time.perf_counter() - start, 1e-9):.2f} MP/s")
            pipeline.finish()
    finally:
        pipeline.close()  # before anything else: the rasters the sink writes are closed by our caller next
        # Workers go now, not when the iterator is collected: an error's traceback can keep it alive until exit.
        getattr(batches, "_shutdown_workers", lambda: None)()
        bar.close()
        close = getattr(dataset, "close", None)
        if close is not None:
            close()
    return pipeline.num_classes, nonfinite_total


def _summary(
    scene, grid, stats: _Stats, names, seconds, out_path, probs_path, polygons_path, n_polygons
) -> dict:
    """What was predicted, in the task's words: areas per class; for a before/after pair, the changed area."""
    counts = {c: int(n) for c, n in enumerate(stats.counts[:NODATA]) if n}
    valid = int(stats.counts[:NODATA].sum())
    notes = list(scene.notes)
    if stats.nonfinite:
        notes.append(
            f"{stats.nonfinite} input pixels hold NaN or Inf with no nodata tag: they are nodata (255) in the output"
        )
        warnings.warn(notes[-1], stacklevel=3)
    if valid == 0:
        warnings.warn(
            "no valid pixel in the input (all nodata, or the dates' masks never overlap): the output is all "
            "nodata; check the inputs or pass --nodata",
            stacklevel=3,
        )
    px_area = pixel_area_m2(scene.crs, scene.transform, scene.height, scene.width)
    summary = {
        "out": str(out_path),
        "probs": None if probs_path is None else str(probs_path),
        "polygons": None if polygons_path is None else str(polygons_path),
        "height": scene.height,
        "width": scene.width,
        "window": grid.size,
        "windows": len(grid),
        "num_classes": len(names),
        "classes": names,
        "valid_pixels": valid,
        "nodata_pixels": scene.height * scene.width - valid,
        "nonfinite_input_pixels": stats.nonfinite,
        "pixels_per_class": counts,
        "pixel_area_m2": px_area,
        "area_m2_per_class": {names[c] if c < len(names) else str(c): n * px_area for c, n in counts.items()},
        "percent_per_class": {
            names[c] if c < len(names) else str(c): 100.0 * n / valid for c, n in counts.items()
        },
    }
    if len(scene.sources) == 2:  # a before/after pair: class 0 is "unchanged"
        changed = valid - int(stats.counts[0])
        summary.update(
            changed_pixels=changed,
            changed_area_m2=changed * px_area,
            changed_percent=100.0 * changed / valid if valid else 0.0,
        )
    summary.update(
        num_polygons=n_polygons,
        stretch=scene.stretch,
        seconds=seconds,
        megapixels_per_second=scene.height * scene.width / 1e6 / max(seconds, 1e-9),
        notes=notes,
    )
    return summary
