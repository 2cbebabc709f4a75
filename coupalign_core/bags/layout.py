"""What a CoupAlign bag holds: its topics, their message types and make-bag's timeline.

- ``/camera/image_raw`` ``sensor_msgs/Image`` (rgb8 or bgr8), one per sentence
- ``/coupalign/command`` ``std_msgs/String``, recorded as reliable + transient local (the node's
  QoS), stamped ``COMMAND_LEAD_NS`` before its image, so it is in force at the image's stamp
- ``/coupalign/gt_mask`` ``sensor_msgs/Image`` mono8 (non-zero = target), same header stamp as
  its image
- with depth (``make-bag --dataset tabletop``), on the topics the RealSense ROS 2 driver
  (realsense2_camera, ``align_depth.enable:=true``) publishes: ``/camera/aligned_depth_to_color/image_raw``
  ``sensor_msgs/Image`` 16UC1 millimetres, ``/camera/color/camera_info`` and
  ``/camera/aligned_depth_to_color/camera_info`` ``sensor_msgs/CameraInfo``, each with its image's
  header stamp; and ``/coupalign/gt_point`` ``geometry_msgs/PointStamped``, the target's ground-truth
  3D point in the optical frame (frames that have a target only)
- ``/coupalign/result`` ``coupalign_ros/ReferringSegmentation``, in the bags bag-eval writes
  (``coupalign_interfaces/ReferringSegmentation`` in bags written before the interfaces moved into
  the coupalign_ros package; still readable, see ``LEGACY_RESULT_TYPES``)
"""

from __future__ import annotations

IMAGE_TOPIC = "/camera/image_raw"
COMMAND_TOPIC = "/coupalign/command"
GT_TOPIC = "/coupalign/gt_mask"
RESULT_TOPIC = "/coupalign/result"
COLOR_TOPIC = "/camera/color/image_raw"  # the colour image of a bag with depth (RealSense's name)
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
DEPTH_INFO_TOPIC = "/camera/aligned_depth_to_color/camera_info"
GT_POINT_TOPIC = "/coupalign/gt_point"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POINT_TYPE = "geometry_msgs/msg/PointStamped"
RESULT_TYPE = "coupalign_ros/msg/ReferringSegmentation"
# The same definition under its earlier package name, registered for reading older result bags.
LEGACY_RESULT_TYPES = ("coupalign_interfaces/msg/ReferringSegmentation",)

# make-bag's timeline: a fixed start (stamps are never 0, which some tools treat as "unset"),
# the command COMMAND_LEAD_NS before each frame, frames FRAME_PERIOD_NS apart (10 Hz).
START_NS = 1_700_000_000 * 10**9
COMMAND_LEAD_NS = 20_000_000
FRAME_PERIOD_NS = 100_000_000
