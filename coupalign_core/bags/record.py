"""make-bag: record (image, sentence, ground truth) items as a timed camera + command + ground-truth bag."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from ..runtime.conversions import mask_to_mono8, rgb_to_image_fields
from .files import STORAGES, BagError, BagWriter
from .interfaces import make_typestore
from .layout import (
    COMMAND_LEAD_NS,
    COMMAND_TOPIC,
    FRAME_PERIOD_NS,
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    START_NS,
    STRING_TYPE,
)
from .messages import command_qos, image_message, make_header


@dataclass
class BagItem:
    """One (image, sentence, ground truth) for :func:`write_bag`."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    sentence: str
    mask: np.ndarray  # (H, W) bool


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
    total: Optional[int] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``items`` as a timed camera + command + ground-truth bag at ``out``; returns a summary.

    Item i is a frame at ``START_NS + i * FRAME_PERIOD_NS`` with its sentence ``COMMAND_LEAD_NS``
    before it. ``out`` must not exist unless ``overwrite`` (then an existing bag there is replaced
    once the new one is complete).
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
        for item in tqdm(itertools.chain([first], items), total=total, desc="make-bag", unit="frame",
                         disable=not progress):
            writer.write(command_conn, stamp - COMMAND_LEAD_NS, String(data=item.sentence), typestore)
            header = make_header(typestore, stamp, frame_id)
            writer.write(image_conn, stamp, image_message(typestore, rgb_to_image_fields(item.image, encoding), header),
                         typestore)
            writer.write(gt_conn, stamp, image_message(typestore, mask_to_mono8(item.mask), header), typestore)
            count += 1
            stamp += FRAME_PERIOD_NS
    return {"bag": str(out), "frames": count, "storage": storage, "distro": distro, "encoding": encoding,
            "topics": {"image": image_topic, "command": command_topic, "gt": gt_topic},
            "duration_s": count * FRAME_PERIOD_NS * 1e-9}


def refer_items(dataset: Any, limit: Optional[int] = None) -> Iterator[BagItem]:
    """BagItems from a ``ReferDataset`` (sentences="all"), in file order, at most ``limit``."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    for i in range(n):
        item = dataset[i]
        yield BagItem(item["image"], item["sentence"], item["mask"])
