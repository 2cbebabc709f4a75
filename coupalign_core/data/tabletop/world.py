"""Scene sampling for the tabletop world: what stands on the table, where, and how it is seen.

Pure numpy (no rendering here): a scene is a table with a colour, 3-12 objects of named categories
(meshes that ``pybullet_data`` ships), each recoloured from the named palette of the 2D world and
scaled to a named size, resting on the table, on top of another object or inside the tray; a camera
pose of a robot's head or wrist camera; and a light. Objects rest without physics: a mesh's
axis-aligned box (:data:`CATEGORIES`, ``aabb``, measured with ``pybullet.getAABB`` at scale 1 and
checked against it by the tests) says how far its origin lies above its lowest point, so placing an
object on a surface is one addition, and a scene is sampled in microseconds.

As in the 2D world, scenes hold look-alike groups (3-4 objects of one category, colour and size, and
pairs), so only location words tell them apart, and objects touch or stand behind one another, so
the camera sees some of them only in part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..synthetic.world import COLORS, PROFILES, sample_num_objects

SIZES: tuple[str, ...] = ("small", "large")
SIZE_SCALE: dict[str, float] = {"small": 0.8, "large": 1.25}  # times a category's base scale


@dataclass(frozen=True)
class Category:
    """One kind of object: its mesh, its words and how it may rest."""

    urdf: str  # relative to pybullet_data
    words: tuple[str, ...]  # the first is the name; the rest are synonyms
    plurals: tuple[str, ...]  # one per word
    base_scale: float  # pybullet globalScaling giving the category's everyday size
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]]  # (lo, hi) at scale 1, metres
    flat_top: bool = False  # another object can stand on it
    on_others: bool = True  # it can stand on another object or in the tray

    def extent(self, scale: float) -> np.ndarray:
        lo, hi = np.asarray(self.aabb[0]), np.asarray(self.aabb[1])
        return (hi - lo) * scale  # (3,) dx, dy, dz

    def radius(self, scale: float) -> float:
        """Radius of a disc that holds the footprint at any yaw."""
        dx, dy, _ = self.extent(scale)
        return float(math.hypot(dx, dy) / 2)


TRAY = "tray"
CATEGORIES: dict[str, Category] = {
    "mug": Category("objects/mug.urdf", ("mug", "cup"), ("mugs", "cups"), 0.9,
                    ((-0.044, -0.044, -0.003), (0.044, 0.0836, 0.103))),
    "duck": Category("duck_vhacd.urdf", ("duck", "rubber duck"), ("ducks", "rubber ducks"), 1.0,
                     ((-0.0524, 0.0007, -0.0312), (0.0384, 0.0861, 0.0348))),
    "teddy": Category("teddy_vhacd.urdf", ("teddy bear", "bear", "teddy"), ("teddy bears", "bears", "teddies"), 1.3,
                      ((0.0258, 0.0155, -0.0031), (0.1099, 0.1167, 0.0677)), on_others=False),
    "block": Category("jenga/jenga.urdf", ("block", "brick"), ("blocks", "bricks"), 0.8,
                      ((-0.075, -0.025, -0.015), (0.075, 0.025, 0.015)), flat_top=True),
    "cube": Category("cube_small.urdf", ("cube", "box"), ("cubes", "boxes"), 1.0,
                     ((-0.025, -0.025, -0.025), (0.025, 0.025, 0.025)), flat_top=True),
    "ball": Category("sphere_small.urdf", ("ball", "sphere"), ("balls", "spheres"), 1.1,
                     ((-0.03, -0.03, -0.03), (0.03, 0.03, 0.03))),
    "lego": Category("lego/lego.urdf", ("lego", "lego piece"), ("legos", "lego pieces"), 1.8,
                     ((-0.017, -0.017, -0.0125), (0.017, 0.017, 0.0125)), flat_top=True),
    TRAY: Category("tray/traybox.urdf", ("tray",), ("trays",), 0.6,
                   ((-0.301, -0.301, -0.0104), (0.301, 0.301, 0.1284)), on_others=False),
}
OBJECT_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c != TRAY)
TRAY_FLOOR = 0.015  # height of the tray's inner floor above its lowest point, at scale 1
TRAY_INNER_HALF = 0.2  # half-width of its flat inner floor, at scale 1

TABLE_URDF = "table/table.urdf"
TABLE_TOP_Z = 0.626  # table.urdf's top surface, world z (m)
# Where objects stand (world x, y; the table is 1.5 x 1.0 m around the origin); the robot stands at -y.
WORKSPACE = ((-0.34, 0.34), (-0.24, 0.24))
# Muted table and wall colours (RGB 0-1): light and dark wood, greys, off-white.
TABLE_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.72, 0.56, 0.38), (0.55, 0.40, 0.27), (0.80, 0.78, 0.74), (0.45, 0.45, 0.47), (0.62, 0.60, 0.55),
    (0.35, 0.27, 0.20), (0.86, 0.84, 0.80), (0.60, 0.52, 0.44),
)

TRAY_PROB = 0.45
GROUP_PROB = 0.6  # a group of 3-4 identical objects (category, colour, size)
PAIR_PROB = 0.5
TOUCH_PROB = 0.4  # a table object is placed against one already there
IN_TRAY_PROB = 0.45  # ... or, when it fits, inside the tray
STACK_PROB = 0.2  # ... or on top of a flat-topped object
MAX_IN_TRAY = 3
MAX_STACKED_RADIUS = 0.06  # only small things go on top of others or into the tray


@dataclass
class TableObject:
    category: str
    color: str
    size: str
    scale: float  # globalScaling of the mesh
    center: tuple[float, float]  # world x, y of the footprint's centre
    yaw: float  # radians about world z
    bottom: float  # world z of its lowest point
    support: Optional[int] = None  # index of the object it stands on or in; None: the table

    @property
    def spec(self) -> Category:
        return CATEGORIES[self.category]

    @property
    def radius(self) -> float:
        return self.spec.radius(self.scale)

    @property
    def top(self) -> float:
        return self.bottom + float(self.spec.extent(self.scale)[2])

    def base_pose(self) -> tuple[tuple[float, float, float], float]:
        """World position of the mesh origin and its yaw, so the footprint centre and bottom land where asked."""
        lo, hi = np.asarray(self.spec.aabb[0]), np.asarray(self.spec.aabb[1])
        mid = (lo[:2] + hi[:2]) / 2 * self.scale  # footprint centre in the mesh frame
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        offset = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]])
        x, y = np.asarray(self.center) - offset
        return (float(x), float(y), float(self.bottom - lo[2] * self.scale)), self.yaw


@dataclass
class CameraPose:
    """A pinhole camera looking at the table (world frame, metres; vertical field of view in degrees)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float
    mount: str  # "head" or "wrist"
    near: float = 0.1
    far: float = 4.0
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass
class Lighting:
    direction: tuple[float, float, float]  # towards the light, world frame
    color: tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float


