"""Change-detection data: A/B/label tiles, GeoTIFF-pair windows, dataset preparation and SemiCD splits.

Every dataset here returns the sample of `semiseg.data.sample` with `images = (before, after)`.
"""

from semiseg.data.lists import read_name_list

from .geotiff_pair import (
    GeoTiffPairDataset,
    assign_windows,
    build_geotiff_pair_datasets,
    check_raster_pair,
    valid_fractions,
    window_grid,
)
from .prepare import prepare_levir, prepare_whu
from .splits import semicd_splits, write_semicd_splits
from .tiles import CD_GEOMETRY, ChangeTileDataset, build_change_tile_datasets, cd_geometry, check_tiles

__all__ = [
    "CD_GEOMETRY",
    "ChangeTileDataset",
    "GeoTiffPairDataset",
    "assign_windows",
    "build_change_tile_datasets",
    "build_geotiff_pair_datasets",
    "cd_geometry",
    "check_raster_pair",
    "check_tiles",
    "prepare_levir",
    "prepare_whu",
    "read_name_list",
    "semicd_splits",
    "valid_fractions",
    "window_grid",
    "write_semicd_splits",
]
