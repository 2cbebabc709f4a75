"""bag-eval: replay a bag through the node's pipeline, write the results, score them, draw overlays.

The replay is synchronous (every frame, none dropped for speed), so it scores exactly what the node
computes for each frame. Commands and images are paired on the recording clock, which they share;
header stamps may be on another clock (a bag re-recorded with `ros2 bag record`) and only pair an
image with its ground truth.

A bag with aligned depth, CameraInfo and ground-truth points (``make-bag --dataset tabletop``) is
also scored in 3D: for every found target, the point the node would publish on ``~/target_point``
(:func:`~coupalign_core.runtime.depth.mask_centroid_3d`, with the node's default limits) against the
ground truth. Depth is read in a second pass over the bag, so only the found masks (bit-packed) are
held in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from ..runtime.conversions import mono8_to_mask
from ..runtime.depth import depth_to_meters, mask_centroid_3d
from ..runtime.pipeline import CommandBook, Frame, Pipeline, SegmentationOutput, SegmentFn
from .files import BagError, BagWriter, check_new_output, describe
from .layout import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    COMMAND_TOPIC,
    COMPRESSED_TYPE,
    DEPTH_TOPIC,
    GT_POINT_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    POINT_TYPE,
    RESULT_TOPIC,
    RESULT_TYPE,
    STRING_TYPE,
)
from .messages import image_to_rgb_array, make_header, result_message, stamp_to_ns
from .reader import BagReader, Topic
from .report import ReplayReport

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.typesys.store import Typestore

    from ..metrics import RISMetrics

logger = logging.getLogger(__name__)


# ---- topics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayTopics:
    """The topics a replay reads, checked against the bag."""

    image: Topic
    command: Topic
    ground_truth: Optional[Topic]  # None: the bag has none, latency only


def check_topics(reader: BagReader, image_topic: str = IMAGE_TOPIC, command_topic: str = COMMAND_TOPIC,
                 gt_topic: Optional[str] = GT_TOPIC, gt_required: bool = False) -> ReplayTopics:
    """The replay's topics; BagError naming the bag's topics when one is missing or of the wrong type."""
    topics = reader.topics
    available = ", ".join(f"{t.name} ({t.msgtype})" for t in sorted(topics.values(), key=lambda t: t.name)) or "none"
    if reader.warnings:  # a topic may be missing only because the recording was cut before it
        available += f" ({'; '.join(reader.warnings)})"
    image = topics.get(image_topic)
    if image is None:
        raise BagError(f"bag {reader.path} has no image topic {image_topic!r}; its topics: {available}")
    if image.msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise BagError(f"{image_topic} is {image.msgtype}, not {IMAGE_TYPE} or {COMPRESSED_TYPE}")
    command = topics.get(command_topic)
    if command is None:
        raise BagError(f"bag {reader.path} has no command topic {command_topic!r}; its topics: {available}")
    if command.msgtype != STRING_TYPE:
        raise BagError(f"{command_topic} is {command.msgtype}, not {STRING_TYPE}")
    truth = topics.get(gt_topic) if gt_topic else None
    if gt_topic and truth is None and gt_required:
        raise BagError(f"bag {reader.path} has no ground-truth topic {gt_topic!r}; its topics: {available}")
    if truth is not None and truth.msgtype != IMAGE_TYPE:
        raise BagError(f"{gt_topic} is {truth.msgtype}, not {IMAGE_TYPE} (mono8 masks)")
    return ReplayTopics(image, command, truth)


def check_bag(bag: str | os.PathLike[str], *, distro: str = "jazzy", image_topic: str = IMAGE_TOPIC,
              command_topic: str = COMMAND_TOPIC, gt_topic: Optional[str] = GT_TOPIC,
              gt_required: bool = False) -> ReplayTopics:
    """Open ``bag`` and check its topics without replaying it (what bag-eval does before loading a model)."""
    with BagReader(bag, distro) as reader:
        return check_topics(reader, image_topic, command_topic, gt_topic, gt_required)


# ---- ground truth -------------------------------------------------------------------------------
class GroundTruth:
    """Ground-truth masks by header stamp, bit-packed so a long bag's masks stay small in memory."""

    def __init__(self) -> None:
        self._packed: dict[int, tuple[tuple[int, int], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._packed)

    def add(self, stamp_ns: int, mask: np.ndarray) -> None:
        height, width = mask.shape
        self._packed[stamp_ns] = ((height, width), np.packbits(mask))

    def get(self, stamp_ns: int) -> Optional[np.ndarray]:
        """The (H, W) bool mask stamped ``stamp_ns``, or None."""
        if stamp_ns not in self._packed:
            return None
        (height, width), packed = self._packed[stamp_ns]
        return np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)