@dataclass
class TableScene:
    table_color: tuple[float, float, float]  # RGB 0-1
    wall_color: tuple[float, float, float]
    objects: list[TableObject]
    camera: CameraPose
    light: Lighting


# Camera mounts: (probability, distance m, pitch below horizontal deg, yaw deg, vertical fov deg).
CAMERA_MOUNTS: dict[str, tuple[float, tuple[float, float], tuple[float, float], tuple[float, float],
                               tuple[float, float]]] = {
    "head": (0.7, (0.75, 1.15), (35.0, 60.0), (-30.0, 30.0), (42.0, 58.0)),
    "wrist": (0.3, (0.45, 0.7), (55.0, 80.0), (-45.0, 45.0), (50.0, 65.0)),
}


RGB = tuple[float, float, float]


def _rgb(values: "np.ndarray | tuple[float, ...] | list[float]") -> RGB:
    r, g, b = (float(v) for v in values)
    return (r, g, b)


def sample_camera(rng: np.random.Generator) -> CameraPose:
    mounts = list(CAMERA_MOUNTS)
    mount = mounts[int(rng.choice(len(mounts), p=[CAMERA_MOUNTS[m][0] for m in mounts]))]
    _, dist_r, pitch_r, yaw_r, fov_r = CAMERA_MOUNTS[mount]
    dist, pitch, yaw, fov = (float(rng.uniform(*r)) for r in (dist_r, pitch_r, yaw_r, fov_r))
    target = (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.06, 0.06)), TABLE_TOP_Z)
    pitch_r_, yaw_r_ = math.radians(pitch), math.radians(yaw)
    forward = (math.sin(yaw_r_), math.cos(yaw_r_))  # yaw 0 looks along +y, away from the robot
    back = dist * math.cos(pitch_r_)
    eye = (target[0] - back * forward[0], target[1] - back * forward[1], target[2] + dist * math.sin(pitch_r_))
    return CameraPose(_rgb(eye), target, fov, mount)


