"""The node's parameters: names, types, defaults, descriptions, ranges and validators (no rclpy).

The node turns each :class:`ParamSpec` into a ``ParameterDescriptor`` and refuses a runtime change
that :func:`validate_changes` rejects, with its reason; keeping the rules here lets CI test them.
``config/coupalign.yaml`` holds the same defaults in ``ros2 param`` form (a test keeps them equal).

Parameters marked ``applies="configure"`` are read when the node is configured (model, topics,
QoS); changing one at runtime is validated and takes effect at the next configure. The others
take effect immediately.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import yaml

from coupalign_core.inference.options import BACKENDS, DEVICES, PRECISIONS

# The model's value sets are the Segmenter's own (coupalign_core.inference.options); the rest are ROS's.
RELIABILITIES = ("best_effort", "reliable")
IMAGE_TRANSPORTS = ("raw", "compressed")

# rcl's rules for a topic name before expansion: tokens of [A-Za-z0-9_] (not starting with a digit)
# separated by single slashes, optional leading '/' or '~/', substitutions in {}; no trailing slash.
_TOPIC_TOKEN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})$")


def topic_name_problem(name: str) -> Optional[str]:
    """None when ``name`` is a valid ROS 2 topic name, else why not."""
    if not name:
        return "is empty"
    body = name
    if body.startswith("~/"):
        body = body[2:]
    elif body == "~":
        return None
    elif body.startswith("/"):
        body = body[1:]
    if not body:
        return "has no name after the leading '/'"
    if body.endswith("/"):
        return "ends with '/'"
    for token in body.split("/"):
        if not token:
            return "contains '//'"
        if not _TOPIC_TOKEN.match(token):
            return (f"has an invalid part {token!r} (letters, digits and '_' only, not starting "
                    f"with a digit)")
    return None


def _topic(optional: bool) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if optional and value == "":
            return None
        problem = topic_name_problem(value)
        return None if problem is None else f"{value!r} is not a valid topic name: it {problem}"

    return check


def _existing_file_or_empty(value: Any) -> Optional[str]:
    if value == "":
        return None
    path = Path(os.path.expanduser(value))
    return None if path.is_file() else f"{value!r} does not exist or is not a file"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple[str, ...]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    applies: str = "now"  # "now" or "configure"

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def constraints(self) -> str:
        """Human-readable limits for the descriptor's additional_constraints."""
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.applies == "configure":
            parts.append("takes effect at the next configure")
        return "; ".join(parts)

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` is acceptable, else the reason (for SetParametersResult.reason)."""
        expected = self.type
        ok_type = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type = True
        if not ok_type:
            return f"{self.name} must be of type {expected.__name__}, got {type(value).__name__} {value!r}"
        if expected is float and not math.isfinite(value):
            return f"{self.name}={value!r} is not a finite number"
        if self.min is not None and value < self.min:
            return f"{self.name}={value!r} is below the minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.name}={value!r} is above the maximum {self.max:g}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name}={value!r} is not one of {', '.join(self.choices)}"
        if self.check is not None:
            reason = self.check(value)
            if reason is not None:
                return f"{self.name}: {reason}"
        return None


PARAMETERS: tuple[ParamSpec, ...] = (
    # model
    ParamSpec("checkpoint", "", "CoupAlign checkpoint (.pt) or exported model the Segmenter loads; "
              "required when the node is configured", check=_existing_file_or_empty, applies="configure"),
    ParamSpec("backend", "auto", "inference backend", choices=BACKENDS, applies="configure"),
    ParamSpec("device", "cpu", "inference device", choices=DEVICES, applies="configure"),
    ParamSpec("precision", "fp32", "inference precision", choices=PRECISIONS, applies="configure"),
    ParamSpec("threshold", 0.5, "score at or above which the referred object counts as found",
              min=0.0, max=1.0),
    # processing
    ParamSpec("max_rate_hz", 0.0, "most segmentations per second; 0 = as fast as the model runs",
              min=0.0, max=1000.0),
    ParamSpec("max_frame_age_s", 1.0, "frames older than this (stamp vs. node clock) are dropped as "
              "stale; 0 keeps every frame", min=0.0, max=3600.0),
    ParamSpec("command_immediate", False, "apply a new command to every frame from now on, instead of "
              "frames stamped at or after its arrival (use when the camera's clock is not the node's)"),
    ParamSpec("max_command_chars", 500, "longer commands are refused", min=1, max=100000),
    # topics and QoS
    ParamSpec("image_topic", "/camera/image_raw", "camera image topic (sensor_msgs/Image)",
              check=_topic(False), applies="configure"),
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image on image_topic; compressed: "
              "sensor_msgs/CompressedImage (jpeg/png) on image_topic + '/compressed'",
              choices=IMAGE_TRANSPORTS, applies="configure"),
    ParamSpec("image_reliability", "best_effort", "QoS reliability of the image subscription "
              "(best_effort also matches reliable publishers)", choices=RELIABILITIES, applies="configure"),
    ParamSpec("command_topic", "/coupalign/command", "command topic (std_msgs/String, reliable, "
              "transient local)", check=_topic(False), applies="configure"),
    # outputs
    ParamSpec("publish_overlay", False, "always publish ~/overlay; when false it is published only "
              "while someone subscribes"),
    ParamSpec("overlay_alpha", 0.5, "weight of the mask colour in ~/overlay", min=0.0, max=1.0),
    # depth -> ~/target_point
    ParamSpec("depth_topic", "", "aligned depth image (16UC1 mm or 32FC1 m); empty disables "
              "~/target_point", check=_topic(True), applies="configure"),
    ParamSpec("camera_info_topic", "", "CameraInfo of the depth image (its K back-projects the mask)",
              check=_topic(True), applies="configure"),
    ParamSpec("depth_min_m", 0.1, "depth readings nearer than this are ignored", min=0.0, max=100.0),
    ParamSpec("depth_max_m", 10.0, "depth readings farther than this are ignored", min=0.0, max=1000.0),
    ParamSpec("depth_min_points", 10, "fewest valid depth pixels under the mask for a target point",
              min=1, max=10_000_000),
    ParamSpec("depth_max_delay_s", 0.1, "largest stamp difference between a frame and the depth image "
              "used for it", min=0.0, max=10.0),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


def defaults() -> dict[str, Any]:
    return {spec.name: spec.default for spec in PARAMETERS}


def validate_changes(current: Mapping[str, Any], changes: Mapping[str, Any]) -> Optional[str]:
    """None when applying ``changes`` on top of ``current`` gives a valid set, else the reason.

    Unknown names are left alone (ROS itself owns ``use_sim_time`` and friends).
    """
    for name, value in changes.items():
        spec = SPECS.get(name)
        if spec is not None:
            reason = spec.problem(value)
            if reason is not None:
                return reason
    merged = {**current, **changes}
    if merged.get("depth_min_m", 0.0) >= merged.get("depth_max_m", float("inf")):
        return (f"depth_min_m ({merged['depth_min_m']:g}) must be below depth_max_m "
                f"({merged['depth_max_m']:g})")
    if merged.get("depth_topic") and not merged.get("camera_info_topic"):
        return "depth_topic is set but camera_info_topic is empty: the depth camera's K is needed"
    return None


def configure_problem(values: Mapping[str, Any]) -> Optional[str]:
    """What stops the node from configuring with ``values`` (beyond per-parameter validity)."""
    reason = validate_changes({}, values)
    if reason is not None:
        return reason
    if not values.get("checkpoint"):
        return "parameter 'checkpoint' is empty: set it to a model file (checkpoint:=/path/to/model.pt)"
    return None


def load_yaml_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The ``ros__parameters`` of a ``ros2 param`` YAML file (first node entry)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} is not a ros2 parameter file (a mapping of node name -> ros__parameters)")
    node_entry = next(iter(data.values()))
    if not isinstance(node_entry, dict) or "ros__parameters" not in node_entry:
        raise ValueError(f"{path}: the first entry has no 'ros__parameters'")
    return dict(node_entry["ros__parameters"])


def unknown_names(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - set(SPECS))
