"""ROS 2 bags without ROS: write a refer-layout split as a bag, replay a bag through the node's pipeline.

Uses rosbags, which reads and writes rosbag2 in sqlite3 (.db3) and MCAP with the Humble and Jazzy
type stores, and registers ``coupalign_interfaces`` from the package's own .msg/.srv text, so the
result bags carry the same ``ReferringSegmentation`` the node publishes.

Bag layout (what ``make-bag`` writes and ``bag-eval`` reads by default):

- ``/camera/image_raw`` ``sensor_msgs/Image`` (rgb8 or bgr8), one per sentence
- ``/coupalign/command`` ``std_msgs/String``, recorded as reliable + transient local (the node's
  QoS), stamped ``COMMAND_LEAD_NS`` before its image, so it is in force at the image's stamp
- ``/coupalign/gt_mask`` ``sensor_msgs/Image`` mono8 (non-zero = target), same header stamp as
  its image
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..runtime.conversions import (
    ImageFields,
    compressed_to_rgb,
    image_to_rgb,
    mask_to_mono8,
    mono8_to_mask,
    rgb_to_image_fields,
)
from ..runtime.pipeline import Frame, Pipeline, SegmentFn, SegmentationOutput

logger = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
COMMAND_TOPIC = "/coupalign/command"
GT_TOPIC = "/coupalign/gt_mask"
RESULT_TOPIC = "/coupalign/result"
DISTROS = ("humble", "jazzy")
STORAGES = ("sqlite3", "mcap")
RESULT_TYPE = "coupalign_interfaces/msg/ReferringSegmentation"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"

# make-bag's timeline: a fixed start (stamps are never 0, which some tools treat as "unset"),
# the command COMMAND_LEAD_NS before each frame, frames FRAME_PERIOD_NS apart (10 Hz).
START_NS = 1_700_000_000 * 10**9
COMMAND_LEAD_NS = 20_000_000
FRAME_PERIOD_NS = 100_000_000
BAG_VERSION = 8  # rosbag2 metadata version 8: what Jazzy writes; rosbags writes 8 or 9


# ---- interfaces ---------------------------------------------------------------------------------
def interface_dirs() -> list[Path]:
    """Where coupalign_interfaces' .msg/.srv files may be: source tree, pip/colcon install, ament prefixes."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg"]  # the source tree (editable install, tests)
    candidates.append(Path(sys.prefix) / "share" / "coupalign_ros" / "interfaces")  # pip install
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "coupalign_ros" / "interfaces")
            candidates.append(Path(prefix) / "share" / "coupalign_interfaces")  # rosidl installs msg/, srv/
    # colcon's install layout: <prefix>/lib/pythonX.Y/site-packages/coupalign_core/bags/bag_tools.py
    if len(here.parents) > 5:
        candidates.append(here.parents[5] / "share" / "coupalign_ros" / "interfaces")
    return candidates


def interface_text(relative: str) -> str:
    """The text of ``msg/ReferringSegmentation.msg`` or ``srv/Segment.srv``."""
    looked = []
    for base in interface_dirs():
        for path in (base / relative, base / Path(relative).name):
            looked.append(str(path))
            if path.is_file():
                return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"coupalign_interfaces file {relative} not found; looked in: {', '.join(looked)}")


