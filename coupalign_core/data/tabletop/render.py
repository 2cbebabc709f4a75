"""Rendering a :class:`~.world.TableScene` with pybullet: colour, exact depth, instance masks, intrinsics.

One :class:`TabletopRenderer` per process holds a pybullet connection (``DIRECT``, no window) with
the floor, a wall and the table, and a pool of mesh bodies per (category, size): a scene moves the
bodies it needs into place and parks the rest far below the floor, so no mesh is loaded twice.
The CPU TinyRenderer is the default; ``renderer="egl"`` uses pybullet's EGL plug-in where a GPU
with EGL is present.

The camera is pinhole with square pixels: for a vertical field of view ``fov`` at W x H,
``fy = fx = H / (2 tan(fov / 2))`` and the principal point is ``(W / 2, H / 2)`` in the pixel
coordinates ``sensor_msgs/CameraInfo`` uses (pixel (u, v) at integer u, v): the renderer samples each
pixel at its top-left corner (the tests check this against the segmentation buffer). Depth is the
z-buffer made linear, ``near * far / (far - (far - near) * b)``: the distance along the optical axis,
what a depth camera reports; where nothing is within ``far`` it is NaN (a depth camera's 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..synthetic.world import COLORS
from .world import CATEGORIES, TABLE_URDF, TableObject, TableScene

PARK_Z = -50.0  # unused bodies wait here, out of every view
RENDERERS = ("tiny", "egl")


@dataclass
class Frame:
    """One rendered view. Arrays are (H, W); points are in the camera's optical frame (REP 103:
    x right, y down, z forward), metres."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres along the optical axis, NaN where there is nothing
    segmentation: np.ndarray  # (H, W) int32: index of the scene object seen there, -1 for the rest
    k: tuple[float, ...]  # CameraInfo K, row-major 3x3
    camera_to_world: np.ndarray  # (4, 4) pose of the optical frame in the world

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def mask(self, index: int) -> np.ndarray:
        return self.segmentation == index

    def depth_mm(self) -> np.ndarray:
        """(H, W) uint16 millimetres, 0 where there is no reading (``16UC1`` as depth cameras publish it)."""
        mm = np.rint(np.nan_to_num(self.depth, nan=0.0) * 1000.0)
        return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def points(self, mask: np.ndarray) -> np.ndarray:
        """(N, 3) back-projected points of the pixels of ``mask`` that have depth."""
        fx, fy, cx, cy = self.k[0], self.k[4], self.k[2], self.k[5]
        vs, us = np.nonzero(mask & np.isfinite(self.depth))
        z = self.depth[vs, us].astype(np.float64)
        return np.stack([(us - cx) * z / fx, (vs - cy) * z / fy, z], axis=1)


def intrinsics(width: int, height: int, fov_deg: float) -> tuple[float, ...]:
    """CameraInfo K (row-major 3x3) of a render at ``width`` x ``height`` with vertical fov ``fov_deg``."""
    f = height / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return (f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0)


def projection_from_k(k: tuple[float, ...]) -> np.ndarray:
    """CameraInfo P (row-major 3x4) of a camera with no stereo baseline."""
    kk = np.asarray(k, dtype=np.float64).reshape(3, 3)
    return np.concatenate([kk, np.zeros((3, 1))], axis=1)


# OpenGL's camera looks along -z with y up; the optical frame looks along +z with y down.
_GL_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])


