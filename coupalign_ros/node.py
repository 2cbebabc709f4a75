"""The coupalign ROS 2 node: a thin rclpy LifecycleNode around the ROS-free pipeline.

    ros2 run coupalign_ros coupalign_node --ros-args -p checkpoint:=/path/model.pt
    ros2 lifecycle set /coupalign configure && ros2 lifecycle set /coupalign activate
    (or: ros2 launch coupalign_ros coupalign.launch.py checkpoint:=/path/model.pt)

Lifecycle: configure loads the model and creates the ROS interfaces (a missing or incompatible
model fails the transition with the reason in the log); activate starts the inference worker;
deactivate stops it and frees GPU memory (the model is reloaded on the next activate); cleanup
and shutdown drop everything. Commands are recorded from configure on, so a latched command that
arrives before activate is not lost. /diagnostics reports the lifecycle state, finalized included.

Interfaces (names relative to the node; docs/ros.md has the QoS of each):
  subscribes  image_topic (sensor_msgs/Image, or CompressedImage on <image_topic>/compressed),
              command_topic (std_msgs/String) twice: reliable + volatile, which every publisher
              matches, and reliable + transient local, which receives a latched command sent
              before the node started; a message both deliver is one command (CommandBook),
              depth_topic + camera_info_topic when depth_topic is set
  publishes   ~/result (coupalign_ros/ReferringSegmentation), ~/mask (mono8),
              ~/overlay (rgb8, when publish_overlay or subscribed), ~/target_point
              (geometry_msgs/PointStamped, with depth), /diagnostics
  service     ~/segment (coupalign_ros/srv/Segment)

Camera messages are checked as they arrive (constant time) and wait unconverted in the pipeline's
newest-frame slot; the worker converts the one it processes (cv_bridge where installed, see
images.py). Everything that can be tested without ROS lives in conversions, pipeline, params,
depth and loading; this module only moves data between them and rclpy.
"""

from __future__ import annotations

import array
import collections
import functools
import logging
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header, String

from coupalign_core.inference.options import SegmenterOptions
from coupalign_core.inference.segmenter import Segmenter
from coupalign_core.runtime.conversions import (
    ImageFields,
    check_compressed_format,
    check_image_fields,
    mask_to_mono8_buffer,
    rgb_to_image_fields,
)
from coupalign_core.runtime.depth import depth_to_meters, mask_centroid_3d
from coupalign_core.runtime.loading import ModelLoadError, load_segmenter, release_accelerator_memory
from coupalign_core.runtime.pipeline import AnyFrame, CommandBook, PendingFrame, Pipeline, SegmentationOutput

from . import params as P
from .images import ImageConverter
from .msg import ReferringSegmentation
from .spin import spin_node
from .srv import Segment

