"""A synthetic, georeferenced before/after scene with known change: the demo's data, made on the spot.

Why synthetic: the demo must run with no download and must be scored against a truth that is exactly right.
Why not trivial: pixel differencing must fail. Between the dates the whole scene gets a different gain and
offset per band (another sensor / sun), vegetation turns a more autumnal tint, a share of the fields changes
crop state (green -> ploughed, stubble -> green), and every pixel gets fresh noise. None of that is change. The
change is what an annotator of LEVIR-CD or WHU-CD would mark: new buildings (rectangular roofs with a gable
ridge or a flat roof, casting a shadow) and new road segments, most of them grouped into new developments
branching off the existing roads, some as infill along them.

The scene is described once as a list of objects (`SceneLayout`), then rendered block by block, so a large
scene never sits in memory and the pixels do not depend on how the caller slices the raster: every random
per-pixel term is drawn from a generator keyed by (seed, date, block row, block col) on a fixed block grid.
Scale: 0.5 m pixels in a UTM zone (EPSG:32631), so buildings are 8-24 m (16-48 px) and roads 5-7 m wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from semiseg.errors import SemisegError

CRS = "EPSG:32631"
PIXEL_M = 0.5
ORIGIN_XY = (430000.0, 5400000.0)  # upper-left corner, metres (UTM 31N, northern France)
BLOCK = 256  # render / write block; per-pixel noise is keyed on this grid, so it must stay fixed
MIN_SIZE = 64
SUN = (
    0.55,
    0.45,
)  # shadow offset per pixel of building height (sun in the north-west: shadows fall south-east)

# Ground cover colours (RGB) by crop state; a field's state may change between the dates.
FIELD_STATES = {
    "green": (78, 118, 52),
    "young": (112, 140, 70),
    "stubble": (176, 160, 104),
    "ploughed": (118, 92, 70),
    "meadow": (96, 128, 66),
}
ROOF_COLOURS = (
    (168, 74, 56),  # terracotta tiles
    (150, 62, 48),
    (92, 92, 98),  # slate
    (70, 72, 80),
    (196, 196, 190),  # light flat roof
    (150, 150, 146),
    (86, 110, 140),  # blue-grey steel
)
ASPHALT = (104, 104, 108)
FRESH_ASPHALT = (72, 72, 76)


@dataclass(frozen=True)
class Field:
    x0: int
    y0: int
    x1: int
    y1: int
    state_before: str
    state_after: str
    stripe_period: float
    stripe_angle: float


@dataclass(frozen=True)
class Road:
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    new: bool

    def bbox(self) -> tuple[float, float, float, float]:
        r = self.width / 2 + 1
        return (
            min(self.x0, self.x1) - r,
            min(self.y0, self.y1) - r,
            max(self.x0, self.x1) + r,
            max(self.y0, self.y1) + r,
        )


@dataclass(frozen=True)
class Building:
    cx: float
    cy: float
    length: float  # along `angle`
    depth: float
    angle: float  # radians
    roof: tuple[int, int, int]
    gable: bool
    height: float  # px, drives the shadow length
    new: bool

    def corners(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = np.array([c, s]) * self.length / 2
        v = np.array([-s, c]) * self.depth / 2
        centre = np.array([self.cx, self.cy])
        return np.stack([centre - u - v, centre + u - v, centre + u + v, centre - u + v])

    def bbox(self, with_shadow: bool = True) -> tuple[float, float, float, float]:
        pts = self.corners()
        if with_shadow:
            pts = np.concatenate([pts, pts + np.array(SUN) * self.height])
        return (pts[:, 0].min() - 1, pts[:, 1].min() - 1, pts[:, 0].max() + 1, pts[:, 1].max() + 1)


@dataclass(frozen=True)
class Tree:
    cx: float
    cy: float
    radius: float


@dataclass
class SceneLayout:
    """Everything that defines a scene; `render_block` turns it into pixels."""

    size: int
    seed: int
    fields: list[Field] = field(default_factory=list)
    roads: list[Road] = field(default_factory=list)
    buildings: list[Building] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)
    illumination: np.ndarray | None = None  # coarse grid of brightness factors (low-frequency shading)
    gain: tuple[np.ndarray, np.ndarray] = (np.ones(3), np.ones(3))  # per date, per band
    offset: tuple[np.ndarray, np.ndarray] = (np.zeros(3), np.zeros(3))

    @property
    def new_buildings(self) -> list[Building]:
        return [b for b in self.buildings if b.new]


@dataclass(frozen=True)
class SceneFiles:
    before: Path
    after: Path
    truth: Path
    size: int
    changed_fraction: float
    new_buildings: int
    new_roads: int


# ----------------------------------------------------------------------------------------------------------
# Layout


def _split_fields(rng: np.random.Generator, size: int) -> list[tuple[int, int, int, int]]:
    """Recursive splits of the scene into rectangular parcels of about 60-260 px (30-130 m) a side."""
    out, stack = [], [(0, 0, size, size)]
    while stack:
        x0, y0, x1, y1 = stack.pop()
        w, h = x1 - x0, y1 - y0
        limit = rng.uniform(120, 260)
        if max(w, h) <= limit:
            out.append((x0, y0, x1, y1))
            continue
        if w >= h:
            cut = int(x0 + w * rng.uniform(0.35, 0.65))
            stack += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
        else:
            cut = int(y0 + h * rng.uniform(0.35, 0.65))
            stack += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    return out


def _make_fields(rng: np.random.Generator, size: int) -> list[Field]:
    states = list(FIELD_STATES)
    fields = []
    for x0, y0, x1, y1 in _split_fields(rng, size):
        before = states[int(rng.integers(len(states)))]
        after = before if rng.random() < 0.7 else states[int(rng.integers(len(states)))]
        fields.append(
            Field(
                x0,
                y0,
                x1,
                y1,
                before,
                after,
                float(rng.uniform(5, 12)),
                float(rng.choice([0, math.pi / 2]) + rng.normal(0, 0.05)),
            )
        )
    return fields


def _make_roads(rng: np.random.Generator, size: int) -> list[Road]:
    """Straight through-roads, roughly one per 600 px in each direction, at least one each way."""
    roads = []
    n = max(1, round(size / 600))
    for axis in (0, 1):
        positions = (np.arange(n) + rng.uniform(0.25, 0.75, n)) * size / n
        for p in positions:
            tilt = rng.normal(0, 0.04) * size
            width = float(rng.uniform(10, 14))
            if axis == 0:
                roads.append(Road(-20, p, size + 20, p + tilt, width, False))
            else:
                roads.append(Road(p, -20, p + tilt, size + 20, width, False))
    return roads


def _seg_distance(px: np.ndarray, py: np.ndarray, road: Road) -> np.ndarray:
    dx, dy = road.x1 - road.x0, road.y1 - road.y0
    t = np.clip(((px - road.x0) * dx + (py - road.y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(px - (road.x0 + t * dx), py - (road.y0 + t * dy))


class _Occupancy:
    """Axis-aligned boxes already taken (roads are checked by distance), to keep objects from overlapping."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.boxes: list[tuple[float, float, float, float]] = []

    def free(self, box: tuple[float, float, float, float], roads: list[Road], margin: float) -> bool:
        x0, y0, x1, y1 = box
        if x0 < 2 or y0 < 2 or x1 > self.size - 2 or y1 > self.size - 2:
            return False
        for a0, b0, a1, b1 in self.boxes:
            if x0 < a1 + margin and a0 < x1 + margin and y0 < b1 + margin and b0 < y1 + margin:
                return False
        xs = np.array([x0, x1, x0, x1, (x0 + x1) / 2, x0, x1, (x0 + x1) / 2, (x0 + x1) / 2])
        ys = np.array([y0, y0, y1, y1, (y0 + y1) / 2, (y0 + y1) / 2, (y0 + y1) / 2, y0, y1])
        for road in roads:
            if (_seg_distance(xs, ys, road) < road.width / 2 + margin).any():
                return False
        return True


