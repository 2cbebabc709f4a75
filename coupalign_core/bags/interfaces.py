"""The coupalign_ros interfaces without ROS: find the package's .msg/.srv text and register it in a
rosbags type store, so the bags written here carry the same ``ReferringSegmentation`` the node publishes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .layout import LEGACY_RESULT_TYPES, RESULT_TYPE

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

DISTROS = ("humble", "jazzy")


def interface_dirs() -> list[Path]:
    """Where the msg/ and srv/ folders may be: source tree, pip/colcon install, ament prefixes."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2]]  # the source tree (editable install, tests)
    candidates.append(Path(sys.prefix) / "share" / "coupalign_ros")  # pip install (setup.py data_files)
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "coupalign_ros")  # rosidl installs msg/, srv/ there
    # colcon's install layout: <prefix>/lib/pythonX.Y/site-packages/coupalign_core/bags/interfaces.py
    if len(here.parents) > 5:
        candidates.append(here.parents[5] / "share" / "coupalign_ros")
    return candidates


def interface_text(relative: str) -> str:
    """The text of ``msg/ReferringSegmentation.msg`` or ``srv/Segment.srv``."""
    looked = []
    for base in interface_dirs():
        path = base / relative
        looked.append(str(path))
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"coupalign_ros interface file {relative} not found; looked in: {', '.join(looked)}")


def split_service(text: str) -> tuple[str, str]:
    """A .srv text -> (request, response) message texts, split on the '---' line."""
    lines = text.splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(separators) != 1:
        raise ValueError(f"a service definition needs exactly one '---' line, found {len(separators)}")
    i = separators[0]
    return "\n".join(lines[:i]) + "\n", "\n".join(lines[i + 1:]) + "\n"


def make_typestore(distro: str = "jazzy") -> Typestore:
    """The rosbags type store of ``distro`` with the coupalign_ros interfaces registered (and the
    result under its earlier names, so older result bags stay readable)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if distro not in DISTROS:
        raise ValueError(f"unknown ROS distro {distro!r}; supported: {', '.join(DISTROS)}")
    typestore = get_typestore(Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY)
    result = interface_text("msg/ReferringSegmentation.msg")
    types = {}
    for name in (RESULT_TYPE, *LEGACY_RESULT_TYPES):
        types.update(get_types_from_msg(result, name))
    # Bags never carry the service itself, but loading it proves Segment.srv is valid for rosbags
    # too; rosbags files every type under <pkg>/msg/ or <pkg>/<ns>/msg/, so these land in
    # coupalign_ros/srv/msg/Segment_{Request,Response}.
    request, response = split_service(interface_text("srv/Segment.srv"))
    types.update(get_types_from_msg(request, "coupalign_ros/srv/Segment_Request"))
    types.update(get_types_from_msg(response, "coupalign_ros/srv/Segment_Response"))
    typestore.register(types)
    from .speech import register_audio_types  # the audio capture drivers' messages (speech bags)

    register_audio_types(typestore)
    return typestore