def index_ground_truth(reader: BagReader, topic: Topic, pipeline: Pipeline) -> GroundTruth:
    """Every mask on ``topic`` by its header stamp (read first: it may be recorded after its image);
    a malformed one is rejected and counted under ``ground_truth``."""
    truth = GroundTruth()
    for message in reader.messages([topic.name]):
        try:
            msg = reader.decode(message)
            truth.add(stamp_to_ns(msg.header), mono8_to_mask(msg))
        except ValueError as e:
            pipeline.reject("ground_truth", str(e))
    return truth


# ---- 3D target points ---------------------------------------------------------------------------
# The node's defaults (coupalign_ros/params.py: depth_min_m, depth_max_m, depth_min_points).
NODE_MIN_DEPTH_M = 0.1
NODE_MAX_DEPTH_M = 10.0
NODE_MIN_POINTS = 10


@dataclass(frozen=True)
class DepthTopics:
    depth: str
    camera_info: str
    gt_point: str


def depth_topics(reader: BagReader, depth_topic: Optional[str], camera_info_topic: Optional[str],
                 gt_point_topic: Optional[str]) -> Optional[DepthTopics]:
    """The depth, CameraInfo and ground-truth point topics when the bag has all three (of the right types)."""
    if not (depth_topic and camera_info_topic and gt_point_topic):
        return None
    topics = reader.topics
    wanted = ((depth_topic, IMAGE_TYPE), (camera_info_topic, CAMERA_INFO_TYPE), (gt_point_topic, POINT_TYPE))
    if not all(name in topics for name, _ in wanted):
        return None
    for name, msgtype in wanted:
        if topics[name].msgtype != msgtype:
            raise BagError(f"{name} is {topics[name].msgtype}, not {msgtype}")
    return DepthTopics(depth_topic, camera_info_topic, gt_point_topic)


class PointScorer:
    """Collects found masks of frames that have a ground-truth point, then scores them against depth."""

    def __init__(self, reader: BagReader, topics: DepthTopics, pipeline: Pipeline):
        self.topics = topics
        self.points: dict[int, np.ndarray] = {}
        self.k: dict[int, np.ndarray] = {}
        for message in reader.messages([topics.gt_point, topics.camera_info]):
            try:
                msg = reader.decode(message)
            except ValueError as e:
                pipeline.reject("ground_truth", str(e))
                continue
            if message.topic == topics.gt_point:
                p = msg.point
                self.points[stamp_to_ns(msg.header)] = np.array([p.x, p.y, p.z], dtype=np.float64)
            else:
                self.k[stamp_to_ns(msg.header)] = np.asarray(msg.k, dtype=np.float64)
        self._pending: dict[int, tuple[tuple[int, int], np.ndarray]] = {}

    def offer(self, output: SegmentationOutput) -> None:
        stamp = stamp_to_ns(output.frame.header)
        if output.found and stamp in self.points:
            mask = np.asarray(output.result.mask, dtype=bool)
            self._pending[stamp] = (mask.shape, np.packbits(mask))

    def score(self, reader: BagReader, pipeline: Pipeline) -> list[float]:
        """Errors (metres; NaN where depth gave no point) of the offered frames, in stamp order."""
        errors: dict[int, float] = {stamp: float("nan") for stamp in self._pending}
        for message in reader.messages([self.topics.depth]):
            try:
                msg = reader.decode(message)
                stamp = stamp_to_ns(msg.header)
                if stamp not in self._pending or stamp not in self.k:
                    continue
                meters = depth_to_meters(msg)
            except ValueError as e:
                pipeline.reject("depth", str(e))
                continue
            shape, packed = self._pending[stamp]
            mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
            point = mask_centroid_3d(mask, meters, self.k[stamp], min_depth=NODE_MIN_DEPTH_M,
                                     max_depth=NODE_MAX_DEPTH_M, min_points=NODE_MIN_POINTS)
            if point is not None:
                errors[stamp] = float(np.linalg.norm(np.array([point.x, point.y, point.z]) - self.points[stamp]))
        return [errors[s] for s in sorted(errors)]


