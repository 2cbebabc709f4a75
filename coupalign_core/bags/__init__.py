"""ROS 2 bags without ROS (through ``rosbags``): record refer-layout splits, replay a bag through the
node's pipeline and score it.

rosbags reads and writes rosbag2 in sqlite3 (.db3) and MCAP with the Humble and Jazzy type stores;
the coupalign_ros interfaces are registered from their own .msg/.srv text, so result bags carry the
same ``ReferringSegmentation`` the node publishes.

- :mod:`.layout`: the topics, message types and timeline of the bags make-bag writes
- :mod:`.interfaces`: the interface files and the rosbags type store
- :mod:`.messages`: rosbags messages to and from the pipeline's values
- :mod:`.files`: :class:`BagError`, output paths that are never silently replaced, :class:`BagWriter`
- :mod:`.reader`: :class:`BagReader`, which reads any bag or says in one line why it cannot
- :mod:`.cut_mcap`: the messages before the cut of an MCAP whose recording did not finish
- :mod:`.record`: :func:`write_bag` (make-bag)
- :mod:`.replay`: :func:`replay_bag` (bag-eval), :func:`read_results`
- :mod:`.report`: :class:`ReplayReport`
"""

from .files import BAG_VERSION, STORAGES, BagError, BagWriter, check_new_output
from .interfaces import DISTROS, interface_dirs, interface_text, make_typestore, split_service
from .layout import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    COLOR_TOPIC,
    COMMAND_LEAD_NS,
    COMMAND_TOPIC,
    COMPRESSED_TYPE,
    DEPTH_INFO_TOPIC,
    DEPTH_TOPIC,
    FRAME_PERIOD_NS,
    GT_POINT_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    POINT_TYPE,
    RESULT_TOPIC,
    RESULT_TYPE,
    START_NS,
    STRING_TYPE,
)
from .messages import image_message, make_header, result_message, stamp_to_ns
from .reader import BagReader
from .record import BagItem, refer_items, write_bag
from .replay import check_bag, read_results, replay_bag
from .report import ReplayReport

__all__ = [
    "BAG_VERSION", "CAMERA_INFO_TOPIC", "CAMERA_INFO_TYPE", "COLOR_TOPIC", "COMMAND_LEAD_NS", "COMMAND_TOPIC",
    "COMPRESSED_TYPE", "DEPTH_INFO_TOPIC", "DEPTH_TOPIC", "DISTROS", "FRAME_PERIOD_NS", "GT_POINT_TOPIC", "GT_TOPIC",
    "IMAGE_TOPIC", "IMAGE_TYPE", "POINT_TYPE", "RESULT_TOPIC", "RESULT_TYPE", "START_NS", "STORAGES", "STRING_TYPE",
    "BagError", "BagItem", "BagReader", "BagWriter", "ReplayReport",
    "check_bag", "check_new_output", "image_message", "interface_dirs", "interface_text", "make_header",
    "make_typestore", "read_results", "refer_items", "replay_bag", "result_message", "split_service",
    "stamp_to_ns", "write_bag",
]