def _building_along(rng: np.random.Generator, road: Road, t: float, side: int, new: bool) -> Building:
    """A building beside `road` at fraction `t` of its length, facing it, with a random footprint and roof."""
    dx, dy = road.x1 - road.x0, road.y1 - road.y0
    norm = math.hypot(dx, dy)
    ux, uy = dx / norm, dy / norm
    if rng.random() < 0.15:  # sheds and warehouses
        length, depth = float(rng.uniform(50, 90)), float(rng.uniform(30, 48))
    else:
        length, depth = float(rng.uniform(20, 48)), float(rng.uniform(16, 30))
    setback = road.width / 2 + float(rng.uniform(6, 22)) + depth / 2
    cx = road.x0 + t * dx - side * uy * setback
    cy = road.y0 + t * dy + side * ux * setback
    angle = math.atan2(dy, dx) + float(rng.normal(0, 0.04))
    roof = ROOF_COLOURS[int(rng.integers(len(ROOF_COLOURS)))]
    return Building(
        cx, cy, length, depth, angle, roof, bool(rng.random() < 0.6), float(rng.uniform(8, 18)), new
    )


def _place_along(
    rng: np.random.Generator,
    road: Road,
    occupancy: _Occupancy,
    roads: list[Road],
    count: int,
    new: bool,
    span: tuple[float, float] = (0.0, 1.0),
) -> list[Building]:
    placed: list[Building] = []
    for _ in range(count * 6):
        if len(placed) >= count:
            break
        b = _building_along(rng, road, float(rng.uniform(*span)), int(rng.choice([-1, 1])), new)
        box = b.bbox(with_shadow=False)
        if occupancy.free(box, roads, margin=4):
            occupancy.boxes.append(box)
            placed.append(b)
    return placed


