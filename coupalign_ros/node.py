"""The coupalign ROS 2 node: a thin rclpy LifecycleNode around the ROS-free pipeline.

    ros2 run coupalign_ros coupalign_node --ros-args -p checkpoint:=/path/model.pt
    ros2 lifecycle set /coupalign configure && ros2 lifecycle set /coupalign activate
    (or: ros2 launch coupalign_ros coupalign.launch.py checkpoint:=/path/model.pt)

Lifecycle: configure loads the model and creates the ROS interfaces (a missing or incompatible
model fails the transition with the reason in the log); activate starts the inference worker;
deactivate stops it and frees GPU memory (the model is reloaded on the next activate); cleanup
and shutdown drop everything. Commands are recorded from configure on, so a latched command that
arrives before activate is not lost.

Interfaces (names relative to the node):
  subscribes  image_topic (sensor_msgs/Image, or CompressedImage on <image_topic>/compressed),
              command_topic (std_msgs/String, reliable + transient local),
              depth_topic + camera_info_topic when depth_topic is set
  publishes   ~/result (coupalign_ros/ReferringSegmentation), ~/mask (mono8),
              ~/overlay (rgb8, when publish_overlay or subscribed), ~/target_point
              (geometry_msgs/PointStamped, with depth), /diagnostics
  service     ~/segment (coupalign_ros/srv/Segment)

Everything that can be tested without ROS lives in conversions, pipeline, params, depth and
loading; this module only moves data between them and rclpy.
"""

from __future__ import annotations

import array
import collections
import logging
import sys
import threading
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header, String

from coupalign_core.inference.options import SegmenterOptions
from coupalign_core.inference.segmenter import Segmenter
from coupalign_core.runtime.conversions import ImageFields, compressed_to_rgb, image_to_rgb, rgb_to_image_fields
from coupalign_core.runtime.depth import depth_to_meters, mask_centroid_3d
from coupalign_core.runtime.loading import ModelLoadError, load_segmenter, release_accelerator_memory
from coupalign_core.runtime.pipeline import CommandBook, Frame, Pipeline, SegmentationOutput

from . import params as P
from .msg import ReferringSegmentation
from .srv import Segment

_PARAMETER_TYPES = {bool: 1, int: 2, float: 3, str: 4}  # rcl_interfaces/ParameterType


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


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
        self._latest: Optional[Frame] = None  # for ~/segment without an image
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
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
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
        self._create_interfaces(values)
        self.get_logger().info(
            f"configured: {self._describe()}; image {self._image_topic(values)} "
            f"({values['image_transport']}, {values['image_reliability']}), command {values['command_topic']}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
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
        self.get_logger().info("active: segmenting camera frames")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=self._config.get("device", "cpu").startswith("cuda"))
        self.get_logger().info("inactive: processing stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label}: dropping the model and interfaces")
        self._stop_processing(free_model=True)
        self._destroy_interfaces()
        self._pipeline = None
        return TransitionCallbackReturn.SUCCESS

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
        # Depth 10, not 1: `ros2 bag play` (or a burst from a speech front end) can deliver two
        # commands before the callback runs; the pipeline's command book decides which applies.
        command_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
        if values["image_transport"] == "compressed":
            self._subs.append(self.create_subscription(CompressedImage, self._image_topic(values),
                                                       self._on_compressed, image_qos))
        else:
            self._subs.append(self.create_subscription(Image, values["image_topic"], self._on_image, image_qos))
        self._subs.append(self.create_subscription(String, values["command_topic"], self._on_command, command_qos))
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
        self._accept_frame(msg.header, lambda: image_to_rgb(msg))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._accept_frame(msg.header, lambda: compressed_to_rgb(msg.format, msg.data))

    def _accept_frame(self, header, convert) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            image = convert()
        except ValueError as e:
            pipeline.reject("image", str(e))
            return
        except Exception as e:  # anything else a broken message can trigger
            pipeline.reject("image", f"{type(e).__name__}: {e}")
            return
        frame = Frame(image, _stamp_ns(header), header.frame_id, header)
        with self._lock:
            self._latest = frame
        if self._active:
            pipeline.submit(frame)

    def _on_command(self, msg: String) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        now = self.get_clock().now().nanoseconds
        pipeline.set_command(msg.data, arrival_ns=now, immediate=bool(self.get_parameter("command_immediate").value))

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
        values = output.message_fields()
        msg = ReferringSegmentation()
        msg.header = header
        msg.command, msg.command_id = values["command"], values["command_id"]
        msg.found, msg.score = values["found"], values["score"]
        x, y, w, h = values["bbox"]
        msg.bbox = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)
        _fill_image(msg.mask, values["mask"], header)
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
        frame: Optional[Frame]
        if request.image.width > 0 and request.image.height > 0:
            try:
                frame = Frame(image_to_rgb(request.image), _stamp_ns(request.image.header),
                              request.image.header.frame_id, request.image.header)
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
        state = "active" if self._active else ("inactive" if pipeline is not None else "unconfigured")
        stat.add("state", state)
        if pipeline is None:
            if self._load_error:
                stat.summary(DiagnosticStatus.ERROR, f"not configured: {self._load_error}")
            else:
                stat.summary(DiagnosticStatus.OK, "unconfigured")
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
        stat.add("messages_rejected", str(sum(snap["rejected"].values())))
        for reason, count in sorted(snap["rejected"].items()):
            stat.add(f"rejected_{reason}", str(count))
        stat.add("errors", str(snap["errors"]))
        if snap["errors"]:
            stat.summary(DiagnosticStatus.WARN, f"{snap['errors']} segmentation errors; see the log")
        elif not self._active:
            stat.summary(DiagnosticStatus.OK, "inactive")
        elif command is None:
            stat.summary(DiagnosticStatus.OK, "active, waiting for a command")
        else:
            stat.summary(DiagnosticStatus.OK, f"active, {snap['rate_hz']:.1f} Hz")
        return stat


def main(args: Optional[list[str]] = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = CoupAlignNode()
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_processing(free_model=True)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
