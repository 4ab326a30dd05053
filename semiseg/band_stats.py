"""Per-band input statistics measured from the data: what a model fed with other than RGB imagery needs.

A pretrained encoder expects inputs normalised as in its pretraining; for bands it never saw (near infrared,
short-wave infrared, SAR...) there is no such convention, so the mean and std of each band come from the
training data, measured after the same scaling to 0..1 the model will see:

- uint8 bands: value / 255;
- any other dtype: a linear stretch between robust limits (the 2nd and 98th percentiles of each band, pooled
  over every raster measured), then / 255. Those limits are written too, as a per-band `fixed:` stretch, so
  every scene is scaled the same way at training and prediction time (a per-scene stretch would give each scene
  its own scale, and a band's mean would mean nothing).

`raster_band_stats` measures GeoTIFFs from decimated reads (the same regular subsample the stretch uses);
`dataset_band_stats` measures what a config's training datasets return, on an evenly spaced subset of samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.errors import SemisegError

MIN_VALID_VALUES = 100  # fewer valid values than this in a band: its statistics would be noise


class BandAccumulator:
    """Running per-band sums of 0..1 values, in float64 (exact enough for billions of pixels)."""

    def __init__(self, bands: int) -> None:
        self.count = np.zeros(bands)
        self.total = np.zeros(bands)
        self.squares = np.zeros(bands)

    def add(self, band: int, values01: np.ndarray) -> None:
        values = values01.astype(np.float64, copy=False)
        self.count[band] += values.size
        self.total[band] += values.sum()
        self.squares[band] += np.square(values).sum()

    def result(self, what: str) -> tuple[list[float], list[float]]:
        if self.count.min() < MIN_VALID_VALUES:
            raise SemisegError(
                f"{what}: band {int(self.count.argmin()) + 1} has only {int(self.count.min())} valid values; "
                "measure more (or larger) images"
            )
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean**2, 0.0))
        if std.min() <= 0:
            raise SemisegError(
                f"{what}: band {int(std.argmin()) + 1} is constant (std 0): drop it with --bands"
            )
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def raster_band_stats(
    paths: Sequence[str | Path],
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    stretch: str | None = None,
) -> dict[str, Any]:
    """Per-band limits and mean/std of GeoTIFFs (see the module docstring). `bands`: 1-based, default all but
    alpha; `stretch`: a `fixed:` rule to use instead of measuring the limits."""
    import rasterio

    from semiseg.geo.pair import (
        apply_stretch,
        parse_stretch,
        percentile_limits,
        select_bands,
        stretch_samples,
    )

    if not paths:
        raise SemisegError("band-stats needs at least one raster (or --config for a training set)")
    samples: list[list[np.ndarray]] = []
    selected: tuple[int, ...] | None = None
    dtypes: set[str] = set()
    for path in paths:
        if not Path(path).is_file():
            raise SemisegError(f"input raster not found: {path}")
        with rasterio.open(path) as ds:
            chosen = select_bands(ds, bands)
            if selected is not None and len(chosen) != len(selected):
                raise SemisegError(
                    f"{path} gives {len(chosen)} bands, the first raster {len(selected)}: pass --bands"
                )
            selected = chosen
            dtypes |= {ds.dtypes[b - 1] for b in chosen}
            samples.append(stretch_samples(ds, chosen, nodata))
    assert selected is not None
    pooled = [np.concatenate(band) for band in zip(*samples)]
    rule = parse_stretch(stretch) if stretch else None
    if rule is not None and rule.mode != "fixed":
        raise SemisegError(
            f"band-stats measures its own limits; --stretch may only give fixed ones, not {rule}"
        )
    limits = None
    if rule is not None:  # given limits apply to any dtype, as in training
        limits = rule.fixed_limits(len(selected))
    elif dtypes != {"uint8"}:
        limits = percentile_limits(pooled)
    acc = BandAccumulator(len(selected))
    for i, values in enumerate(pooled):
        scaled = apply_stretch(values[None, None, :], None if limits is None else [limits[i]])[0, 0]
        acc.add(i, scaled / 255.0)
    mean, std = acc.result(f"{len(paths)} raster(s)")
    result: dict[str, Any] = {"bands": list(selected), "mean": mean, "std": std, "dtypes": sorted(dtypes)}
    if limits is not None:
        result["stretch"] = "fixed:" + ";".join(f"{lo:.6g},{hi:.6g}" for lo, hi in limits)
    result["values_per_band"] = int(acc.count.min())
    return result


def dataset_band_stats(datasets: Iterable[Any], max_samples: int = 200) -> dict[str, Any]:
    """Per-band mean/std of what training datasets return (raw reads, before augmentation), over at most
    `max_samples` evenly spaced samples of each; nodata pixels are left out."""
    acc: BandAccumulator | None = None
    measured = 0
    seen: set[str] = set()
    for dataset in datasets:
        if dataset is None or len(dataset) == 0:
            continue
        # Lists repeat (the labeled list is repeated to the epoch length): measure each distinct sample once.
        first: dict[str, int] = {}
        for index in range(len(dataset)):
            first.setdefault(dataset.name(index), index)
        distinct = [i for name, i in first.items() if name not in seen]
        seen.update(first)
        if not distinct:
            continue
        spaced = np.linspace(0, len(distinct) - 1, min(max_samples, len(distinct))).round().astype(int)
        for index in (distinct[k] for k in np.unique(spaced)):
            images, _, valid = dataset.read(int(index))
            for image in images:
                acc = acc or BandAccumulator(image.shape[-1])
                if image.shape[-1] != len(acc.count):
                    raise SemisegError("the training images do not all have the same number of bands")
                keep = np.ones(image.shape[:2], bool) if valid is None else valid
                for band in range(image.shape[-1]):
                    acc.add(band, image[..., band][keep] / 255.0)
            measured += 1
    if acc is None:
        raise SemisegError("the config's training sets hold no images to measure")
    mean, std = acc.result("the training set")
    return {"mean": mean, "std": std, "samples": measured, "values_per_band": int(acc.count.min())}


def stats_config(stats: dict[str, Any], base: str | None) -> dict[str, Any]:
    """A config holding the measured statistics (and bands, stretch), on top of `base` when given: train with
    it directly, it keeps everything else of the base."""
    data = {k: stats[k] for k in ("bands", "stretch", "mean", "std") if k in stats}
    return ({"base": base} if base else {}) | {"data": data}
