"""The page of `semiseg.view`: a Bokeh map of the tile pyramid, its controls and its legend, as one offline HTML file.

Bokeh draws and pans/zooms the map and loads the tiles in view (`TileRenderer` over a `TMSTileSource` set to the
scene's own coordinates, see `semiseg.geo.tiles`); its JavaScript is written inline (`bokeh.resources.INLINE`,
from the installed wheel), so the page needs no server and no network. The only script of ours is a few lines in
`CustomJS` callbacks: the layer switches and the polygon popup.

Controls: a date slider on two-date scenes (the later date's opacity over the earlier one: 0 shows the earlier
date, 1 the later, in between a blend), the class layer's opacity, switches for each layer, and a click on a
polygon opens a popup with its class, area and mean probability.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from semiseg.geo.tiles import TILE, Pyramid

MAP_HEIGHT = 720
SIDEBAR_WIDTH = 320
OUTLINE_COLOUR = "#00ffff"  # reference outlines (truth)


@dataclass
class PageLayer:
    """One tiled layer: its folder name under the view, file extension, title, whether it starts visible, and
    whether it is drawn with smoothing (photographs) or crisp pixels (classes)."""

    name: str
    ext: str
    title: str
    visible: bool = True
    smooth: bool = True
    alpha: float = 1.0


@dataclass
class PageContent:
    """Everything the page shows, already read from the files (no I/O here)."""

    title: str
    pyramid: Pyramid
    images: list[PageLayer]
    overlays: list[PageLayer]
    legend: list[tuple[str, str]]  # (label, CSS colour)
    facts: list[tuple[str, str]]  # (what, value) shown beside the map
    metre_units: bool  # whether a scale bar in metres is true for this CRS
    polygons: dict | None = (
        None  # Bokeh multi_polygons columns: xs, ys, id, class_name, area_m2, mean_prob, colour
    )
    outlines: dict | None = None  # Bokeh multi_line columns: xs, ys
    outline_title: str = "reference outlines"
    notes: list[str] = field(default_factory=list)


def tile_renderer(layer: PageLayer, pyramid: Pyramid):
    from bokeh.models import TileRenderer, TMSTileSource

    source = TMSTileSource(
        url=f"{layer.name}/{{Z}}/{{X}}/{{Y}}.{layer.ext}",
        tile_size=TILE,
        min_zoom=0,
        max_zoom=pyramid.max_level,
        initial_resolution=pyramid.initial_resolution,
        x_origin_offset=-pyramid.left,
        y_origin_offset=-pyramid.bottom_of_square,
        wrap_around=False,
        snap_to_zoom=False,
        attribution="",
    )
    return TileRenderer(
        tile_source=source, alpha=layer.alpha, smoothing=layer.smooth, visible=layer.visible, name=layer.name
    )


def build_page(content: PageContent) -> str:
    """The page as HTML text with Bokeh's JavaScript inline."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.resources import INLINE

    figure, controls = _map(content)
    sidebar = column(
        *controls, _legend(content), _facts(content), width=SIDEBAR_WIDTH, sizing_mode="stretch_height"
    )
    layout = row(figure, sidebar, sizing_mode="stretch_both")
    return file_html(layout, INLINE, title=content.title)


def _map(content: PageContent):
    from bokeh.models import ColumnDataSource, CustomJS, Div, Slider, TapTool, Tooltip
    from bokeh.plotting import figure

    p = content.pyramid
    right, bottom = p.left + p.width * p.pixel_size, p.top - p.height * p.pixel_size
    fig = figure(
        x_range=(p.left, right), y_range=(bottom, p.top), match_aspect=True, sizing_mode="stretch_both",
        min_height=MAP_HEIGHT // 2, tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom",
        title=content.title, name="map",
    )  # fmt: skip
    fig.axis.formatter.use_scientific = False
    fig.grid.visible = False
    scale_bar(fig, content.metre_units)
    renderers = {}
    for layer in content.images + content.overlays:
        renderers[layer.name] = tile_renderer(layer, p)
        fig.renderers.append(renderers[layer.name])
    controls = []
    if len(content.images) == 2:
        first, second = content.images
        slider = Slider(
            start=0, end=1, step=0.01, value=second.alpha, name="date",
            title=f"date: {first.title} (0) … {second.title} (1)",
        )  # fmt: skip
        slider.js_link("value", renderers[second.name], "alpha")
        controls.append(slider)
    for layer in content.overlays[:1]:
        slider = Slider(
            start=0, end=1, step=0.05, value=layer.alpha, name="opacity", title=f"{layer.title} opacity"
        )
        slider.js_link("value", renderers[layer.name], "alpha")
        controls.append(slider)
    if content.outlines is not None:
        renderers["outlines"] = fig.multi_line(
            "xs", "ys", source=ColumnDataSource(content.outlines), line_color=OUTLINE_COLOUR, line_width=1.5,
            name="outlines",
        )  # fmt: skip
    if content.polygons is not None:
        source = ColumnDataSource(content.polygons, name="polygon_source")
        polygons = fig.multi_polygons(
            "xs", "ys", source=source, fill_alpha=0.0, line_color="colour", line_width=1.5, name="polygons",
            selection_fill_alpha=0.25, selection_fill_color="yellow", nonselection_fill_alpha=0.0,
            nonselection_line_alpha=1.0,
        )  # fmt: skip
        renderers["polygons"] = polygons
        text = Div(text="", name="popup_text")
        popup = Tooltip(content=text, visible=False, closable=True, name="popup", interactive=True)
        fig.elements.append(popup)
        tap = TapTool(renderers=[polygons], behavior="select", mode="replace")
        tap.callback = CustomJS(args=dict(source=source, popup=popup, text=text), code=POPUP_JS)
        # a click beside every polygon clears the selection: the popup goes with it
        source.selected.js_on_change(
            "indices",
            CustomJS(args=dict(popup=popup), code="if (!cb_obj.indices.length) popup.visible = false;"),
        )
        fig.add_tools(tap)
        fig.toolbar.active_tap = tap
    controls.append(_switches(content, renderers))
    return fig, controls


