"""make-bag: record (image, sentence, ground truth) items as a timed camera + command + ground-truth bag,
with aligned depth, CameraInfo and the ground-truth 3D point when the items carry them (the tabletop world)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from ..runtime.conversions import depth_mm_to_image_fields, mask_to_mono8, rgb_to_image_fields
from .files import STORAGES, BagError, BagWriter
from .interfaces import make_typestore
from .layout import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    COMMAND_LEAD_NS,
    COMMAND_TOPIC,
    DEPTH_INFO_TOPIC,
    DEPTH_TOPIC,
    FRAME_PERIOD_NS,
    GT_POINT_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    POINT_TYPE,
    START_NS,
    STRING_TYPE,
)
from .messages import camera_info_message, command_qos, image_message, make_header, point_message


@dataclass
class BagItem:
    """One (image, sentence, ground truth) for :func:`write_bag`."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    sentence: str
    mask: np.ndarray  # (H, W) bool
    depth_mm: Optional[np.ndarray] = None  # (H, W) uint16 millimetres aligned to the image, 0 = no reading
    camera_k: Optional[Sequence[float]] = None  # CameraInfo K (9 values), with depth_mm
    point: Optional[Sequence[float]] = None  # ground-truth 3D target point (optical frame, metres); None: no target


def write_bag(
    items: Iterable[BagItem],
    out: str | os.PathLike[str],
    *,
    storage: str = "sqlite3",
    distro: str = "jazzy",
    encoding: str = "rgb8",
    image_topic: str = IMAGE_TOPIC,
    command_topic: str = COMMAND_TOPIC,
    gt_topic: str = GT_TOPIC,
    frame_id: str = "camera_color_optical_frame",
    depth_topic: str = DEPTH_TOPIC,
    camera_info_topic: str = CAMERA_INFO_TOPIC,
    depth_info_topic: str = DEPTH_INFO_TOPIC,
    gt_point_topic: str = GT_POINT_TOPIC,
    total: Optional[int] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``items`` as a timed camera + command + ground-truth bag at ``out``; returns a summary.

    Item i is a frame at ``START_NS + i * FRAME_PERIOD_NS`` with its sentence ``COMMAND_LEAD_NS``
    before it. ``out`` must not exist unless ``overwrite`` (then an existing bag there is replaced
    once the new one is complete). When the first item carries depth, every item must: each frame then
    also has its depth image and CameraInfo (colour and aligned depth, the same K) and, when it has a
    target, the ground-truth point, all with the image's header.
    """
    from tqdm import tqdm

    if storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; supported: {', '.join(STORAGES)}")
    typestore = make_typestore(distro)
    String = typestore.types[STRING_TYPE]
    items = iter(items)
    first = next(items, None)
    if first is None:
        raise ValueError("no items to write: the bag would be empty")
    count = 0
    stamp = START_NS
    with BagWriter(out, storage, overwrite=overwrite) as writer:
        image_conn = writer.connection(image_topic, IMAGE_TYPE, typestore)
        command_conn = writer.connection(command_topic, STRING_TYPE, typestore, qos=[command_qos()])
        gt_conn = writer.connection(gt_topic, IMAGE_TYPE, typestore)
        with_depth = first.depth_mm is not None
        if with_depth:
            depth_conn = writer.connection(depth_topic, IMAGE_TYPE, typestore)
            info_conn = writer.connection(camera_info_topic, CAMERA_INFO_TYPE, typestore)
            depth_info_conn = writer.connection(depth_info_topic, CAMERA_INFO_TYPE, typestore)
            point_conn = writer.connection(gt_point_topic, POINT_TYPE, typestore)
        for item in tqdm(itertools.chain([first], items), total=total, desc="make-bag", unit="frame",
                         disable=not progress):
            writer.write(command_conn, stamp - COMMAND_LEAD_NS, String(data=item.sentence), typestore)
            header = make_header(typestore, stamp, frame_id)
            writer.write(image_conn, stamp, image_message(typestore, rgb_to_image_fields(item.image, encoding), header),
                         typestore)
            writer.write(gt_conn, stamp, image_message(typestore, mask_to_mono8(item.mask), header), typestore)
            if with_depth:
                if item.depth_mm is None or item.camera_k is None:
                    raise ValueError(f"item {count} has no depth or camera K while the first one had both")
                height, width = item.depth_mm.shape
                info = camera_info_message(typestore, width, height, item.camera_k, header)
                writer.write(info_conn, stamp, info, typestore)
                writer.write(depth_info_conn, stamp, info, typestore)
                depth = image_message(typestore, depth_mm_to_image_fields(item.depth_mm), header)
                writer.write(depth_conn, stamp, depth, typestore)
                if item.point is not None:
                    writer.write(point_conn, stamp, point_message(typestore, item.point, header), typestore)
            count += 1
            stamp += FRAME_PERIOD_NS
    topics = {"image": image_topic, "command": command_topic, "gt": gt_topic}
    if with_depth:
        topics.update({"depth": depth_topic, "camera_info": camera_info_topic, "depth_camera_info": depth_info_topic,
                       "gt_point": gt_point_topic})
    return {"bag": str(out), "frames": count, "storage": storage, "distro": distro, "encoding": encoding,
            "topics": topics,
            "duration_s": count * FRAME_PERIOD_NS * 1e-9}


def refer_items(dataset: Any, limit: Optional[int] = None) -> Iterator[BagItem]:
    """BagItems from a ``ReferDataset`` (sentences="all"), in file order, at most ``limit``; with depth,
    K and the target's 3D point where instances.json has them (``coupalign sim``'s ``depth_file``,
    ``camera_info`` and ``point_3d``)."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    for i in range(n):
        item = dataset[i]
        record = dataset.images[item["image_id"]]
        if "depth_file" not in record:
            yield BagItem(item["image"], item["sentence"], item["mask"])
            continue
        path = Path(dataset.image_root) / record["depth_file"]
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None or depth.dtype != np.uint16:
            raise ValueError(f"{path} is not a 16-bit depth PNG")
        point = None if item["no_target"] else dataset.annotations[item["ann_id"]].get("point_3d")
        yield BagItem(item["image"], item["sentence"], item["mask"], depth, record["camera_info"]["k"], point)