def sample_light(rng: np.random.Generator) -> Lighting:
    azimuth, elevation = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(35, 80))
    direction = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation))
    warm = float(rng.uniform(-0.08, 0.08))  # a warm or a cool tint
    color = (1.0, 1.0 - abs(warm) / 2, 1.0 - warm)
    return Lighting(_rgb(direction), color, float(rng.uniform(0.45, 0.7)), float(rng.uniform(0.35, 0.6)),
                    float(rng.uniform(0.0, 0.15)))


def sample_attributes(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """(category, colour, size) per object: maybe a group of 3-4 identical objects, maybe a pair, rest random."""
    colors = list(COLORS)

    def combo() -> tuple[str, str, str]:
        return (OBJECT_CATEGORIES[int(rng.integers(len(OBJECT_CATEGORIES)))], colors[int(rng.integers(len(colors)))],
                SIZES[int(rng.integers(len(SIZES)))])

    attrs: list[tuple[str, str, str]] = []
    if n >= 3 and rng.random() < GROUP_PROB:
        attrs += [combo()] * (4 if n >= 5 and rng.random() < 0.3 else 3)
    if n - len(attrs) >= 2 and rng.random() < PAIR_PROB:
        attrs += [combo()] * 2
    while len(attrs) < n:
        attrs.append(combo())
    return [attrs[i] for i in rng.permutation(len(attrs))]


def _in_workspace(x: float, y: float, r: float) -> bool:
    (x0, x1), (y0, y1) = WORKSPACE
    return x0 + r <= x <= x1 - r and y0 + r <= y <= y1 - r


def _tray_overlap(tray: TableObject, x: float, y: float, r: float) -> bool:
    """A disc at (x, y) of radius r touches the tray's (rotated) square footprint."""
    half = float(tray.spec.extent(tray.scale)[0]) / 2 * 1.02
    c, s = math.cos(-tray.yaw), math.sin(-tray.yaw)
    dx, dy = x - tray.center[0], y - tray.center[1]
    lx, ly = c * dx - s * dy, s * dx + c * dy  # in the tray's frame
    qx, qy = max(abs(lx) - half, 0.0), max(abs(ly) - half, 0.0)
    return math.hypot(qx, qy) < r


def _free(objects: list[TableObject], x: float, y: float, r: float, support: Optional[int],
          tray: Optional[int]) -> bool:
    """No object standing on the same surface overlaps a disc at (x, y) (touching allowed)."""
    for j, o in enumerate(objects):
        if j == tray and support is None:
            if _tray_overlap(o, x, y, r):
                return False
            continue
        if o.support == support and math.hypot(o.center[0] - x, o.center[1] - y) < 0.92 * (o.radius + r):
            return False
    return True


def _place_tray(rng: np.random.Generator) -> TableObject:
    spec = CATEGORIES[TRAY]
    scale = spec.base_scale * float(rng.uniform(0.9, 1.05))
    half = float(spec.extent(scale)[0]) / 2
    (x0, x1), (y0, y1) = WORKSPACE
    x = float(rng.uniform(x0 + half * 0.6, x1 - half * 0.6))
    y = float(rng.uniform(y0 + half * 0.6, y1 - half * 0.6))
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    return TableObject(TRAY, color, "large", scale, (x, y), float(rng.uniform(-0.3, 0.3)), TABLE_TOP_Z)


def _try_place(rng: np.random.Generator, objects: list[TableObject], obj: TableObject, tray: Optional[int],
               max_tries: int) -> bool:
    """Finds a resting place for ``obj`` (sets centre, bottom, support); False when none was found."""
    r = obj.radius
    small = obj.spec.on_others and r <= MAX_STACKED_RADIUS
    in_tray = sum(o.support == tray for o in objects) if tray is not None else 0
    if small and tray is not None and in_tray < MAX_IN_TRAY and rng.random() < IN_TRAY_PROB:
        t = objects[tray]
        room = TRAY_INNER_HALF * t.scale - r * 0.8
        for _ in range(max_tries):
            lx, ly = rng.uniform(-room, room, size=2)
            c, s = math.cos(t.yaw), math.sin(t.yaw)
            x, y = t.center[0] + c * lx - s * ly, t.center[1] + s * lx + c * ly
            if _free(objects, x, y, r, tray, tray):
                obj.center, obj.bottom, obj.support = (float(x), float(y)), t.bottom + TRAY_FLOOR * t.scale, tray
                return True
    supports = [j for j, o in enumerate(objects) if o.spec.flat_top and o.support is None
                and all(p.support != j for p in objects) and o.radius >= 0.6 * r]
    if small and supports and rng.random() < STACK_PROB:
        j = supports[int(rng.integers(len(supports)))]
        s_obj = objects[j]
        jitter = 0.2 * s_obj.radius
        obj.center = (s_obj.center[0] + float(rng.uniform(-jitter, jitter)),
                      s_obj.center[1] + float(rng.uniform(-jitter, jitter)))
        obj.bottom, obj.support = s_obj.top, j
        return True
    table_objects = [o for o in objects if o.support is None and o.category != TRAY]
    (x0, x1), (y0, y1) = WORKSPACE
    for _ in range(max_tries):
        if table_objects and rng.random() < TOUCH_PROB:
            other = table_objects[int(rng.integers(len(table_objects)))]
            angle, reach = rng.uniform(0, 2 * math.pi), (other.radius + r) * rng.uniform(0.93, 1.0)
            x, y = other.center[0] + reach * math.cos(angle), other.center[1] + reach * math.sin(angle)
        else:
            x, y = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
        if _in_workspace(float(x), float(y), r) and _free(objects, float(x), float(y), r, None, tray):
            obj.center, obj.bottom, obj.support = (float(x), float(y)), TABLE_TOP_Z, None
            return True
    return False


def sample_scene(rng: np.random.Generator, profile: str = "mixed", max_tries: int = 40) -> TableScene:
    """A table with 3-12 objects (per ``profile``, as in the 2D world), a camera and a light."""
    if profile not in PROFILES:
        raise ValueError(f"unknown scene profile {profile!r}; known: {tuple(PROFILES)}")
    n = sample_num_objects(rng, profile)
    objects: list[TableObject] = []
    tray: Optional[int] = None
    if rng.random() < TRAY_PROB:
        objects.append(_place_tray(rng))
        tray, n = 0, n - 1
    for category, color, size in sample_attributes(rng, n):
        scale = CATEGORIES[category].base_scale * SIZE_SCALE[size]
        obj = TableObject(category, color, size, scale, (0.0, 0.0), float(rng.uniform(-math.pi, math.pi)), TABLE_TOP_Z)
        if _try_place(rng, objects, obj, tray, max_tries):
            objects.append(obj)
    base = np.asarray(TABLE_COLORS[int(rng.integers(len(TABLE_COLORS)))])
    table_color = _rgb(np.clip(base + rng.uniform(-0.04, 0.04, size=3), 0, 1))
    wall_color = _rgb(rng.uniform(0.5, 0.9, size=3))
    return TableScene(table_color, wall_color, objects, sample_camera(rng), sample_light(rng))
