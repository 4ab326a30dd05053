"""The page of `semiseg.view`: a Bokeh map of the tile pyramid, its controls and its legend, as one offline HTML file.

Bokeh draws and pans/zooms the map and loads the tiles in view (`TileRenderer` over a `TMSTileSource` set to the
scene's own coordinates, see `semiseg.geo.tiles`); its JavaScript is written inline (`bokeh.resources.INLINE`,
from the installed wheel), so the page needs no server and no network. The only script of ours is a few lines in
`CustomJS` callbacks: the layer switches, the layout switch and the polygon popup.

Controls: on two-date scenes a layout switch (one map with a date slider, the later date's opacity over the
earlier one: 0 shows the earlier date, 1 the later, in between a blend; or side by side, the earlier date on the
left map and the later on the right, both maps sharing one pair of ranges so they pan and zoom together), the
class layer's opacity (on both maps), switches for each layer, and a click on a polygon opens a popup with its
class, area and mean probability.
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


def tile_renderer(layer: PageLayer, pyramid: Pyramid, suffix: str = ""):
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
        tile_source=source,
        alpha=layer.alpha,
        smoothing=layer.smooth,
        visible=layer.visible,
        name=layer.name + suffix,
    )


def build_page(content: PageContent) -> str:
    """The page as HTML text with Bokeh's JavaScript inline."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.resources import INLINE

    maps, controls = _maps(content)
    sidebar = column(
        *controls, _legend(content), _facts(content), width=SIDEBAR_WIDTH, sizing_mode="stretch_height"
    )
    layout = row(*maps, sidebar, sizing_mode="stretch_both")
    return file_html(layout, INLINE, title=content.title)


def _figure(content: PageContent, name: str, title: str, x_range=None, y_range=None):
    """One map of the scene; a second map is given the first one's ranges, so panning or zooming either moves
    both (Bokeh's linked ranges)."""
    from bokeh.plotting import figure

    p = content.pyramid
    right, bottom = p.left + p.width * p.pixel_size, p.top - p.height * p.pixel_size
    fig = figure(
        x_range=x_range or (p.left, right), y_range=y_range or (bottom, p.top), match_aspect=True,
        sizing_mode="stretch_both", min_height=MAP_HEIGHT // 2, tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom", title=title, name=name,
    )  # fmt: skip
    fig.axis.formatter.use_scientific = False
    fig.grid.visible = False
    scale_bar(fig, content.metre_units)
    return fig


def _maps(content: PageContent):
    """The map (every layer; on two dates a slider fades the later date over the earlier one) and, on two dates,
    a second map for the side-by-side layout: the earlier date on the left map, the later on the right, the
    overlays on both. A switch chooses the layout; the right map starts hidden."""
    from bokeh.models import ColumnDataSource, CustomJS, RadioButtonGroup, Slider

    two_dates = len(content.images) == 2
    left = _figure(content, "map", content.title)
    figures = [left]
    if two_dates:
        first, second = content.images
        right = _figure(content, "map_right", second.title, x_range=left.x_range, y_range=left.y_range)
        right.visible = False
        figures.append(right)
    # per layer (in the switches' order): its renderers on the left map and on the right map
    on_left: dict[str, list] = {}
    on_right: dict[str, list] = {}
    for layer in content.images + content.overlays:
        on_left[layer.name] = [tile_renderer(layer, content.pyramid)]
        left.renderers.append(on_left[layer.name][0])
        on_right[layer.name] = []
        if two_dates and layer is not first:
            twin = tile_renderer(layer, content.pyramid, suffix="_right")
            twin.visible = False
            right.renderers.append(twin)
            on_right[layer.name].append(twin)
    controls = []
    layout = date = None
    if two_dates:
        layout = RadioButtonGroup(
            labels=["one map, date slider", f"side by side: {first.title} | {second.title}"], active=0,
            name="layout",
        )  # fmt: skip
        date = Slider(
            start=0, end=1, step=0.01, value=second.alpha, name="date",
            title=f"date: {first.title} (0) … {second.title} (1)",
        )  # fmt: skip
        date.js_link("value", on_left[second.name][0], "alpha")
        controls += [layout, date]
    for layer in content.overlays[:1]:
        opacity = Slider(
            start=0, end=1, step=0.05, value=layer.alpha, name="opacity", title=f"{layer.title} opacity"
        )
        for renderer in on_left[layer.name] + on_right[layer.name]:
            opacity.js_link("value", renderer, "alpha")
        controls.append(opacity)
    popups = []
    # one data source per vector layer, drawn on both maps: the page carries the coordinates once, and a polygon
    # selected on one map is highlighted on the other
    outline_source = ColumnDataSource(content.outlines) if content.outlines is not None else None
    polygon_source = (
        ColumnDataSource(content.polygons, name="polygon_source") if content.polygons is not None else None
    )
    for fig in figures:
        suffix = "" if fig is left else "_right"
        if content.outlines is not None:
            outlines = _outlines(fig, outline_source, suffix)
            (on_left if fig is left else on_right).setdefault("outlines", []).append(outlines)
        if content.polygons is not None:
            polygons, popup = _polygons(fig, polygon_source, suffix)
            (on_left if fig is left else on_right).setdefault("polygons", []).append(polygons)
            popups.append(popup)
    for popup in popups:  # a click on one map's polygon closes the other map's popup
        popup.tags = [p for p in popups if p is not popup]
    names = list(on_left)
    group = _switches(content, names)
    show = CustomJS(
        args=dict(
            group=group, layout=layout, date=date, right=figures[-1] if two_dates else None,
            left_title=left.title, titles=[content.title, first.title if two_dates else ""],
            on_left=[on_left[n] for n in names], on_right=[on_right[n] for n in names],
            faded=on_left[second.name][0] if two_dates else None, popups=popups,
        ),
        code=SHOW_JS,
    )  # fmt: skip
    group.js_on_change("active", show)
    if layout is not None:
        layout.js_on_change("active", show)
    controls.append(group)
    return figures, controls