def _new_branch(rng: np.random.Generator, roads: list[Road], size: int) -> Road | None:
    """A new access road leaving an existing road at a right angle, 120-420 px long, kept inside the scene."""
    for _ in range(20):
        base = roads[int(rng.integers(len(roads)))]
        t = float(rng.uniform(0.1, 0.9))
        dx, dy = base.x1 - base.x0, base.y1 - base.y0
        norm = math.hypot(dx, dy)
        side = int(rng.choice([-1, 1]))
        nx, ny = -side * dy / norm, side * dx / norm
        x0, y0 = base.x0 + t * dx, base.y0 + t * dy
        length = float(rng.uniform(120, 420)) * min(1.0, size / 1024)
        x1, y1 = x0 + nx * length, y0 + ny * length
        if 20 < x1 < size - 20 and 20 < y1 < size - 20:
            start = base.width / 2 - 1
            return Road(x0 + nx * start, y0 + ny * start, x1, y1, float(rng.uniform(8, 11)), True)
    return None


def make_layout(size: int = 2048, seed: int = 0) -> SceneLayout:
    """The objects of a scene: deterministic in (size, seed)."""
    if size < MIN_SIZE:
        raise SemisegError(f"scene size {size} px is too small: use at least {MIN_SIZE}")
    rng = np.random.default_rng([seed, 20240])
    area = (size / 1024) ** 2  # building counts scale with the area
    layout = SceneLayout(size=size, seed=seed)
    layout.fields = _make_fields(rng, size)
    layout.roads = _make_roads(rng, size)
    occupancy = _Occupancy(size)
    old_roads = list(layout.roads)
    # New developments are planned first (the land was empty before): branch roads off the existing ones.
    branches: list[Road] = []
    for _ in range(max(1, round(7 * area))):
        branch = _new_branch(rng, old_roads, size)
        if branch is not None and _apart(branch, branches, 80):
            branches.append(branch)
    layout.roads += branches
    per_road = max(2, round(24 * math.sqrt(area)))
    for road in old_roads:
        layout.buildings += _place_along(rng, road, occupancy, layout.roads, per_road, new=False)
    for branch in branches:
        count = max(3, round(_length(branch) / 26))
        layout.buildings += _place_along(
            rng, branch, occupancy, layout.roads, count, new=True, span=(0.08, 0.97)
        )
    # Infill: single new buildings along the old roads.
    for road in old_roads:
        layout.buildings += _place_along(
            rng, road, occupancy, layout.roads, max(1, round(6 * math.sqrt(area))), new=True
        )
    layout.trees = _make_trees(rng, size, occupancy, layout.roads, count=round(260 * area))
    grid = size // 64 + 2
    layout.illumination = 1.0 + rng.normal(0, 0.05, (grid, grid))
    layout.gain = (np.ones(3), rng.uniform(0.8, 1.2, 3) * rng.uniform(0.85, 1.15))
    layout.offset = (np.zeros(3), rng.uniform(-18, 18, 3))
    return layout


def _length(road: Road) -> float:
    return math.hypot(road.x1 - road.x0, road.y1 - road.y0)


def _apart(road: Road, others: list[Road], distance: float) -> bool:
    """True when no point of `road` comes within `distance` px of any road in `others`."""
    t = np.linspace(0, 1, 12)
    xs, ys = road.x0 + t * (road.x1 - road.x0), road.y0 + t * (road.y1 - road.y0)
    return all((_seg_distance(xs, ys, other) >= distance).all() for other in others)