# ---- frames -------------------------------------------------------------------------------------
def frames_with_commands(reader: BagReader, topics: ReplayTopics, pipeline: Pipeline, report: ReplayReport,
                         command_immediate: bool = False) -> Iterator[Frame]:
    """The bag's camera frames in recording order, each command handed to the pipeline as it comes.

    A frame's ``stamp_ns`` is its recording time (the clock commands are paired on) and ``header``
    the image's own header. Malformed commands and images are rejected and counted.
    """
    for message in reader.messages([topics.command.name, topics.image.name]):
        if message.topic == topics.command.name:
            try:
                text = reader.decode(message).data
            except ValueError as e:
                pipeline.reject("command", str(e))
                continue
            pipeline.set_command(text, arrival_ns=message.timestamp_ns, immediate=command_immediate)
            continue
        report.frames += 1
        pipeline.stats.count_received()
        try:
            msg = reader.decode(message)
            image = image_to_rgb_array(msg, message.msgtype)
        except ValueError as e:
            pipeline.reject("image", str(e))
            continue
        yield Frame(image, message.timestamp_ns, str(msg.header.frame_id), msg.header)


def warm_up(segment: SegmentFn, frame: Frame, commands: CommandBook) -> bool:
    """Segment ``frame`` once, untimed, so lazy initialisation stays out of the latency figures.

    False (nothing done) while no command is in force yet. A failure is left to the timed call,
    which meets, counts and logs it.
    """
    command = commands.for_stamp(frame.stamp_ns)
    if command is None:
        return False
    with contextlib.suppress(Exception):
        segment(frame.image, command.text)
    return True


