"""cv_bridge (what the node converts camera messages with) and the ROS-free converter (what bag
replay converts with) give the same bytes for every encoding the node accepts.

rgb8, bgr8, rgba8, bgra8, mono8 and mono16, tight and padded rows (padding of whole pixels, which
cv_bridge reads, and of odd byte counts, which the node leaves to the ROS-free converter), both
byte orders, and CompressedImage (jpeg, png in grey, colour, colour + alpha and 16 bits). The
messages are real sensor_msgs messages; skipped without ROS and cv_bridge (CI).
"""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; these tests run on a ROS machine")
cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge is not installed")

import cv2  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from coupalign_core.runtime.conversions import compressed_to_rgb, image_to_rgb  # noqa: E402
from coupalign_ros.images import ImageConverter, cv_bridge_reads  # noqa: E402

H, W = 48, 64
ENCODINGS = {"rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
             "mono8": (1, np.uint8), "mono16": (1, np.uint16)}
NATIVE_BIG = sys.byteorder == "big"


def message(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = NATIVE_BIG) -> Image:
    """An Image with ``pad`` junk bytes after every row, in the given byte order."""
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)
    data = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                step=data.shape[1])
    msg.data = array.array("B", data.tobytes())
    return msg


def pixels_for(encoding: str, seed: int) -> np.ndarray:
    channels, dtype = ENCODINGS[encoding]
    shape = (H, W) if channels == 1 else (H, W, channels)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def converter() -> ImageConverter:
    converter = ImageConverter()
    assert converter.name == "cv_bridge", converter.fallback_reason  # it passed its start-up test
    return converter


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_cv_bridge_and_the_ros_free_converter_agree_byte_for_byte(converter, encoding):
    channels, dtype = ENCODINGS[encoding]
    pixel_bytes = channels * np.dtype(dtype).itemsize
    bridge = cv_bridge.CvBridge()
    for seed, pad in enumerate((0, pixel_bytes, 4 * pixel_bytes, 3 if pixel_bytes != 3 else 2)):
        pixels = pixels_for(encoding, seed)
        msg = message(pixels, encoding, pad)
        ours = image_to_rgb(msg)
        assert ours.shape == (H, W, 3) and ours.dtype == np.uint8
        node = converter.image(msg)
        assert node.tobytes() == ours.tobytes(), (encoding, pad)
        assert ImageConverter(use_cv_bridge=False).image(msg).tobytes() == ours.tobytes()
        if pad % pixel_bytes == 0:  # what cv_bridge reads: compare with it directly
            assert cv_bridge_reads(msg)
            direct = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            assert np.ascontiguousarray(direct).tobytes() == ours.tobytes(), (encoding, pad)
        else:  # rows padded by part of a pixel: cv_bridge would read shifted rows
            assert not cv_bridge_reads(msg)


@pytest.mark.parametrize("encoding", ["mono16", "rgb8"])
def test_foreign_byte_order(converter, encoding):
    """A message in the other byte order: cv_bridge 4.x calls ndarray.newbyteorder, gone in NumPy 2,
    so the node converts it with the ROS-free converter; the same image in native order through
    cv_bridge gives the same bytes."""
    pixels = pixels_for(encoding, 7)
    foreign = message(pixels, encoding, pad=2 * ENCODINGS[encoding][0], big_endian=not NATIVE_BIG)
    native = message(pixels, encoding, pad=2 * ENCODINGS[encoding][0], big_endian=NATIVE_BIG)
    assert not cv_bridge_reads(foreign) and cv_bridge_reads(native)
    ours = image_to_rgb(foreign)
    assert converter.image(foreign).tobytes() == ours.tobytes()
    assert cv_bridge.CvBridge().imgmsg_to_cv2(native, desired_encoding="rgb8").tobytes() == ours.tobytes()
    try:
        cv_bridge.CvBridge().imgmsg_to_cv2(foreign, desired_encoding="rgb8")
    except AttributeError as e:  # NumPy 2: the reason the node does not hand these to cv_bridge
        assert "newbyteorder" in str(e)


def test_compressed_images_agree(converter):
    rng = np.random.default_rng(3)
    bgr = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
    cases = {
        "jpeg": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
        "rgb8; jpeg compressed bgr8": cv2.imencode(".jpg", bgr)[1],
        "png": cv2.imencode(".png", bgr)[1],
        "bgra8; png compressed bgra8": cv2.imencode(".png", np.concatenate([bgr, bgr[:, :, :1]], axis=2))[1],
        "mono8; png compressed mono8": cv2.imencode(".png", bgr[:, :, 0])[1],
        "mono16; png compressed mono16": cv2.imencode(".png", bgr[:, :, 0].astype(np.uint16) * 257)[1],
    }
    for fmt, encoded in cases.items():
        msg = CompressedImage(format=fmt)
        msg.data = array.array("B", encoded.tobytes())
        ours = compressed_to_rgb(msg.format, msg.data)
        assert ours.shape == (H, W, 3)
        assert converter.compressed(msg).tobytes() == ours.tobytes(), fmt
    # 8-bit colour: cv_bridge's own conversion to rgb8 agrees too
    msg = CompressedImage(format="png")
    msg.data = array.array("B", cases["png"].tobytes())
    direct = cv_bridge.CvBridge().compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
    assert direct.tobytes() == compressed_to_rgb("png", msg.data).tobytes()


def test_broken_messages_are_value_errors(converter):
    empty = CompressedImage(format="jpeg")
    with pytest.raises(ValueError, match="empty compressed image data"):
        converter.compressed(empty)
    junk = CompressedImage(format="jpeg")
    junk.data = array.array("B", b"not a jpeg at all")
    with pytest.raises(ValueError, match="could not decode 17 bytes"):
        converter.compressed(junk)
    depth = CompressedImage(format="16UC1; compressedDepth png")
    depth.data = array.array("B", b"\x00" * 10)
    with pytest.raises(ValueError, match="unsupported compressed image format"):
        converter.compressed(depth)


def test_the_frame_path_at_camera_size_is_one_conversion(converter):
    """640x480 bgr8, as a camera sends it: cv_bridge's result is the RGB array the Segmenter takes."""
    pixels = pixels_for("bgr8", 11)
    big = np.ascontiguousarray(cv2.resize(pixels, (640, 480), interpolation=cv2.INTER_NEAREST))
    msg = message(big, "bgr8")
    rgb = converter.image(msg)
    assert rgb.flags.c_contiguous and rgb.shape == (480, 640, 3)
    assert rgb.tobytes() == cv2.cvtColor(big, cv2.COLOR_BGR2RGB).tobytes() == image_to_rgb(msg).tobytes()