# Which renderers are drawn: a layer's switch, and the layout (side by side: the later date only on the right map,
# where every overlay is drawn too, the date slider off; a change of layout closes the popups).
SHOW_JS = """
const side = layout !== null && layout.active === 1;
const on = (i) => group.active.includes(i);
on_left.forEach((rs, i) => rs.forEach((r) => { r.visible = on(i) && !(side && r === faded); }));
on_right.forEach((rs, i) => rs.forEach((r) => { r.visible = on(i) && side; }));
if (layout !== null) {
  right.visible = side;
  date.disabled = side;
  left_title.text = titles[side ? 1 : 0];
  if (cb_obj === layout) popups.forEach((p) => { p.visible = false; });  // a popup stays on the map it was opened
}
"""


def _outlines(fig, source, suffix: str):
    return fig.multi_line(
        "xs", "ys", source=source, line_color=OUTLINE_COLOUR, line_width=1.5,
        name=f"outlines{suffix}", visible=not suffix,
    )  # fmt: skip


def _polygons(fig, source, suffix: str):
    """The polygons on `fig` with a click popup (the popups of the other maps are the popup's `tags`)."""
    from bokeh.models import CustomJS, Div, TapTool, Tooltip

    polygons = fig.multi_polygons(
        "xs", "ys", source=source, fill_alpha=0.0, line_color="colour", line_width=1.5, name=f"polygons{suffix}",
        selection_fill_alpha=0.25, selection_fill_color="yellow", nonselection_fill_alpha=0.0,
        nonselection_line_alpha=1.0, visible=not suffix,
    )  # fmt: skip
    text = Div(text="", name=f"popup_text{suffix}")
    popup = Tooltip(content=text, visible=False, closable=True, name=f"popup{suffix}", interactive=True)
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
    return polygons, popup


# What a click on a polygon shows: the clicked polygon's attributes, at the click.
POPUP_JS = """
popup.tags.forEach((other) => { other.visible = false; });
const i = source.selected.indices[0];
if (i === undefined) { popup.visible = false; return; }
const d = source.data;
const p = d.mean_prob[i];
text.text = `<b>${d.class_name[i]}</b> (polygon ${d.id[i]})<br>area ${d.area_m2[i].toFixed(1)} m²` +
  `<br>mean probability ${Number.isFinite(p) ? p.toFixed(3) : "not recorded"}`;
popup.position = [cb_data.geometries.sx, cb_data.geometries.sy];
popup.visible = true;
"""


def _switches(content: PageContent, names: Sequence[str]):
    """One switch per layer, in `names`' order (tiled layers, then outlines and polygons)."""
    from bokeh.models import CheckboxGroup

    titles = {layer.name: layer.title for layer in content.images + content.overlays}
    titles.update(outlines=content.outline_title, polygons="polygons (click for details)")
    visible = {layer.name: layer.visible for layer in content.images + content.overlays}
    active = [i for i, name in enumerate(names) if visible.get(name, True)]
    return CheckboxGroup(labels=[titles[n] for n in names], active=active, name="layers")


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