# ---- overlays -----------------------------------------------------------------------------------
class OverlayPicks:
    """Every ``stride``-th segmented frame, up to ``limit``, for the contact sheet."""

    def __init__(self, expected_frames: int, limit: int):
        self.limit = limit
        self.stride = max(1, expected_frames // max(1, limit))
        self.samples: list[dict[str, Any]] = []
        self._score_index: list[Optional[int]] = []  # each sample's index in the RISMetrics

    def offer(self, processed: int, output: SegmentationOutput, target: Optional[np.ndarray],
              score_index: Optional[int]) -> None:
        """Keep frame number ``processed`` (1-based) if it is one of the picks."""
        if (processed - 1) % self.stride or len(self.samples) >= self.limit:
            return
        pred = np.asarray(output.result.mask, dtype=bool)
        self.samples.append({
            "image": output.frame.image, "pred": pred,
            "target": target if target is not None else np.zeros_like(pred),
            "sentence": output.command.text, "iou": None,
            "kind": f"score {float(output.result.score):.2f}",
        })
        self._score_index.append(score_index)

    def draw(self, metrics: RISMetrics, path: str | os.PathLike[str], title: str) -> Optional[str]:
        """The contact sheet at ``path`` (None when no frame was picked); IoUs from ``metrics``."""
        if not self.samples:
            return None
        from ..training.plots import plot_overlay_grid

        ious = metrics.ious()
        for sample, index in zip(self.samples, self._score_index):
            sample["iou"] = float(ious[index]) if index is not None else None
        try:
            return str(plot_overlay_grid(self.samples, Path(path), title=title))
        except OSError as e:
            raise BagError(f"cannot write the overlay sheet {path}: {describe(e)}") from e


# ---- replay -------------------------------------------------------------------------------------
def replay_bag(
    bag: str | os.PathLike[str],
    segment: SegmentFn,
    *,
    distro: str = "jazzy",
    image_topic: str = IMAGE_TOPIC,
    command_topic: str = COMMAND_TOPIC,
    gt_topic: Optional[str] = GT_TOPIC,
    gt_required: bool = False,
    depth_topic: Optional[str] = DEPTH_TOPIC,
    camera_info_topic: Optional[str] = CAMERA_INFO_TOPIC,
    gt_point_topic: Optional[str] = GT_POINT_TOPIC,
    out: Optional[str | os.PathLike[str]] = None,
    out_storage: Optional[str] = None,
    result_topic: str = RESULT_TOPIC,
    overlays: Optional[str | os.PathLike[str]] = None,
    max_overlays: int = 16,
    command_immediate: bool = False,
    warmup: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> ReplayReport:
    """Replay ``bag`` through the node's :class:`Pipeline`, pairing each image with the command in
    force when it was recorded; ``segment`` (a Segmenter) decides ``found``.

    Writes ``ReferringSegmentation`` results to the new bag ``out`` (same storage as the input unless
    ``out_storage``), scores them against ``gt_topic`` masks with RISMetrics, and draws a contact
    sheet of up to ``max_overlays`` frames to ``overlays``. ``out`` and ``overlays`` must not exist
    unless ``overwrite``. ``warmup`` segments the first frame once before timing. A bag cut short is
    replayed up to the cut; ``ReplayReport.warnings`` says what was lost. When the bag has
    ``depth_topic``, ``camera_info_topic`` and ``gt_point_topic``, the target point of every found
    target is scored too (``ReplayReport.point_errors_m``; see the module docstring).
    """
    from tqdm import tqdm

    from ..metrics import RISMetrics  # imports torch: only when a replay runs

    bag = Path(bag)
    check_new_output(out, "output bag", overwrite=overwrite, bag=True)
    check_new_output(overlays, "overlay sheet", overwrite=overwrite)
    commands = CommandBook()
    pipeline = Pipeline(segment, commands=commands, command_log_level=logging.DEBUG)
    report = ReplayReport(bag=str(bag))
    metrics = RISMetrics()

    with BagReader(bag, distro) as reader:
        topics = check_topics(reader, image_topic, command_topic, gt_topic, gt_required)
        for warning in reader.warnings:  # a cut file: say so before a long replay
            logger.warning("%s", warning)
        reported = len(reader.warnings)
        if gt_topic and topics.ground_truth is None:
            logger.warning("bag %s has no ground-truth topic %s: no metrics, latency only", bag, gt_topic)
        truth = index_ground_truth(reader, topics.ground_truth, pipeline) if topics.ground_truth else GroundTruth()
        with_depth = depth_topics(reader, depth_topic, camera_info_topic, gt_point_topic)
        points = PointScorer(reader, with_depth, pipeline) if with_depth else None
        picks = OverlayPicks(topics.image.count, max_overlays) if overlays else None
        writer_context = (BagWriter(out, out_storage or reader.storage, overwrite=overwrite)
                          if out is not None else contextlib.nullcontext(None))
        with writer_context as writer, tqdm(total=topics.image.count, desc="bag-eval", unit="frame",
                                            disable=not progress) as bar:
            result_conn = writer.connection(result_topic, RESULT_TYPE, reader.typestore) if writer else None
            for frame in frames_with_commands(reader, topics, pipeline, report, command_immediate):
                bar.update(1)
                if warmup and warm_up(segment, frame, commands):
                    warmup = False
                output = pipeline.process(frame)
                if output is None:
                    continue
                report.processed += 1
                report.latencies_ms.append(output.latency_ms)
                if writer is not None and result_conn is not None:
                    write_result(writer, result_conn, reader.typestore, output)
                target = score(metrics, truth, output, pipeline)
                if target is not None:
                    report.with_ground_truth += 1
                if picks is not None:
                    picks.offer(report.processed, output, target, len(metrics) - 1 if target is not None else None)
                if points is not None:
                    points.offer(output)
        if points is not None:
            report.point_errors_m = points.score(reader, pipeline)
        report.warnings = list(reader.warnings)

    for warning in report.warnings[reported:]:  # reading stopped at a corrupt record
        logger.warning("%s", warning)
    report.stats = pipeline.stats.snapshot()
    report.metrics = metrics.compute() if report.with_ground_truth else None
    report.out_bag = str(out) if out is not None else None
    if picks is not None and overlays is not None:
        report.overlays = picks.draw(metrics, overlays, title=f"{bag.name}: ground truth | prediction")
    return report


def write_result(writer: BagWriter, connection: Connection, typestore: Typestore, output: SegmentationOutput) -> None:
    """The output as a ``ReferringSegmentation`` with its image's header stamp, at the image's recording time."""
    frame = output.frame
    header = make_header(typestore, stamp_to_ns(frame.header), frame.frame_id)
    writer.write(connection, frame.stamp_ns, result_message(typestore, output, header), typestore)


def score(metrics: RISMetrics, truth: GroundTruth, output: SegmentationOutput,
          pipeline: Pipeline) -> Optional[np.ndarray]:
    """Add the output's mask against the ground truth of its image's header stamp to ``metrics``;
    the ground truth, or None when the frame has none (or one of another size, rejected and counted)."""
    stamp_ns = stamp_to_ns(output.frame.header)
    target = truth.get(stamp_ns)
    if target is None:
        return None
    pred = np.asarray(output.result.mask, dtype=bool)
    if target.shape != pred.shape:
        pipeline.reject("ground_truth",
                        f"mask {target.shape} at stamp {stamp_ns} does not match the image {pred.shape}")
        return None
    metrics.update(pred, target)
    return target


def read_results(bag: str | os.PathLike[str], distro: str = "jazzy", topic: str = RESULT_TOPIC) -> list[Any]:
    """The deserialised ReferringSegmentation messages of a bag (for tests and notebooks)."""
    with BagReader(bag, distro) as reader:
        return [reader.decode(message) for message in reader.messages([topic])]
