"""Camera messages -> (H, W, 3) uint8 RGB for the node: cv_bridge where it is installed and can read
the message, ``coupalign_core.runtime.conversions`` otherwise (and always for bags, which run without ROS).

cv_bridge is what every ROS user knows, so the node uses it; the project's own converter stays for
the messages cv_bridge cannot read in this setup, each of which would otherwise fail:

- byte order other than the machine's: cv_bridge calls ``ndarray.newbyteorder``, which NumPy 2
  removed (an AttributeError for every big-endian message, 8-bit ones included);
- rows padded by a number of bytes that is not a whole number of pixels: cv_bridge assumes the row
  stride is a whole number of pixels and would read shifted rows.

tests/ros/test_cv_bridge.py checks that both give the same bytes for every encoding the node accepts.
Every malformed message raises ValueError naming the problem (the node counts it as a rejected image).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from coupalign_core.runtime.conversions import (
    COLOR_ENCODINGS,
    check_compressed_format,
    compressed_to_rgb,
    decoded_to_rgb,
    image_to_rgb,
)

try:  # cv_bridge is optional: a workspace without vision_opencv still runs the node
    from cv_bridge import CvBridge, CvBridgeError
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None
    CvBridgeError = RuntimeError


def cv_bridge_reads(msg: Any) -> bool:
    """Whether cv_bridge converts this (already checked) ``sensor_msgs/Image`` correctly here."""
    native_big = sys.byteorder == "big"
    if bool(int(msg.is_bigendian)) != native_big:
        return False
    channels, dtype = COLOR_ENCODINGS[str(msg.encoding)]
    return int(msg.step) % (channels * dtype.itemsize) == 0


def working_bridge() -> tuple[Optional[Any], str]:
    """A CvBridge that converted a test image, or None and why not.

    cv_bridge imports its compiled part only when it converts, and that part is built for one
    NumPy (a NumPy 1 build fails under NumPy 2); with OpenCV 5 its Python part fails too. Trying one
    1x1 bgr8 image at start-up keeps such a setup from rejecting every camera frame.
    """
    if CvBridge is None:
        return None, "cv_bridge is not installed"
    try:
        bridge = CvBridge()
        probe = bridge.cv2_to_imgmsg(np.zeros((1, 1, 3), np.uint8), encoding="bgr8")
        if bridge.imgmsg_to_cv2(probe, desired_encoding="rgb8").shape != (1, 1, 3):
            return None, "cv_bridge returned a wrong shape for a test image"
    except Exception as e:  # ImportError of the compiled part, OpenCV 5's KeyError, ...
        return None, f"cv_bridge does not work here ({type(e).__name__}: {e})"
    return bridge, ""


class ImageConverter:
    """Converts ``sensor_msgs/Image`` and ``CompressedImage`` messages to RGB arrays.

    ``use_cv_bridge`` False, or a cv_bridge that is missing or fails its start-up test
    (:func:`working_bridge`, the reason in :attr:`fallback_reason`), converts everything with the
    project's own code; :attr:`name` says which is in use (the node logs it and reports it on
    /diagnostics).
    """

    def __init__(self, use_cv_bridge: bool = True):
        self.bridge: Optional[Any] = None
        self.fallback_reason = "not asked to use cv_bridge"
        if use_cv_bridge:
            self.bridge, self.fallback_reason = working_bridge()

    @property
    def name(self) -> str:
        return "cv_bridge" if self.bridge is not None else "coupalign_core.runtime.conversions"

    def image(self, msg: Any) -> np.ndarray:
        """A ``sensor_msgs/Image`` in an encoding of ``COLOR_ENCODINGS`` -> (H, W, 3) uint8 RGB."""
        if self.bridge is None or not cv_bridge_reads(msg):
            return image_to_rgb(msg)
        try:
            rgb: np.ndarray = self.bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except (CvBridgeError, TypeError, ValueError) as e:
            raise ValueError(f"cv_bridge could not convert the {msg.encoding} image: {e}") from e
        return rgb

    def compressed(self, msg: Any) -> np.ndarray:
        """A ``sensor_msgs/CompressedImage`` (jpeg or png; grey, colour, alpha, 16-bit) -> RGB.

        cv_bridge decodes (``passthrough``: its own colour conversion assumes 8-bit BGR, which a
        grey, BGRA or 16-bit PNG is not); the channels become RGB as in ``compressed_to_rgb``.
        """
        if self.bridge is None:
            return compressed_to_rgb(msg.format, msg.data)
        check_compressed_format(msg.format)
        size = len(msg.data)
        if size == 0:
            raise ValueError(f"empty compressed image data (format {msg.format!r})")
        try:
            decoded = self.bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="passthrough")
        except Exception as e:  # cv2.error for data that is not an image
            raise ValueError(f"could not decode {size} bytes of {msg.format!r} image data: {e}") from e
        return decoded_to_rgb(decoded, msg.format, size)
