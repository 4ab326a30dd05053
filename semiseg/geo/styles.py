"""How GIS software should show our outputs: QGIS styles (`.qml`) and GDAL raster attribute tables (`.aux.xml`).

Why sidecars: a GeoTIFF colour table has no alpha in the file format, so GDAL and QGIS read class 0 of a change map
("unchanged") back as opaque black and the whole scene turns black. QGIS loads `<name>.qml` next to a raster or
vector file automatically as its style, and a GeoPackage layer's default style from its `layer_styles` table; with
them "unchanged" is transparent, "changed" red, and every class carries its name. GDAL reads `<file>.aux.xml`
(its "PAM" sidecar) for the band's category names and raster attribute table, so `gdalinfo`, QGIS's
identify tool and anything built on GDAL show class names instead of numbers.
Everything is plain XML built with the standard library.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

QGIS_VERSION = "3.28.0"  # the oldest long-term release these styles were written against
RGBA = tuple[int, int, int, int]


def _document(root: ET.Element) -> str:
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )


def _hex(rgba: RGBA) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def class_raster_qml(colours: Mapping[int, RGBA], names: Sequence[str]) -> str:
    """A paletted style for a class raster: each class its colour, alpha and name (255, nodata, is left out)."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, rgba in sorted(colours.items()):
        if value < len(names):
            ET.SubElement(
                palette,
                "paletteEntry",
                value=str(value),
                color=_hex(rgba),
                alpha=str(rgba[3]),
                label=names[value],
            )
    ET.SubElement(root, "blendMode").text = "0"
    return _document(root)


def polygons_qml(colours: Mapping[int, RGBA], names: Sequence[str], field: str = "class_name") -> str:
    """A categorised style for polygons: a half-transparent fill and a solid outline in each class's colour."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (value, rgba) in enumerate(sorted((v, c) for v, c in colours.items() if v < len(names))):
        ET.SubElement(
            categories, "category", value=names[value], symbol=str(i), label=names[value], render="true"
        )
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(i), alpha="1", clip_to_extent="1")
        layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
        )
        options = ET.SubElement(layer, "Option", type="Map")
        r, g, b = rgba[:3]
        for key, value in (
            ("color", f"{r},{g},{b},90"),
            ("outline_color", f"{r},{g},{b},255"),
            ("outline_width", "0.4"),
            ("outline_width_unit", "MM"),
            ("style", "solid"),
            ("outline_style", "solid"),
        ):
            ET.SubElement(options, "Option", name=key, value=value, type="QString")
    return _document(root)


def attribute_table_xml(names: Sequence[str], colours: Mapping[int, RGBA], description: str) -> str:
    """A GDAL PAM document for band 1: its description, category names and a thematic raster attribute table."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = description
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL's field types: 0 integer, 2 string; usages: 5 min-max (the value), 2 name, 6-9 red/green/blue/alpha
    fields = [
        ("Value", 0, 5),
        ("Class", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
        ("Alpha", 0, 9),
    ]
    for i, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(table, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for value, name in enumerate(names):
        row = ET.SubElement(table, "Row", index=str(value))
        for item in (value, name, *colours.get(value, (0, 0, 0, 255))):
            ET.SubElement(row, "F").text = str(item)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def add_gpkg_style(path: str | Path, layer: str, qml: str, name: str = "semicd") -> None:
    """Store `qml` as the default QGIS style of `layer` in a GeoPackage (the `layer_styles` table QGIS reads).

    The table is created the way QGIS creates it itself. GDAL lists it as a second (attribute-only) layer, so
    readers should name the polygon layer (geopandas: `layer=`; `semiseg.geo.vectors.feature_layer` finds it).
    """
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
            "f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), "
            "styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), "
            "update_time DATETIME DEFAULT CURRENT_TIMESTAMP)"
        )
        row = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
            "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '')",
            (layer, row[0] if row else "geom", name, qml, "written by semicd/semiseg predict"),
        )
    db.close()