# What a click on a polygon shows: the clicked polygon's attributes, at the click.
POPUP_JS = """
const i = source.selected.indices[0];
if (i === undefined) { popup.visible = false; return; }
const d = source.data;
const p = d.mean_prob[i];
text.text = `<b>${d.class_name[i]}</b> (polygon ${d.id[i]})<br>area ${d.area_m2[i].toFixed(1)} m²` +
  `<br>mean probability ${Number.isFinite(p) ? p.toFixed(3) : "not recorded"}`;
popup.position = [cb_data.geometries.sx, cb_data.geometries.sy];
popup.visible = true;
"""


def _switches(content: PageContent, renderers: Mapping[str, object]):
    from bokeh.models import CheckboxGroup, CustomJS

    names = [layer.name for layer in content.images + content.overlays]
    labels = [layer.title for layer in content.images + content.overlays]
    for extra, label in (("outlines", content.outline_title), ("polygons", "polygons (click for details)")):
        if extra in renderers:
            names.append(extra)
            labels.append(label)
    active = [i for i, name in enumerate(names) if getattr(renderers[name], "visible", True)]
    group = CheckboxGroup(labels=labels, active=active, name="layers")
    group.js_on_change(
        "active",
        CustomJS(
            args=dict(layers=[renderers[n] for n in names]),
            code="layers.forEach((layer, i) => { layer.visible = cb_obj.active.includes(i); });",
        ),
    )
    return group


def _legend(content: PageContent):
    from bokeh.models import Div

    rows = "".join(
        f'<div><span style="display:inline-block;width:14px;height:14px;margin-right:6px;vertical-align:middle;'
        f'background:{colour};border:1px solid #555"></span>{html.escape(label)}</div>'
        for label, colour in content.legend
    )
    if content.outlines is not None:
        rows += (
            f'<div><span style="display:inline-block;width:14px;height:14px;margin-right:6px;vertical-align:middle;'
            f'border:2px solid {OUTLINE_COLOUR}"></span>{html.escape(content.outline_title)}</div>'
        )
    return Div(text=f"<b>Legend</b>{rows}", name="legend")


def _facts(content: PageContent):
    from bokeh.models import Div

    items = "".join(
        f"<tr><td style='padding-right:8px;vertical-align:top'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in content.facts
    )
    notes = "".join(f"<p style='color:#844'>{html.escape(n)}</p>" for n in content.notes)
    return Div(
        text=f"<table style='font-size:12px'>{items}</table>{notes}", name="facts", width=SIDEBAR_WIDTH
    )


def scale_bar(fig, metre_units: bool) -> None:
    """A scale bar in metric units when the CRS's unit is the metre (a geographic CRS gets none: its units vary)."""
    from bokeh.models import Metric, ScaleBar

    if metre_units:
        fig.add_layout(
            ScaleBar(range=fig.x_range, unit="m", dimensional=Metric(base_unit="m"), location="bottom_left")
        )


def polygon_columns(geometries: Sequence, attributes: Mapping[str, Sequence]) -> dict:
    """Bokeh `multi_polygons` columns for shapely (multi)polygons: per feature, parts, rings, coordinates."""
    xs, ys = [], []
    for geom in geometries:
        parts = list(getattr(geom, "geoms", [geom]))
        fx, fy = [], []
        for part in parts:
            if part.geom_type != "Polygon":
                continue
            rings = [part.exterior, *part.interiors]
            fx.append([list(r.coords.xy[0]) for r in rings])
            fy.append([list(r.coords.xy[1]) for r in rings])
        xs.append(fx)
        ys.append(fy)
    return {"xs": xs, "ys": ys, **{k: list(v) for k, v in attributes.items()}}


def outline_columns(geometries: Sequence) -> dict:
    """Bokeh `multi_line` columns: every ring of every polygon as its own line."""
    xs, ys = [], []
    for geom in geometries:
        for part in getattr(geom, "geoms", [geom]):
            if part.geom_type != "Polygon":
                continue
            for ring in (part.exterior, *part.interiors):
                xs.append(list(ring.coords.xy[0]))
                ys.append(list(ring.coords.xy[1]))
    return {"xs": xs, "ys": ys}