def _make_trees(
    rng: np.random.Generator, size: int, occupancy: _Occupancy, roads: list[Road], count: int
) -> list[Tree]:
    trees = []
    for _ in range(count * 3):
        if len(trees) >= count:
            break
        r = float(rng.uniform(4, 11))
        x, y = rng.uniform(0, size, 2)
        if occupancy.free((x - r, y - r, x + r, y + r), roads, margin=2):
            trees.append(Tree(float(x), float(y), r))
    return trees


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _block_rng(layout: SceneLayout, date: int, row: int, col: int) -> np.random.Generator:
    return np.random.default_rng([layout.seed, date, row // BLOCK, col // BLOCK, 77])


def _bilinear(grid: np.ndarray, px: np.ndarray, py: np.ndarray, cell: float) -> np.ndarray:
    gx, gy = px / cell, py / cell
    ix, iy = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = gx - ix, gy - iy
    g = grid
    return (
        g[iy, ix] * (1 - fx) * (1 - fy)
        + g[iy, ix + 1] * fx * (1 - fy)
        + g[iy + 1, ix] * (1 - fx) * fy
        + g[iy + 1, ix + 1] * fx * fy
    )


def _inside_building(b: Building, px: np.ndarray, py: np.ndarray, dx: float = 0, dy: float = 0):
    """(inside mask, coordinate across the ridge, distance to the nearest edge) for the footprint shifted by dx, dy."""
    c, s = math.cos(b.angle), math.sin(b.angle)
    rx, ry = px - b.cx - dx, py - b.cy - dy
    u = rx * c + ry * s
    v = -rx * s + ry * c
    edge = np.minimum(b.length / 2 - np.abs(u), b.depth / 2 - np.abs(v))
    return edge > 0, v, edge


def _local(box: tuple[float, float, float, float], x0: int, y0: int, x1: int, y1: int):
    """Slices of the block covered by the scene-pixel box, or None when they do not meet."""
    c0, r0 = max(int(math.floor(box[0])), x0), max(int(math.floor(box[1])), y0)
    c1, r1 = min(int(math.ceil(box[2])), x1), min(int(math.ceil(box[3])), y1)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0)


def _paint_fields(layout, date, img, veg, px, py, noise, bounds) -> None:
    for f in layout.fields:
        sl = _local((f.x0, f.y0, f.x1, f.y1), *bounds)
        if sl is None:
            continue
        phase = (px[sl] * math.cos(f.stripe_angle) + py[sl] * math.sin(f.stripe_angle)) / f.stripe_period
        state = f.state_after if date else f.state_before
        amp = 6 if state in ("meadow", "green") else 12
        img[sl] = (
            np.array(FIELD_STATES[state], float)
            + (amp * np.sin(2 * math.pi * phase) + 5 * noise[sl])[..., None]
        )
        veg[sl] = 1.0 if state in ("green", "young", "meadow") else 0.3


def _paint_roads(layout, date, img, veg, px, py, noise, bounds) -> np.ndarray:
    """Paint the roads of `date`; returns where a new road covers what was not road before."""
    old_road = np.zeros(veg.shape, bool)
    new_road = np.zeros(veg.shape, bool)
    for road in layout.roads:
        sl = None if (road.new and not date) else _local(road.bbox(), *bounds)
        if sl is None:
            continue
        d = _seg_distance(px[sl], py[sl], road)
        on = d < road.width / 2
        colour = np.array(FRESH_ASPHALT if road.new else ASPHALT, dtype=np.float64)
        part = img[sl]
        part[on] = colour + 3 * noise[sl][on, None]
        part[on & (d > road.width / 2 - 1.5)] = colour + 40  # bright kerb lines
        veg[sl][on] = 0
        (new_road if road.new else old_road)[sl] |= on
    return new_road & ~old_road


def _paint_buildings(layout, date, img, veg, px, py, noise, bounds) -> np.ndarray:
    """Shadows, then roofs (so roofs cover shadows); returns the footprints of new buildings."""
    changed = np.zeros(veg.shape, bool)
    buildings = [b for b in layout.buildings if date or not b.new]
    for b in buildings:
        sl = _local(b.bbox(), *bounds)
        if sl is None:
            continue
        shadow = np.zeros(veg[sl].shape, bool)
        steps = 6
        for k in range(1, steps + 1):
            shift = b.height * k / steps
            shadow |= _inside_building(b, px[sl], py[sl], SUN[0] * shift, SUN[1] * shift)[0]
        img[sl][shadow] *= 0.5
        veg[sl][shadow] *= 0.5
    for b in buildings:
        sl = _local(b.bbox(with_shadow=False), *bounds)
        if sl is None:
            continue
        inside, v, edge = _inside_building(b, px[sl], py[sl])
        roof = np.array(b.roof, dtype=np.float64)
        shade = np.where(v < 0, 1.12, 0.82) if b.gable else np.ones_like(v)
        shade = np.where(edge < 1.5, 0.75, shade)  # dark eaves outline
        pixels = roof * shade[..., None] + 3 * noise[sl][..., None]
        img[sl][inside] = pixels[inside]
        veg[sl][inside] = 0
        if b.new:
            changed[sl] |= inside
    return changed


def _paint_trees(layout, img, veg, px, py, noise, bounds) -> None:
    for t in layout.trees:
        r = t.radius
        sl = _local((t.cx - r - 2, t.cy - r - 2, t.cx + 1.6 * r + 2, t.cy + 1.5 * r + 2), *bounds)
        if sl is None:
            continue
        d = np.hypot(px[sl] - t.cx, py[sl] - t.cy)
        crown = d < r * (1 + 0.12 * noise[sl])
        shadow = (np.hypot(px[sl] - t.cx - 0.5 * r, py[sl] - t.cy - 0.4 * r) < r) & ~crown
        part = img[sl]
        part[shadow] *= 0.6
        light = np.clip(1.15 - d / r * 0.4, 0.6, 1.2)
        part[crown] = np.array([48, 82, 40]) * light[crown, None] + 6 * noise[sl][crown, None]
        veg[sl][crown] = 1.0


def render_block(
    layout: SceneLayout, date: int, row: int, col: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image of `date` (0 before, 1 after), H x W bool change truth) for one block."""
    if row % BLOCK or col % BLOCK or height > BLOCK or width > BLOCK:
        raise ValueError(f"blocks must lie on the {BLOCK} px grid")
    rng = _block_rng(layout, date, row, col)
    bounds = (col, row, col + width, row + height)
    py, px = np.mgrid[row : row + height, col : col + width].astype(np.float64) + 0.5
    img = np.zeros((height, width, 3))
    veg = np.zeros((height, width))  # vegetation weight, for the seasonal tint
    noise = rng.normal(0, 1, (height, width))

    _paint_fields(layout, date, img, veg, px, py, noise, bounds)
    changed = _paint_roads(layout, date, img, veg, px, py, noise, bounds)
    changed |= _paint_buildings(layout, date, img, veg, px, py, noise, bounds)
    _paint_trees(layout, img, veg, px, py, noise, bounds)

    img *= _bilinear(layout.illumination, px, py, 64.0)[..., None]
    if date:  # seasonal tint on vegetation: less green, more yellow-brown
        img += veg[..., None] * np.array([14.0, -6.0, -8.0])
    img = img * layout.gain[date] + layout.offset[date]
    img += rng.normal(0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), changed


# ----------------------------------------------------------------------------------------------------------
# Writing


def scene_transform(size: int):
    """The scene's affine transform: 0.5 m pixels with the upper-left corner at ORIGIN_XY."""
    del size  # same origin at every size: a smaller scene is the top-left part of a larger grid
    return from_origin(ORIGIN_XY[0], ORIGIN_XY[1], PIXEL_M, PIXEL_M)


def _profile(size: int, count: int) -> dict:
    return dict(
        driver="GTiff",
        width=size,
        height=size,
        count=count,
        dtype="uint8",
        crs=CRS,
        transform=scene_transform(size),
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="deflate",
    )


def write_scene(out_dir: str | Path, size: int = 2048, seed: int = 0) -> SceneFiles:
    """Write `before.tif`, `after.tif` (RGB uint8) and `truth.tif` (0/255 change) into `out_dir`, block by block.

    Memory stays at a few blocks whatever the size; the same (size, seed) always gives the same files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = make_layout(size, seed)
    paths = {name: out / f"{name}.tif" for name in ("before", "after", "truth")}
    changed = 0
    with (
        rasterio.open(paths["before"], "w", **_profile(size, 3), photometric="RGB") as before,
        rasterio.open(paths["after"], "w", **_profile(size, 3), photometric="RGB") as after,
        rasterio.open(paths["truth"], "w", **_profile(size, 1)) as truth,
    ):
        truth.update_tags(values="255 = changed (new building or new road), 0 = unchanged")
        for row in range(0, size, BLOCK):
            for col in range(0, size, BLOCK):
                h, w = min(BLOCK, size - row), min(BLOCK, size - col)
                win = Window(col, row, w, h)
                image_a, _ = render_block(layout, 0, row, col, h, w)
                image_b, change = render_block(layout, 1, row, col, h, w)
                before.write(image_a.transpose(2, 0, 1), window=win)
                after.write(image_b.transpose(2, 0, 1), window=win)
                truth.write((change.astype(np.uint8) * 255)[None], window=win)
                changed += int(change.sum())
    return SceneFiles(
        before=paths["before"],
        after=paths["after"],
        truth=paths["truth"],
        size=size,
        changed_fraction=changed / float(size * size),
        new_buildings=len(layout.new_buildings),
        new_roads=sum(r.new for r in layout.roads),
    )