class TabletopRenderer:
    """Renders tabletop scenes in one pybullet connection (see the module docstring)."""

    def __init__(self, renderer: str = "tiny") -> None:
        if renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {renderer!r}; known: {RENDERERS}")
        import pybullet
        import pybullet_data

        self._p: Any = pybullet
        self._client = pybullet.connect(pybullet.DIRECT)
        p, cid = self._p, self._client
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
        self._renderer_flag = p.ER_TINY_RENDERER
        if renderer == "egl":
            import importlib.util

            egl = importlib.util.find_spec("eglRenderer")  # the plug-in pybullet's wheel ships
            plugin = p.loadPlugin(egl.origin if egl and egl.origin else "eglRendererPlugin", "_eglRendererPlugin",
                                  physicsClientId=cid)
            if plugin < 0:
                raise RuntimeError("pybullet's EGL renderer plug-in did not load (no EGL-capable GPU?)")
            self._renderer_flag = p.ER_BULLET_HARDWARE_OPENGL
        self._floor = p.loadURDF("plane.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=cid)
        p.changeVisualShape(self._floor, -1, rgbaColor=[0.42, 0.42, 0.4, 1], textureUniqueId=-1, physicsClientId=cid)
        wall = p.createVisualShape(p.GEOM_BOX, halfExtents=[4.0, 0.05, 1.5], rgbaColor=[0.8, 0.8, 0.8, 1],
                                   physicsClientId=cid)
        self._wall = p.createMultiBody(0, -1, wall, basePosition=[0, 1.8, 1.5], physicsClientId=cid)
        self._table = p.loadURDF(TABLE_URDF, [0, 0, 0], useFixedBase=True, physicsClientId=cid)
        self._table_links = [-1, *range(p.getNumJoints(self._table, physicsClientId=cid))]
        self._pool: dict[tuple[str, float], list[int]] = {}

    def close(self) -> None:
        self._p.disconnect(physicsClientId=self._client)

    def _bodies(self, category: str, scale: float, count: int) -> list[int]:
        key = (category, round(scale, 6))
        bodies = self._pool.setdefault(key, [])
        while len(bodies) < count:
            bodies.append(self._p.loadURDF(CATEGORIES[category].urdf, [0, 0, PARK_Z], useFixedBase=True,
                                           globalScaling=scale, physicsClientId=self._client))
        return bodies[:count]

    def _place(self, body: int, position: tuple[float, float, float], yaw: float) -> None:
        """Puts the mesh frame (the URDF link frame) of ``body`` at ``position`` with ``yaw``.

        pybullet's base pose is that of the centre of mass, which some URDFs (the duck) put away
        from the link frame, so the inertial offset is added here.
        """
        p, cid = self._p, self._client
        inertial = np.asarray(p.getDynamicsInfo(body, -1, physicsClientId=cid)[3], dtype=np.float64)
        c, s = math.cos(yaw), math.sin(yaw)
        offset = np.array([c * inertial[0] - s * inertial[1], s * inertial[0] + c * inertial[1], inertial[2]])
        p.resetBasePositionAndOrientation(body, (np.asarray(position) + offset).tolist(),
                                          p.getQuaternionFromEuler([0, 0, yaw]), physicsClientId=cid)

    def aabb(self, category: str, scale: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """pybullet's axis-aligned box of a category's mesh frame at the origin (what ``Category.aabb`` holds)."""
        body = self._bodies(category, scale, 1)[0]
        self._place(body, (0.0, 0.0, 0.0), 0.0)
        lo, hi = self._p.getAABB(body, physicsClientId=self._client)
        self._place(body, (0.0, 0.0, PARK_Z), 0.0)
        return tuple(lo), tuple(hi)

    def _arrange(self, objects: list[TableObject]) -> dict[int, int]:
        """Moves pool bodies to the scene's objects and parks the rest; returns body id -> object index."""
        p, cid = self._p, self._client
        wanted: dict[tuple[str, float], list[int]] = {}
        for i, obj in enumerate(objects):
            wanted.setdefault((obj.category, round(obj.scale, 6)), []).append(i)
        body_of: dict[int, int] = {}
        for key, indices in wanted.items():
            for body, i in zip(self._bodies(key[0], key[1], len(indices)), indices):
                body_of[body] = i
        for key, bodies in self._pool.items():
            for body in bodies[len(wanted.get(key, [])):]:
                p.resetBasePositionAndOrientation(body, [0, 0, PARK_Z], [0, 0, 0, 1], physicsClientId=cid)
        for body, i in body_of.items():
            obj = objects[i]
            self._place(body, *obj.base_pose())
            rgba = [c / 255.0 for c in COLORS[obj.color]] + [1.0]
            p.changeVisualShape(body, -1, rgbaColor=rgba, textureUniqueId=-1, physicsClientId=cid)
        return body_of

    def render(self, scene: TableScene, width: int, height: int, *, shadow: bool = False) -> Frame:
        p, cid = self._p, self._client
        for link in self._table_links:
            p.changeVisualShape(self._table, link, rgbaColor=[*scene.table_color, 1.0], textureUniqueId=-1,
                                physicsClientId=cid)
        p.changeVisualShape(self._wall, -1, rgbaColor=[*scene.wall_color, 1.0], physicsClientId=cid)
        body_of = self._arrange(scene.objects)
        cam = scene.camera
        view = p.computeViewMatrix(cam.eye, cam.target, cam.up, physicsClientId=cid)
        proj = p.computeProjectionMatrixFOV(cam.fov_deg, width / height, cam.near, cam.far, physicsClientId=cid)
        light = scene.light
        _, _, rgba, zbuf, seg = p.getCameraImage(
            width, height, view, proj, lightDirection=list(light.direction), lightColor=list(light.color),
            lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse, lightSpecularCoeff=light.specular,
            shadow=int(shadow), renderer=self._renderer_flag, physicsClientId=cid)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(height, width)
        depth = cam.near * cam.far / (cam.far - (cam.far - cam.near) * zbuf)
        depth[zbuf >= 1.0] = np.nan  # nothing within the far plane
        seg = np.asarray(seg, dtype=np.int64).reshape(height, width)
        segmentation = np.full((height, width), -1, dtype=np.int32)
        for body, i in body_of.items():
            segmentation[seg == body] = i
        world_to_gl = np.asarray(view, dtype=np.float64).reshape(4, 4).T  # pybullet stores column-major
        camera_to_world = np.linalg.inv(_GL_TO_OPTICAL @ world_to_gl)
        return Frame(rgb, depth.astype(np.float32), segmentation, intrinsics(width, height, cam.fov_deg),
                     camera_to_world)


_RENDERERS: dict[str, TabletopRenderer] = {}


def process_renderer(renderer: str = "tiny") -> TabletopRenderer:
    """This process's renderer (one pybullet connection per process, made on first use)."""
    if renderer not in _RENDERERS:
        _RENDERERS[renderer] = TabletopRenderer(renderer)
    return _RENDERERS[renderer]


def visible_objects(frame: Frame, num_objects: int) -> list[Optional[dict[str, Any]]]:
    """Per object: None when no pixel of it is seen, else its visible pixel count and the centroid of
    its visible surface (mean of the back-projected visible pixels, optical frame, metres)."""
    out: list[Optional[dict[str, Any]]] = []
    counts = np.bincount(frame.segmentation.reshape(-1) + 1, minlength=num_objects + 1)[1:]
    for i in range(num_objects):
        if counts[i] == 0:
            out.append(None)
            continue
        pts = frame.points(frame.mask(i))
        if len(pts) == 0:
            out.append(None)
            continue
        out.append({"pixels": int(counts[i]), "point": pts.mean(axis=0)})
    return out
