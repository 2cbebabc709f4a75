"""rosbags message objects to and from the pipeline's plain values (headers, images, results, QoS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..runtime.conversions import ImageFields, compressed_to_rgb, image_to_rgb
from ..runtime.pipeline import SegmentationOutput
from .layout import COMPRESSED_TYPE, IMAGE_TYPE, RESULT_TYPE

if TYPE_CHECKING:
    from rosbags.interfaces import Qos
    from rosbags.typesys.store import Typestore


def make_header(typestore: Typestore, stamp_ns: int, frame_id: str) -> Any:
    """A ``std_msgs/Header`` stamped ``stamp_ns``."""
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id)


def stamp_to_ns(header: Any) -> int:
    """A header's stamp in nanoseconds."""
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def image_message(typestore: Typestore, fields: ImageFields, header: Any) -> Any:
    """A ``sensor_msgs/Image`` from the pipeline's image fields."""
    Image = typestore.types[IMAGE_TYPE]
    return Image(header=header, height=fields.height, width=fields.width, encoding=fields.encoding,
                 is_bigendian=fields.is_bigendian, step=fields.step,
                 data=np.frombuffer(fields.data, dtype=np.uint8))


def camera_info_message(typestore: Typestore, width: int, height: int, k: Any, header: Any) -> Any:
    """A ``sensor_msgs/CameraInfo`` of an undistorted pinhole camera with matrix ``k`` (9 values, row-major)."""
    CameraInfo = typestore.types["sensor_msgs/msg/CameraInfo"]
    ROI = typestore.types["sensor_msgs/msg/RegionOfInterest"]
    kk = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.concatenate([kk, np.zeros((3, 1))], axis=1).reshape(-1)
    return CameraInfo(header=header, height=int(height), width=int(width), distortion_model="plumb_bob",
                      d=np.zeros(5, dtype=np.float64), k=kk.reshape(-1), r=np.eye(3, dtype=np.float64).reshape(-1),
                      p=p, binning_x=0, binning_y=0,
                      roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def point_message(typestore: Typestore, xyz: Any, header: Any) -> Any:
    """A ``geometry_msgs/PointStamped`` at ``xyz`` (metres, in ``header.frame_id``)."""
    Point = typestore.types["geometry_msgs/msg/Point"]
    PointStamped = typestore.types["geometry_msgs/msg/PointStamped"]
    x, y, z = (float(v) for v in xyz)
    return PointStamped(header=header, point=Point(x=x, y=y, z=z))


def image_to_rgb_array(message: Any, msgtype: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a ``sensor_msgs/Image`` or ``CompressedImage``; ValueError if malformed."""
    if msgtype == COMPRESSED_TYPE:
        return compressed_to_rgb(message.format, message.data)
    return image_to_rgb(message)


def result_message(typestore: Typestore, output: SegmentationOutput, header: Any) -> Any:
    """A ``ReferringSegmentation`` from a pipeline output (the node fills its message from the same fields)."""
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


def command_qos() -> Qos:
    """reliable + transient local, keep last 1: what the node subscribes with, so `ros2 bag play`
    republishes commands latched."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)