def make_typestore(distro: str = "jazzy"):
    """The rosbags type store of ``distro`` with coupalign_interfaces registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if distro not in DISTROS:
        raise ValueError(f"unknown ROS distro {distro!r}; supported: {', '.join(DISTROS)}")
    typestore = get_typestore(Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY)
    types = dict(get_types_from_msg(interface_text("msg/ReferringSegmentation.msg"), RESULT_TYPE))
    # Bags never carry the service itself, but loading it proves Segment.srv is valid for rosbags
    # too; rosbags files every type under <pkg>/msg/ or <pkg>/<ns>/msg/, so these land in
    # coupalign_interfaces/srv/msg/Segment_{Request,Response}.
    request, response = split_service(interface_text("srv/Segment.srv"))
    types.update(get_types_from_msg(request, "coupalign_interfaces/srv/Segment_Request"))
    types.update(get_types_from_msg(response, "coupalign_interfaces/srv/Segment_Response"))
    typestore.register(types)
    return typestore


def split_service(text: str) -> tuple[str, str]:
    """A .srv text -> (request, response) message texts, split on the '---' line."""
    lines = text.splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(separators) != 1:
        raise ValueError(f"a service definition needs exactly one '---' line, found {len(separators)}")
    i = separators[0]
    return "\n".join(lines[:i]) + "\n", "\n".join(lines[i + 1:]) + "\n"


# ---- message building (rosbags classes) ---------------------------------------------------------
def _header(typestore, stamp_ns: int, frame_id: str):
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id)


def stamp_to_ns(header: Any) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def image_message(typestore, fields: ImageFields, header: Any):
    Image = typestore.types[IMAGE_TYPE]
    return Image(header=header, height=fields.height, width=fields.width, encoding=fields.encoding,
                 is_bigendian=fields.is_bigendian, step=fields.step,
                 data=np.frombuffer(fields.data, dtype=np.uint8))


def result_message(typestore, output: SegmentationOutput, header: Any):
    """A rosbags ``ReferringSegmentation`` from a pipeline output (same fields as the node's)."""
    values = output.message_fields()
    ROI = typestore.types["sensor_msgs/msg/RegionOfInterest"]
    x, y, w, h = values["bbox"]
    Result = typestore.types[RESULT_TYPE]
    return Result(
        header=header,
        command=values["command"],
        command_id=values["command_id"],
        found=values["found"],
        score=values["score"],
        bbox=ROI(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
        mask=image_message(typestore, values["mask"], header),
        latency_ms=values["latency_ms"],
    )


def _command_qos():
    """reliable + transient local, keep last 1: what the node subscribes with, so `ros2 bag play`
    republishes commands latched."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def _open_writer(path: Path, storage: str):
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; supported: {', '.join(STORAGES)}")
    if path.exists():
        raise FileExistsError(f"output bag {path} already exists; remove it or choose another --out")
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    return Writer(path, version=BAG_VERSION, storage_plugin=plugin)


# ---- make-bag -----------------------------------------------------------------------------------
@dataclass
class BagItem:
    """One (image, sentence, ground truth) for :func:`write_bag`."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    sentence: str
    mask: np.ndarray  # (H, W) bool


def write_bag(
    items: Iterable[BagItem],
    out: str | os.PathLike,
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
) -> dict[str, Any]:
    """Write ``items`` as a timed camera + command + ground-truth bag; returns a summary."""
    from tqdm import tqdm

    typestore = make_typestore(distro)
    out = Path(out)
    String = typestore.types[STRING_TYPE]
    items = iter(items)
    first = next(items, None)
    if first is None:
        raise ValueError("no items to write: the bag would be empty")
    count = 0
    stamp = START_NS
    with _open_writer(out, storage) as writer:
        image_conn = writer.add_connection(image_topic, IMAGE_TYPE, typestore=typestore)
        command_conn = writer.add_connection(command_topic, STRING_TYPE, typestore=typestore,
                                             offered_qos_profiles=[_command_qos()])
        gt_conn = writer.add_connection(gt_topic, IMAGE_TYPE, typestore=typestore)
        for item in tqdm(itertools.chain([first], items), total=total, desc="make-bag", unit="frame",
                         disable=not progress):
            command_ns = stamp - COMMAND_LEAD_NS
            writer.write(command_conn, command_ns, typestore.serialize_cdr(String(data=item.sentence), STRING_TYPE))
            header = _header(typestore, stamp, frame_id)
            image = image_message(typestore, rgb_to_image_fields(item.image, encoding), header)
            writer.write(image_conn, stamp, typestore.serialize_cdr(image, IMAGE_TYPE))
            gt = image_message(typestore, mask_to_mono8(item.mask), header)
            writer.write(gt_conn, stamp, typestore.serialize_cdr(gt, IMAGE_TYPE))
            count += 1
            stamp += FRAME_PERIOD_NS
    return {"bag": str(out), "frames": count, "storage": storage, "distro": distro, "encoding": encoding,
            "topics": {"image": image_topic, "command": command_topic, "gt": gt_topic},
            "duration_s": count * FRAME_PERIOD_NS * 1e-9}


def refer_items(dataset, limit: Optional[int] = None) -> Iterable[BagItem]:
    """BagItems from a ``ReferDataset`` (sentences="all"), in file order, at most ``limit``."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    for i in range(n):
        item = dataset[i]
        yield BagItem(item["image"], item["sentence"], item["mask"])


# ---- bag-eval -----------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    """What a replay measured; ``to_dict`` is what ``bag-eval --json`` writes."""

    bag: str
    frames: int = 0
    processed: int = 0
    with_ground_truth: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    metrics: Optional[dict[str, Any]] = None
    stats: dict[str, Any] = field(default_factory=dict)
    out_bag: Optional[str] = None
    overlays: Optional[str] = None

    def latency_summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        if lat.size == 0:
            return {}
        return {
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p90": float(np.percentile(lat, 90)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "latency_ms_max": float(lat.max()),
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics or {})
        out.update(self.latency_summary())
        out.update({
            "bag": self.bag, "frames": self.frames, "processed": self.processed,
            "with_ground_truth": self.with_ground_truth,
            "dropped": self.stats.get("dropped", {}), "rejected": self.stats.get("rejected", {}),
            "errors": self.stats.get("errors", 0), "out_bag": self.out_bag, "overlays": self.overlays,
        })
        return out


def _topics_by_name(reader) -> dict[str, Any]:
    return {c.topic: c for c in reader.connections}


def _frame_from_message(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == COMPRESSED_TYPE:
        return compressed_to_rgb(msg.format, msg.data)
    return image_to_rgb(msg)


def replay_bag(
    bag: str | os.PathLike,
    segment: SegmentFn,
    *,
    distro: str = "jazzy",
    image_topic: str = IMAGE_TOPIC,
    command_topic: str = COMMAND_TOPIC,
    gt_topic: Optional[str] = GT_TOPIC,
    gt_required: bool = False,
    out: Optional[str | os.PathLike] = None,
    out_storage: Optional[str] = None,
    result_topic: str = RESULT_TOPIC,
    threshold: Optional[float] = None,
    overlays: Optional[str | os.PathLike] = None,
    max_overlays: int = 16,
    command_immediate: bool = False,
    warmup: bool = True,
    progress: bool = True,
) -> ReplayReport:
    """Replay ``bag`` through the node's :class:`Pipeline` synchronously (every frame, none dropped
    for speed), pairing each image with the command in force when it was recorded.

    Writes ``ReferringSegmentation`` results to ``out`` (same storage as the input unless
    ``out_storage``), scores them against ``gt_topic`` masks with RISMetrics, and draws a contact
    sheet of up to ``max_overlays`` frames to ``overlays``. ``warmup`` segments the first frame
    once before timing, so lazy initialisation does not end up in the latency figures.
    """
    from rosbags.highlevel import AnyReader
    from tqdm import tqdm

    from ..metrics import RISMetrics

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} does not exist")
    typestore = make_typestore(distro)
    report = ReplayReport(bag=str(bag))
    pipeline = Pipeline(segment, threshold=threshold, command_log_level=logging.DEBUG)
    metrics = RISMetrics()
    samples: list[dict[str, Any]] = []

    with AnyReader([bag], default_typestore=typestore) as reader:
        topics = _topics_by_name(reader)
        available = ", ".join(f"{t} ({c.msgtype})" for t, c in sorted(topics.items())) or "none"
        if image_topic not in topics:
            raise ValueError(f"bag {bag} has no image topic {image_topic!r}; its topics: {available}")
        image_conn = topics[image_topic]
        if image_conn.msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
            raise ValueError(f"{image_topic} is {image_conn.msgtype}, not {IMAGE_TYPE} or {COMPRESSED_TYPE}")
        if command_topic not in topics:
            raise ValueError(f"bag {bag} has no command topic {command_topic!r}; its topics: {available}")
        if topics[command_topic].msgtype != STRING_TYPE:
            raise ValueError(f"{command_topic} is {topics[command_topic].msgtype}, not {STRING_TYPE}")
        gt_conn = topics.get(gt_topic) if gt_topic else None
        if gt_topic and gt_conn is None:
            if gt_required:
                raise ValueError(f"bag {bag} has no ground-truth topic {gt_topic!r}; its topics: {available}")
            logger.warning("bag %s has no ground-truth topic %s: no metrics, latency only", bag, gt_topic)

        # Ground truth first (it may be recorded after its image): stamp -> packed mask.
        gt_masks: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
        if gt_conn is not None:
            for conn, _, raw in reader.messages(connections=[gt_conn]):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    mask = mono8_to_mask(msg)
                except ValueError as e:
                    pipeline.reject("ground_truth", str(e))
                    continue
                gt_masks[stamp_to_ns(msg.header)] = (mask.shape, np.packbits(mask))

        n_images = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
        stride = max(1, n_images // max(1, max_overlays)) if overlays else 0
        out_storage = out_storage or ("mcap" if any(bag.glob("*.mcap")) else "sqlite3")
        writer = _open_writer(Path(out), out_storage) if out is not None else None
        if writer is not None:
            writer.open()
        try:
            result_conn = writer.add_connection(result_topic, RESULT_TYPE, typestore=typestore) if writer else None
            command_conns = [c for c in reader.connections if c.topic == command_topic]
            image_conns = [c for c in reader.connections if c.topic == image_topic]
            bar = tqdm(total=n_images, desc="bag-eval", unit="frame", disable=not progress)
            for conn, timestamp, raw in reader.messages(connections=command_conns + image_conns):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == command_topic:
                    pipeline.set_command(msg.data, arrival_ns=timestamp, immediate=command_immediate)
                    continue
                bar.update(1)
                report.frames += 1
                pipeline.stats.count_received()
                try:
                    image = _frame_from_message(msg, conn.msgtype)
                except ValueError as e:
                    pipeline.reject("image", str(e))
                    continue
                stamp = stamp_to_ns(msg.header)
                # Pair on the recording clock, which commands share with images; header stamps can
                # be on another clock (a bag re-recorded with `ros2 bag record`).
                if warmup and (command := pipeline.commands.for_stamp(timestamp)) is not None:
                    warmup = False
                    try:
                        pipeline.run_segmenter(image, command.text)
                    except Exception:  # process() below meets, counts and logs the same failure
                        pass
                output = pipeline.process(Frame(image, timestamp, str(msg.header.frame_id), msg.header))
                if output is None:
                    continue
                report.processed += 1
                report.latencies_ms.append(output.latency_ms)
                if writer is not None:
                    header = _header(typestore, stamp, str(msg.header.frame_id))
                    result = result_message(typestore, output, header)
                    writer.write(result_conn, timestamp, typestore.serialize_cdr(result, RESULT_TYPE))
                gt = gt_masks.get(stamp)
                iou = None
                pred = np.asarray(output.result.mask, dtype=bool)
                gt_mask = None
                if gt is not None:
                    shape, packed = gt
                    gt_mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
                    if gt_mask.shape != pred.shape:
                        pipeline.reject("ground_truth", f"mask {gt_mask.shape} at stamp {stamp} does not match "
                                                        f"the image {pred.shape}")
                        gt_mask = None
                    else:
                        metrics.update(pred, gt_mask)
                        report.with_ground_truth += 1
                        union = np.logical_or(pred, gt_mask).sum()
                        iou = float(np.logical_and(pred, gt_mask).sum() / union) if union else 0.0
                if stride and (report.processed - 1) % stride == 0 and len(samples) < max_overlays:
                    samples.append({
                        "image": image, "pred": pred,
                        "target": gt_mask if gt_mask is not None else np.zeros_like(pred),
                        "sentence": output.command.text, "iou": iou,
                        "kind": f"score {float(output.result.score):.2f}",
                    })
            bar.close()
        finally:
            if writer is not None:
                writer.close()

    report.stats = pipeline.stats.snapshot()
    if report.with_ground_truth:
        report.metrics = metrics.compute()
    if out is not None:
        report.out_bag = str(out)
    if overlays and samples:
        from ..training.plots import plot_overlay_grid

        report.overlays = str(plot_overlay_grid(samples, overlays, title=f"{bag.name}: ground truth | prediction"))
    return report


def read_results(bag: str | os.PathLike, distro: str = "jazzy", topic: str = RESULT_TOPIC) -> list[Any]:
    """The deserialised ReferringSegmentation messages of a bag (for tests and notebooks)."""
    from rosbags.highlevel import AnyReader

    typestore = make_typestore(distro)
    with AnyReader([Path(bag)], default_typestore=typestore) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