_PARAMETER_TYPES = {bool: 1, int: 2, float: 3, str: 4}  # rcl_interfaces/ParameterType
IMAGE_SILENCE_S = 5.0  # an active node with image publishers but no image this long reports it


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def command_qos(durability: DurabilityPolicy) -> QoSProfile:
    """Reliable, keep last 10, ``durability``: the node's two command subscriptions.

    Depth 10, not 1: `ros2 bag play` (or a burst from a speech front end) can deliver two commands
    before the callback runs; the command book decides which applies.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=durability)


def command_source_key(msg: String, info: Any) -> Optional[tuple[int, Optional[int], str]]:
    """The identity of one published command, the same whichever subscription delivered it.

    The writer's source timestamp (and sequence number where the middleware gives one) with the
    text; None when the middleware reports no timestamp (then nothing is de-duplicated).
    """
    stamp = int(info.get("source_timestamp") or 0) if isinstance(info, dict) else 0
    if stamp <= 0:
        return None
    return stamp, info.get("publication_sequence_number"), msg.data


def _fill_image(msg: Image, fields: ImageFields, header) -> Image:
    msg.header = header
    msg.height, msg.width = fields.height, fields.width
    msg.encoding, msg.is_bigendian, msg.step = fields.encoding, fields.is_bigendian, fields.step
    # array.array is rclpy's storage for uint8[]; assigning bytes would check every byte in Python
    msg.data = array.array("B", fields.data)
    return msg


def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(
        name=spec.name,
        type=_PARAMETER_TYPES[spec.type],
        description=spec.description,
        additional_constraints=spec.constraints,
    )
    if spec.min is None or spec.max is None:
        return descriptor
    if spec.type is float:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                              step=0.0)]
    elif spec.type is int:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    return descriptor


class CoupAlignNode(LifecycleNode):
    """Segments, in every camera frame, the object the latest command refers to."""

    def __init__(self, node_name: str = "coupalign", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        for spec in P.PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._pipeline: Optional[Pipeline] = None
        self._segmenter: Optional[Segmenter] = None
        self._config: dict[str, Any] = {}
        self._active = False
        self._lifecycle = "unconfigured"  # the state each transition callback leads to (diagnostics)
        self._images = ImageConverter()
        self._latest: Optional[PendingFrame] = None  # for ~/segment without an image
        self._lost_images = 0  # image samples the middleware reports lost (not every middleware does)
        # monotonic time of the last camera message (or of activation): a silent topic with publishers
        # is reported, since a best-effort frame lost in transport leaves no other trace
        self._image_seen_s = 0.0
        self._depth: collections.deque = collections.deque(maxlen=8)  # (stamp_ns, meters, frame_id)
        self._camera_k: Optional[np.ndarray] = None
        self._lock = threading.Lock()
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._service = None
        self._service_group = MutuallyExclusiveCallbackGroup()

        # Diagnostics run in every state, so a monitor sees "unconfigured" or a failed configure.
        self._diagnostics = Updater(self)
        self._diagnostics.setHardwareID("none")
        self._diagnostics.add("coupalign", self._diagnose)
        self._load_error = ""

    # ---- parameters -------------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in P.PARAMETERS}

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        reason = P.validate_changes(self._values(), changes)
        if reason is not None:
            self.get_logger().warning(f"refused parameter change: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        pipeline = self._pipeline
        if pipeline is not None:  # the ones that take effect at once
            try:
                self._apply_now(pipeline, changes)
            except (ValueError, TypeError, RuntimeError) as e:
                self.get_logger().warning(f"refused parameter change: {e}")
                return SetParametersResult(successful=False, reason=str(e))
        later = [n for n in changes if n in P.SPECS and P.SPECS[n].applies == "configure"]
        if later and self._pipeline is not None:
            self.get_logger().info(f"{', '.join(later)} changed: takes effect at the next configure")
        return SetParametersResult(successful=True)

    def _apply_now(self, pipeline: Pipeline, changes: dict[str, Any]) -> None:
        """Hand the parameters that take effect at once to the pipeline (and through it the Segmenter).

        Without a loaded model (deactivated on a GPU) the threshold is read at the next load.
        """
        if "threshold" in changes and pipeline.segment is not None:
            pipeline.set_threshold(float(changes["threshold"]))
        limits = {name: changes[name] for name in ("max_rate_hz", "max_frame_age_s", "max_command_chars")
                  if name in changes}
        if limits:
            pipeline.update_limits(**limits)

    def _log(self, level: int, message: str) -> None:
        logger = self.get_logger()
        if level >= logging.ERROR:
            logger.error(message)
        elif level >= logging.WARNING:
            logger.warning(message)
        else:
            logger.info(message)

    # ---- lifecycle --------------------------------------------------------------------------
    def _lead_to(self, result: TransitionCallbackReturn, success: str, failure: str) -> TransitionCallbackReturn:
        """Record the state ``result`` leads to (rcl's default state machine) and return it."""
        self._lifecycle = success if result == TransitionCallbackReturn.SUCCESS else failure
        return result

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._lead_to(self._configure(), "inactive", "unconfigured")

    def _configure(self) -> TransitionCallbackReturn:
        values = self._values()
        problem = P.configure_problem(values)
        if problem is not None:
            self._load_error = problem
            self.get_logger().error(f"configure failed: {problem}")
            return TransitionCallbackReturn.FAILURE
        try:
            self._segmenter = self._load(values)
        except ModelLoadError as e:
            self._load_error = str(e)
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self._load_error = ""
        self._config = values
        self._pipeline = Pipeline(
            self._segmenter,
            commands=CommandBook(max_chars=values["max_command_chars"]),
            on_result=self._publish,
            clock_ns=lambda: self.get_clock().now().nanoseconds,
            max_frame_age_s=values["max_frame_age_s"],
            max_rate_hz=values["max_rate_hz"],
            log=self._log,
        )
        self._lost_images = 0
        if self._images.bridge is None:
            self.get_logger().info(f"images converted without cv_bridge: {self._images.fallback_reason}")
        self._create_interfaces(values)
        self.get_logger().info(
            f"configured: {self._describe()}; image {self._image_topic(values)} "
            f"({values['image_transport']}, {values['image_reliability']}, converted by {self._images.name}), "
            f"command {values['command_topic']} (reliable; volatile and transient local)"
        )
        if values["image_reliability"] == "best_effort" and values["image_transport"] == "raw":
            self.get_logger().info(
                "best-effort raw images: frames over about 1 MB (larger than 640x480 rgb8) can be lost in transport "
                "(docs/ros.md: camera sizes); image_reliability:=reliable or image_transport:=compressed for those")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._lead_to(self._activate(state), "active", "inactive")

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        pipeline = self._pipeline
        if pipeline is None:  # lifecycle allows activate only after a successful configure
            return TransitionCallbackReturn.FAILURE
        if self._segmenter is None:  # freed by deactivate
            try:
                self._segmenter = self._load(self._config)
            except ModelLoadError as e:
                self._load_error = str(e)
                self.get_logger().error(f"activate failed: {e}")
                return TransitionCallbackReturn.FAILURE
            pipeline.set_segmenter(self._segmenter)
        pipeline.start()
        self._active = True
        self._image_seen_s = time.monotonic()
        self.get_logger().info("active: segmenting camera frames")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=self._config.get("device", "cpu").startswith("cuda"))
        self.get_logger().info("inactive: processing stopped")
        return self._lead_to(super().on_deactivate(state), "inactive", "active")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        return self._lead_to(super().on_cleanup(state), "unconfigured", "inactive")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        self.get_logger().info("finalized: the node no longer segments; start it again to use it")
        return self._lead_to(super().on_shutdown(state), "finalized", "finalized")

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label}: dropping the model and interfaces")
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        return self._lead_to(TransitionCallbackReturn.SUCCESS, "unconfigured", "finalized")

    def _load(self, values: dict[str, Any]) -> Segmenter:
        """The Segmenter of ``values``' model, with the threshold parameter's current value."""
        self.get_logger().info(
            f"loading {values['checkpoint']} (backend={values['backend']}, device={values['device']}, "
            f"precision={values['precision']})"
        )
        options = SegmenterOptions(backend=values["backend"], device=values["device"], precision=values["precision"],
                                   threshold=float(self.get_parameter("threshold").value))
        return load_segmenter(values["checkpoint"], options)

    def _stop_processing(self, free_model: bool) -> None:
        self._active = False
        if self._pipeline is not None:
            self._pipeline.stop()
        if free_model and self._segmenter is not None:
            self._segmenter = None
            if self._pipeline is not None:
                self._pipeline.set_segmenter(None)
            release_accelerator_memory(self._config.get("device", "cpu"))

    def _describe(self) -> str:
        return self._segmenter.describe() if self._segmenter is not None else "no model loaded"

    # ---- interfaces -------------------------------------------------------------------------
    @staticmethod
    def _image_topic(values: dict[str, Any]) -> str:
        topic = values["image_topic"]
        return f"{topic}/compressed" if values["image_transport"] == "compressed" else topic

    def _create_interfaces(self, values: dict[str, Any]) -> None:
        reliability = (ReliabilityPolicy.RELIABLE if values["image_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability,
                               durability=DurabilityPolicy.VOLATILE)
        image_events = SubscriptionEventCallbacks(message_lost=self._on_image_lost)
        if values["image_transport"] == "compressed":
            self._subs.append(self.create_subscription(CompressedImage, self._image_topic(values),
                                                       self._on_compressed, image_qos, event_callbacks=image_events))
        else:
            self._subs.append(self.create_subscription(Image, values["image_topic"], self._on_image, image_qos,
                                                       event_callbacks=image_events))
        # Commands from any publisher: the volatile subscription matches every reliable publisher
        # (default QoS, `ros2 topic pub`, speech nodes); the transient-local one gets the last
        # latched command when the node starts after it was sent. A volatile publisher is
        # incompatible with the second by design, so that event is only logged at debug level.
        commands = MutuallyExclusiveCallbackGroup()  # one de-duplication at a time
        self._subs.append(self.create_subscription(
            String, values["command_topic"], self._on_command, command_qos(DurabilityPolicy.VOLATILE),
            callback_group=commands))
        self._subs.append(self.create_subscription(
            String, values["command_topic"], self._on_command, command_qos(DurabilityPolicy.TRANSIENT_LOCAL),
            callback_group=commands,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_volatile_command_publisher)))
        if values["depth_topic"]:
            self._subs.append(self.create_subscription(Image, values["depth_topic"], self._on_depth, image_qos))
            self._subs.append(self.create_subscription(CameraInfo, values["camera_info_topic"],
                                                       self._on_camera_info, image_qos))
            self._pubs["target_point"] = self.create_lifecycle_publisher(PointStamped, "~/target_point", 10)
        self._pubs["result"] = self.create_lifecycle_publisher(ReferringSegmentation, "~/result", 10)
        self._pubs["mask"] = self.create_lifecycle_publisher(Image, "~/mask", 10)
        self._pubs["overlay"] = self.create_lifecycle_publisher(Image, "~/overlay", 1)
        self._service = self.create_service(Segment, "~/segment", self._on_segment,
                                            callback_group=self._service_group)

    def _destroy_interfaces(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs.clear()
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        with self._lock:
            self._latest = None
            self._depth.clear()
            self._camera_k = None

    # ---- callbacks (executor threads); no exception may escape --------------------------------
    def _on_image(self, msg: Image) -> None:
        self._accept_frame(msg, check_image_fields, self._images.image)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._accept_frame(msg, _check_compressed, self._images.compressed)

    def _accept_frame(self, msg: Any, check: Callable[[Any], None], convert: Callable[[Any], np.ndarray]) -> None:
        """Check the message's fields now (constant time); the worker converts it if it is processed."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            check(msg)
        except ValueError as e:
            pipeline.reject("image", str(e))
            return
        except Exception as e:  # anything else a broken message can trigger
            pipeline.reject("image", f"{type(e).__name__}: {e}")
            return
        self._image_seen_s = time.monotonic()
        header = msg.header
        frame = PendingFrame(functools.partial(convert, msg), _stamp_ns(header), header.frame_id, header)
        with self._lock:
            self._latest = frame
        if self._active:
            pipeline.submit(frame)

    def _on_image_lost(self, info: Any) -> None:
        """The middleware lost image samples (best effort: a large frame loses a fragment)."""
        count = int(getattr(info, "total_count_change", 0) or 0)
        self._lost_images += count
        pipeline = self._pipeline
        if pipeline is not None and count > 0:
            pipeline.log("image_lost", logging.WARNING,
                         f"{count} image message(s) lost in transport ({self._lost_images} so far); with "
                         f"best-effort QoS large frames often never arrive: set image_reliability:=reliable "
                         f"or use image_transport:=compressed (docs/ros.md)")

    def _silent_image_topic(self) -> Optional[str]:
        """Why no camera message arrived for IMAGE_SILENCE_S while publishers are on the topic, or None.

        A raw frame that is too large for best-effort delivery is dropped by the middleware without
        a trace (Cyclone DDS reports no lost sample); this is how the node notices.
        """
        if not self._active or time.monotonic() - self._image_seen_s < IMAGE_SILENCE_S:
            return None
        topic = self._image_topic(self._config)
        publishers = self.get_publishers_info_by_topic(topic)
        if not publishers:
            return None
        reliable = sum(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
        advice = ("set image_reliability:=reliable (the publishers are reliable)"
                  if reliable == len(publishers) and self._config.get("image_reliability") != "reliable"
                  else "use image_transport:=compressed or smaller frames")
        return (f"{len(publishers)} publisher(s) on {topic} but no image for {IMAGE_SILENCE_S:g} s; if the camera "
                f"is publishing, its frames are probably lost in transport (best-effort QoS drops frames larger "
                f"than about 1 MB, docs/ros.md): {advice}")

    def _on_volatile_command_publisher(self, info: Any) -> None:
        self.get_logger().debug("a volatile command publisher cannot serve the transient-local subscription; "
                                "the volatile subscription receives its commands")

    def _on_command(self, msg: String, info: Any) -> None:  # two arguments: rclpy passes the MessageInfo
        pipeline = self._pipeline
        if pipeline is None:
            return
        now = self.get_clock().now().nanoseconds
        pipeline.set_command(msg.data, arrival_ns=now, immediate=bool(self.get_parameter("command_immediate").value),
                             source_key=command_source_key(msg, info))

    def _on_depth(self, msg: Image) -> None:
        try:
            meters = depth_to_meters(msg)
        except ValueError as e:
            if self._pipeline is not None:
                self._pipeline.reject("depth", str(e))
            return
        with self._lock:
            self._depth.append((_stamp_ns(msg.header), meters, msg.header.frame_id))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        k = np.asarray(msg.k, dtype=np.float64)
        if k.size == 9 and k[0] > 0 and k[4] > 0:
            with self._lock:
                self._camera_k = k
        elif self._pipeline is not None:
            self._pipeline.reject("camera_info", f"K is not calibrated: {k.tolist()}")

    # ---- outputs (worker thread) ------------------------------------------------------------
    def _result_message(self, output: SegmentationOutput, header) -> ReferringSegmentation:
        values = output.message_fields(mask=False)
        msg = ReferringSegmentation()
        msg.header = header
        msg.command, msg.command_id = values["command"], values["command_id"]
        msg.found, msg.score = values["found"], values["score"]
        x, y, w, h = values["bbox"]
        msg.bbox = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)
        mask = msg.mask
        mask.header = header
        mask.height, mask.width = output.result.mask.shape
        mask.encoding, mask.is_bigendian, mask.step = "mono8", 0, mask.width
        mask.data = mask_to_mono8_buffer(output.result.mask)  # written once, in rclpy's own storage
        msg.latency_ms = values["latency_ms"]
        return msg

    def _publish(self, output: SegmentationOutput) -> None:
        if not self._active:
            return
        header = output.frame.header
        result = self._result_message(output, header)
        self._pubs["result"].publish(result)
        self._pubs["mask"].publish(result.mask)
        overlay_pub = self._pubs["overlay"]
        if self.get_parameter("publish_overlay").value or overlay_pub.get_subscription_count() > 0:
            from coupalign_core.visualize import draw_bbox, overlay_mask

            alpha = float(self.get_parameter("overlay_alpha").value)
            image = overlay_mask(output.frame.image, output.result.mask, alpha=alpha)
            image = draw_bbox(image, output.result.bbox, label=f"{output.command.text} {output.result.score:.2f}")
            overlay_pub.publish(_fill_image(Image(), rgb_to_image_fields(image, "rgb8"), header))
        if "target_point" in self._pubs:
            self._publish_target_point(output)

    def _publish_target_point(self, output: SegmentationOutput) -> None:
        stamp = output.frame.stamp_ns
        max_delay = float(self.get_parameter("depth_max_delay_s").value) * 1e9
        with self._lock:
            k = self._camera_k
            candidates = [d for d in self._depth if abs(d[0] - stamp) <= max_delay]
        if k is None or not candidates or not output.found:
            return
        _, meters, frame_id = min(candidates, key=lambda d: abs(d[0] - stamp))
        point = mask_centroid_3d(
            output.result.mask, meters, k,
            min_depth=float(self.get_parameter("depth_min_m").value),
            max_depth=float(self.get_parameter("depth_max_m").value),
            min_points=int(self.get_parameter("depth_min_points").value),
        )
        if point is None:
            return
        msg = PointStamped()
        msg.header = Header(stamp=output.frame.header.stamp, frame_id=frame_id or output.frame.frame_id)
        msg.point.x, msg.point.y, msg.point.z = point.x, point.y, point.z
        self._pubs["target_point"].publish(msg)

    # ---- service ------------------------------------------------------------------------------
    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        pipeline = self._pipeline
        response.success = False
        if pipeline is None or not self._active or pipeline.segment is None:
            response.message = "the node is not active (configure and activate it first)"
            return response
        frame: Optional[AnyFrame]
        if request.image.width > 0 and request.image.height > 0:
            image = request.image
            try:
                check_image_fields(image)
                frame = pipeline.convert(PendingFrame(functools.partial(self._images.image, image),
                                                      _stamp_ns(image.header), image.header.frame_id, image.header))
            except ValueError as e:
                pipeline.reject("service", str(e))
                response.message = f"bad request image: {e}"
                return response
        else:
            with self._lock:
                frame = self._latest
            if frame is None:
                response.message = "no camera image received yet; send one in the request"
                return response
        try:
            output = pipeline.segment_once(frame, request.text)  # found: the Segmenter's decision
        except ValueError as e:  # the text or the image (counted as rejected)
            response.message = str(e)
            return response
        except Exception as e:  # counted as an error by the pipeline
            response.message = f"segmentation failed: {type(e).__name__}: {e}"
            self.get_logger().error(response.message)
            return response
        response.result = self._result_message(output, frame.header)
        response.success = True
        response.message = "found" if output.found else "not found"
        return response

    # ---- diagnostics --------------------------------------------------------------------------
    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        pipeline = self._pipeline
        state = self._lifecycle
        stat.add("state", state)
        stat.add("image_conversion", self._images.name)
        if pipeline is None:
            if state == "finalized":
                stat.summary(DiagnosticStatus.OK, "finalized (shut down; start the node again to use it)")
            elif self._load_error:
                stat.summary(DiagnosticStatus.ERROR, f"not configured: {self._load_error}")
            else:
                stat.summary(DiagnosticStatus.OK, state)
            return stat
        snap = pipeline.stats.snapshot()
        command = pipeline.commands.latest
        stat.add("model", str(self._config.get("checkpoint", "")))
        stat.add("backend", self._describe() if self._segmenter is not None else self._config.get("backend", ""))
        stat.add("device", str(self._config.get("device", "")))
        stat.add("precision", str(self._config.get("precision", "")))
        stat.add("command", command.text if command else "")
        stat.add("command_id", str(command.command_id if command else 0))
        stat.add("inference_rate_hz", f"{snap['rate_hz']:.2f}")
        stat.add("latency_ms_p50", f"{snap['latency_ms_p50']:.1f}")
        stat.add("latency_ms_p90", f"{snap['latency_ms_p90']:.1f}")
        stat.add("frames_received", str(snap["received"]))
        stat.add("frames_processed", str(snap["processed"]))
        stat.add("frames_dropped", str(sum(snap["dropped"].values())))
        for reason, count in sorted(snap["dropped"].items()):
            stat.add(f"dropped_{reason}", str(count))
        stat.add("images_lost_in_transport", str(self._lost_images))
        silence = self._silent_image_topic()
        if silence is not None:
            pipeline.log("image_silence", logging.WARNING, silence)
        stat.add("messages_rejected", str(sum(snap["rejected"].values())))
        for reason, count in sorted(snap["rejected"].items()):
            stat.add(f"rejected_{reason}", str(count))
        stat.add("errors", str(snap["errors"]))
        if snap["errors"]:
            stat.summary(DiagnosticStatus.WARN, f"{snap['errors']} segmentation errors; see the log")
        elif silence is not None:
            stat.summary(DiagnosticStatus.WARN, silence)
        elif self._lost_images and self._active and not snap["processed"]:
            stat.summary(DiagnosticStatus.WARN, f"{self._lost_images} images lost in transport and none processed: "
                                                "best-effort QoS drops large frames (image_reliability:=reliable)")
        elif not self._active:
            stat.summary(DiagnosticStatus.OK, state)
        elif command is None:
            stat.summary(DiagnosticStatus.OK, "active, waiting for a command")
        else:
            stat.summary(DiagnosticStatus.OK, f"active, {snap['rate_hz']:.1f} Hz")
        return stat


def _check_compressed(msg: CompressedImage) -> None:
    check_compressed_format(msg.format)
    if len(msg.data) == 0:
        raise ValueError(f"empty compressed image data (format {msg.format!r})")


def main(args: Optional[list[str]] = None) -> int:
    return spin_node(CoupAlignNode, lambda node: node._stop_processing(free_model=True), num_threads=3, args=args)


if __name__ == "__main__":
    sys.exit(main())
