"""Image conversions of the ROS node (no rclpy): every encoding with padded rows, every bad input."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from coupalign_core.runtime.conversions import (
    ImageFields,
    check_compressed_format,
    check_image_fields,
    compressed_to_rgb,
    decoded_to_rgb,
    image_to_rgb,
    mask_to_mono8,
    mask_to_mono8_buffer,
    mono8_to_mask,
    rgb_to_image_fields,
)
from coupalign_core.runtime.depth import depth_to_meters, intrinsics_from_k, mask_centroid_3d

H, W, PAD = 5, 7, 3


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, encoding: str, pad: int = PAD, bigendian: bool = False) -> ImageFields:
    """Pack (H, W[, C]) pixels into Image fields with ``pad`` junk bytes at the end of every row."""
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)
    junk = np.full((rows.shape[0], pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return ImageFields(pixels.shape[0], pixels.shape[1], encoding, int(bigendian), data.shape[1], data.tobytes())


@pytest.mark.parametrize("pad", [0, PAD])
def test_color_encodings_with_row_padding(rgb, pad):
    alpha = np.full((H, W, 1), 77, dtype=np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = image_to_rgb(_padded(pixels, encoding, pad))
        assert out.dtype == np.uint8 and out.shape == (H, W, 3), encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono_encodings_with_row_padding(bigendian):
    gray8 = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 3
    out = image_to_rgb(_padded(gray8, "mono8"))
    np.testing.assert_array_equal(out, np.repeat(gray8[:, :, None], 3, axis=2))

    gray16 = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    out16 = image_to_rgb(_padded(gray16, "mono16", pad=4, bigendian=bigendian))
    expected = np.round(gray16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out16[:, :, 0], expected)
    assert out16[0, 0, 0] == 0 and out16[-1, -1, 0] == 255


def test_message_data_types_are_all_accepted(rgb):
    """rclpy gives array.array('B'), rosbags numpy uint8, hand-made messages bytes or lists."""
    fields = rgb_to_image_fields(rgb)
    for data in (fields.data, array.array("B", fields.data), np.frombuffer(fields.data, np.uint8),
                 list(fields.data)):
        out = image_to_rgb(ImageFields(H, W, "rgb8", 0, W * 3, data))
        np.testing.assert_array_equal(out, rgb)


def test_round_trip_through_rgb8_and_bgr8(rgb):
    for encoding in ("rgb8", "bgr8"):
        fields = rgb_to_image_fields(rgb, encoding)
        assert fields.encoding == encoding and fields.step == W * 3
        np.testing.assert_array_equal(image_to_rgb(fields), rgb)
    bgr = rgb_to_image_fields(rgb, "bgr8")
    assert bgr.data[:3] == bytes(rgb[0, 0, ::-1])


@pytest.mark.parametrize(
    "fields, message",
    [
        (ImageFields(H, W, "yuv422", 0, W * 2, bytes(H * W * 2)), "unsupported image encoding 'yuv422'"),
        (ImageFields(0, W, "rgb8", 0, W * 3, b""), "zero-size image"),
        (ImageFields(H, 0, "rgb8", 0, 0, b""), "zero-size image"),
        (ImageFields(H, W, "rgb8", 0, W * 3 - 1, bytes(H * (W * 3 - 1))), "step 20 is smaller"),
        (ImageFields(H, W, "rgb8", 0, W * 3, bytes(H * W * 3 - 1)), "data size 104 does not match"),
        (ImageFields(H, W, "rgb8", 0, W * 3, bytes(H * W * 3 + 5)), "does not match step*height"),
        (ImageFields(H, W, "mono16", 0, W, bytes(H * W)), "step 7 is smaller"),
        (ImageFields(20000, 1, "mono8", 0, 1, bytes(20000)), "larger than"),
        (ImageFields(H, W, "rgb8", 0, W * 3, [300] * (H * W * 3)), "not a byte buffer"),
        (ImageFields(H, W, "rgb8", 0, W * 3, np.zeros(H * W * 3, np.float32)), "must be uint8"),
    ],
)
def test_bad_images_raise_value_error_naming_the_problem(fields, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        image_to_rgb(fields)
    if "byte buffer" not in message and "must be uint8" not in message:  # values: read on conversion
        with pytest.raises(ValueError, match=message.replace("*", r"\*")):
            check_image_fields(fields)  # what the node runs as each message arrives


class Unreadable(array.array):
    """A message buffer whose pixels must not be read by a check that runs on every message."""

    def __iter__(self):
        raise AssertionError("check_image_fields read the pixels")

    def __getitem__(self, index):
        raise AssertionError("check_image_fields read the pixels")


def test_checking_a_message_reads_no_pixel(rgb):
    check_image_fields(ImageFields(H, W, "rgb8", 0, W * 3, Unreadable("B", bytes(H * W * 3))))
    check_image_fields(_padded(rgb[:, :, 0].astype(np.uint16), "mono16", pad=2, bigendian=True))
    check_image_fields(ImageFields(H, W, "mono8", 0, W, list(range(H * W))))
    with pytest.raises(ValueError, match="data size 34 does not match"):
        check_image_fields(ImageFields(H, W, "mono8", 0, W, Unreadable("B", bytes(H * W - 1))))
    check_compressed_format("rgb8; jpeg compressed bgr8")
    with pytest.raises(ValueError, match="unsupported compressed image format"):
        check_compressed_format("16UC1; compressedDepth")


def test_compressed_jpeg_and_png(rgb):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(big, cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb("png", png.tobytes()), big)
    np.testing.assert_array_equal(compressed_to_rgb("bgr8; png compressed bgr8", array.array("B", png.tobytes())), big)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == big.shape and np.abs(out.astype(int) - big.astype(int)).mean() < 12
    # grayscale and 16-bit PNGs come out as RGB
    ok, gray = cv2.imencode(".png", big[:, :, 0])
    np.testing.assert_array_equal(compressed_to_rgb("png", gray.tobytes())[:, :, 1], big[:, :, 0])
    ok, g16 = cv2.imencode(".png", big[:, :, 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(compressed_to_rgb("png", g16.tobytes())[:, :, 2], big[:, :, 0])


@pytest.mark.parametrize(
    "fmt, data, message",
    [
        ("png", b"", "empty compressed image data"),
        ("jpeg", b"not a jpeg at all", "could not decode 17 bytes"),
        ("theora", b"\x00" * 10, "unsupported compressed image format 'theora'"),
        ("16UC1; compressedDepth png", b"\x00" * 10, "unsupported compressed image format"),
    ],
)
def test_bad_compressed_images(fmt, data, message):
    with pytest.raises(ValueError, match=message):
        compressed_to_rgb(fmt, data)


def test_mask_is_lossless_mono8_and_round_trips():
    mask = np.random.default_rng(1).random((H, W)) > 0.5
    fields = mask_to_mono8(mask)
    assert (fields.encoding, fields.step, fields.height, fields.width) == ("mono8", W, H, W)
    assert set(np.frombuffer(fields.data, np.uint8).tolist()) <= {0, 255}
    np.testing.assert_array_equal(mono8_to_mask(fields), mask)
    # a padded mono8 ground-truth mask with arbitrary non-zero values
    gt = np.where(mask, 7, 0).astype(np.uint8)
    np.testing.assert_array_equal(mono8_to_mask(_padded(gt, "mono8")), mask)
    with pytest.raises(ValueError, match="a mask must be mono8, got encoding 'rgb8'"):
        mono8_to_mask(ImageFields(H, W, "rgb8", 0, W * 3, bytes(H * W * 3)))
    with pytest.raises(ValueError, match="non-empty"):
        mask_to_mono8(np.zeros((0, 3), bool))


def test_mask_written_once_into_rclpy_storage():
    mask = np.random.default_rng(2).random((H, W)) > 0.5
    buffer = mask_to_mono8_buffer(mask)
    assert isinstance(buffer, array.array) and buffer.typecode == "B"  # what rclpy keeps uint8[] in
    assert bytes(buffer) == mask_to_mono8(mask).data
    assert bytes(mask_to_mono8_buffer(np.zeros((2, 3), bool))) == bytes(6)
    with pytest.raises(ValueError, match="non-empty"):
        mask_to_mono8_buffer(np.zeros((3,), bool))


def test_decoded_compressed_images_become_rgb():
    bgr = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decoded_to_rgb(bgr, "jpeg"), bgr[:, :, ::-1])
    bgra = np.concatenate([bgr, np.full((H, W, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(decoded_to_rgb(bgra, "png"), bgr[:, :, ::-1])
    np.testing.assert_array_equal(decoded_to_rgb(bgr[:, :, 0], "png")[:, :, 2], bgr[:, :, 0])
    with pytest.raises(ValueError, match="could not decode 12 bytes of 'png'"):
        decoded_to_rgb(None, "png", 12)
    with pytest.raises(ValueError, match="unsupported dtype float32"):
        decoded_to_rgb(bgr.astype(np.float32), "png")


def test_rgb_to_image_fields_refuses_wrong_arrays(rgb):
    with pytest.raises(ValueError, match="expected an"):
        rgb_to_image_fields(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="encoding must be"):
        rgb_to_image_fields(rgb, "mono8")


# ---- depth -------------------------------------------------------------------------------------
K = [100.0, 0.0, 3.0, 0.0, 100.0, 2.0, 0.0, 0.0, 1.0]


def test_depth_16uc1_and_32fc1_with_invalid_readings_and_padding():
    mm = np.full((H, W), 2000, dtype=np.uint16)
    mm[0, 0] = 0
    meters = depth_to_meters(_padded(mm, "16UC1", pad=2))
    assert np.isnan(meters[0, 0]) and np.allclose(meters[1:], 2.0)
    f = np.full((H, W), 1.5, dtype=np.float32)
    f[0, :3] = [np.nan, np.inf, -1.0]
    meters = depth_to_meters(_padded(f, "32FC1", pad=4, bigendian=True))
    assert np.isnan(meters[0, :3]).all() and np.allclose(meters[0, 3:], 1.5)
    with pytest.raises(ValueError, match="unsupported image encoding 'rgb8'"):
        depth_to_meters(ImageFields(H, W, "rgb8", 0, W * 3, bytes(H * W * 3)))


def test_centroid_back_projects_and_ignores_invalid_depth():
    depth = np.full((H, W), 2.0, dtype=np.float32)
    mask = np.zeros((H, W), bool)
    mask[2, 3] = mask[2, 5] = True  # u = 3 (= cx) and u = 5, v = 2 (= cy)
    mask[0, 0] = True
    depth[0, 0] = np.nan  # invalid: ignored
    point = mask_centroid_3d(mask, depth, K)
    assert point.num_points == 2
    assert point.z == pytest.approx(2.0)
    assert point.x == pytest.approx(((3 - 3) + (5 - 3)) / 2 * 2.0 / 100.0)
    assert point.y == pytest.approx(0.0)
    # range limits and too few points
    assert mask_centroid_3d(mask, depth, K, max_depth=1.0) is None
    assert mask_centroid_3d(mask, depth, K, min_points=3) is None
    # depth registered at half resolution: the mask is resized to it
    small = np.full((H * 2, W * 2), 1.0, dtype=np.float32)
    assert mask_centroid_3d(np.ones((H * 4, W * 4), bool), small, K).num_points == H * W * 4


def test_uncalibrated_camera_is_refused():
    with pytest.raises(ValueError, match="not calibrated"):
        intrinsics_from_k([0.0] * 9)
    with pytest.raises(ValueError, match="9 values"):
        intrinsics_from_k([1.0] * 4)


def test_one_encoding_table_for_messages_and_arrays():
    """image_to_rgb (ROS messages) and as_rgb (arrays) read the same table and agree pixel for pixel."""
    from coupalign_core.inference.inputs import IMAGE_ENCODINGS, as_rgb
    from coupalign_core.runtime import conversions

    assert set(conversions.COLOR_ENCODINGS) == set(IMAGE_ENCODINGS)
    rng = np.random.default_rng(3)
    for name, spec in IMAGE_ENCODINGS.items():
        info = np.iinfo(spec.dtype)
        shape = (H, W) if spec.channels == 1 else (H, W, spec.channels)
        pixels = rng.integers(0, info.max, size=shape, dtype=spec.dtype, endpoint=True)
        np.testing.assert_array_equal(image_to_rgb(_padded(pixels, name)), as_rgb(pixels, name), err_msg=name)
