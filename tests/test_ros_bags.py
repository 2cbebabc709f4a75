"""Bag round trips without ROS: make a bag, replay it through the node's pipeline, read the results.

Both storage formats (sqlite3, MCAP) and both distros' type stores (Humble, Jazzy). The segmenter
here is deterministic (the red pixels of the image), so pairing, metrics and the result bag can be
checked exactly; tests/test_ros_cli.py runs the same path with a real Segmenter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coupalign_core.bags import bag_tools
from coupalign_core.bags.bag_tools import BagItem, read_results, replay_bag, write_bag
from coupalign_core.runtime.conversions import mono8_to_mask
from coupalign_core.inference import SegmentationResult


class RedSegmenter:
    """Mask = red pixels. Records (frame number encoded in pixel (0,0) green, text, image checksum)."""

    def __init__(self):
        self.calls: list[tuple[int, str, int]] = []

    def __call__(self, image: np.ndarray, text: str) -> Result:
        self.calls.append((int(image[0, 0, 1]), text, int(image.astype(np.int64).sum())))
        mask = (image[:, :, 0] > 200) & (image[:, :, 1] < 50)
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else None
        return SegmentationResult(mask, 0.9 if xs.size else 0.1, bool(xs.size), bbox)


def make_items(n: int = 6, h: int = 24, w: int = 32) -> list[BagItem]:
    """Frame i: a red box as the target; the GT of odd frames is two columns wider (IoU < 1)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        image = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        image[0, 0, 1] = 100 + i  # the frame number, readable by the segmenter
        x0, y0 = 2 + i, 3
        image[y0:y0 + 8, x0:x0 + 10] = (255, 0, 0)
        mask = np.zeros((h, w), bool)
        mask[y0:y0 + 8, x0:x0 + 10] = True
        if i % 2:
            mask[y0:y0 + 8, x0 + 10:x0 + 12] = True  # GT two columns wider: IoU 80/96
        items.append(BagItem(image, f"the red box number {i}", mask))
    return items


@pytest.mark.parametrize("storage, distro", [("sqlite3", "humble"), ("mcap", "jazzy"), ("mcap", "humble"),
                                             ("sqlite3", "jazzy")])
def test_make_bag_replay_and_read_results(tmp_path, storage, distro):
    items = make_items()
    bag = tmp_path / "in"
    summary = write_bag(items, bag, storage=storage, distro=distro, encoding="bgr8")
    assert summary["frames"] == len(items)
    assert any(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))

    seg = RedSegmenter()
    out = tmp_path / "out"
    report = replay_bag(bag, seg, distro=distro, out=out, progress=False)

    # every image paired with the sentence recorded just before it, image bytes intact (bgr8 -> RGB);
    # the first frame is segmented once more, untimed, as a warm-up
    assert seg.calls[0] == seg.calls[1]
    seg.calls.pop(0)
    assert [(n, t) for n, t, _ in seg.calls] == [(100 + i, it.sentence) for i, it in enumerate(items)]
    assert [c for _, _, c in seg.calls] == [int(it.image.astype(np.int64).sum()) for it in items]
    assert (report.frames, report.processed, report.with_ground_truth) == (6, 6, 6)
    m = report.metrics
    assert m["n"] == 6
    assert m["oIoU"] == pytest.approx(100 * (6 * 80) / (3 * 80 + 3 * 96))
    assert m["mIoU"] == pytest.approx(100 * (3 * 1.0 + 3 * 80 / 96) / 6)
    assert m["prec@0.9"] == pytest.approx(50.0) and m["prec@0.8"] == pytest.approx(100.0)
    assert len(report.latencies_ms) == 6 and report.latency_summary()["latency_ms_p50"] >= 0

    results = read_results(out, distro=distro)
    assert len(results) == 6
    stamps = [bag_tools.stamp_to_ns(r.header) for r in results]
    assert stamps == [bag_tools.START_NS + i * bag_tools.FRAME_PERIOD_NS for i in range(6)]
    for i, r in enumerate(results):
        assert r.command == items[i].sentence and r.command_id == i + 1
        assert r.found and r.score == pytest.approx(0.9)
        assert (r.bbox.x_offset, r.bbox.y_offset, r.bbox.width, r.bbox.height) == (2 + i, 3, 10, 8)
        assert r.mask.encoding == "mono8" and r.mask.header.stamp == r.header.stamp
        pred = mono8_to_mask(r.mask)
        assert pred.sum() == 80 and pred[3, 2 + i] and not pred[3, 1 + i]
        assert r.latency_ms >= 0
    assert any(out.glob("*.mcap" if storage == "mcap" else "*.db3"))  # same storage as the input


def test_overlays_json_and_unscored_frames(tmp_path):
    items = make_items(4)
    bag = tmp_path / "in"
    write_bag(items, bag, gt_topic="/other/gt")
    png = tmp_path / "sheet.png"
    report = replay_bag(bag, RedSegmenter(), overlays=png, max_overlays=2, progress=False)
    assert report.metrics is None and report.with_ground_truth == 0  # no GT on the default topic
    assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    data = report.to_dict()
    assert data["processed"] == 4 and "oIoU" not in data and "latency_ms_p90" in data
    with pytest.raises(ValueError, match="no ground-truth topic '/coupalign/gt_mask'"):
        replay_bag(bag, RedSegmenter(), gt_required=True, progress=False)


def test_frames_before_the_first_command_and_bad_images_are_counted(tmp_path):
    """A malformed image in the bag is rejected and counted; the rest are still scored."""
    from rosbags.rosbag2 import Writer

    typestore = bag_tools.make_typestore("jazzy")
    bag = tmp_path / "handmade"
    String = typestore.types["std_msgs/msg/String"]
    item = make_items(1)[0]
    with Writer(bag, version=8) as writer:
        img = writer.add_connection("/camera/image_raw", bag_tools.IMAGE_TYPE, typestore=typestore)
        cmd = writer.add_connection("/coupalign/command", bag_tools.STRING_TYPE, typestore=typestore)

        def image_at(t, step=None):
            from coupalign_core.runtime.conversions import rgb_to_image_fields

            fields = rgb_to_image_fields(item.image)
            if step is not None:
                fields.step = step
            msg = bag_tools.image_message(typestore, fields, bag_tools._header(typestore, t, "cam"))
            writer.write(img, t, typestore.serialize_cdr(msg, bag_tools.IMAGE_TYPE))

        image_at(10)  # before any command
        writer.write(cmd, 20, typestore.serialize_cdr(String(data="the red box"), bag_tools.STRING_TYPE))
        writer.write(cmd, 25, typestore.serialize_cdr(String(data="   "), bag_tools.STRING_TYPE))  # refused
        image_at(30, step=5)  # malformed: step < width * 3
        image_at(40)
    seg = RedSegmenter()
    report = replay_bag(bag, seg, warmup=False, progress=False)
    assert report.frames == 3 and report.processed == 1
    assert report.stats["dropped"] == {"no_command": 1}
    assert report.stats["rejected"] == {"command": 1, "image": 1}
    assert [t for _, t, _ in seg.calls] == ["the red box"]


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        replay_bag(tmp_path / "nope", RedSegmenter())
    bag = tmp_path / "in"
    write_bag(make_items(1), bag)
    with pytest.raises(ValueError, match=r"no image topic '/cam'; its topics: /camera/image_raw \(sensor_msgs/msg/Image\)"):
        replay_bag(bag, RedSegmenter(), image_topic="/cam")
    with pytest.raises(ValueError, match="/coupalign/gt_mask is sensor_msgs/msg/Image, not std_msgs/msg/String"):
        replay_bag(bag, RedSegmenter(), command_topic="/coupalign/gt_mask")
    with pytest.raises(FileExistsError, match="already exists"):
        write_bag(make_items(1), bag)
    with pytest.raises(ValueError, match="unknown ROS distro 'noetic'"):
        write_bag(make_items(1), tmp_path / "x", distro="noetic")
    with pytest.raises(ValueError, match="unknown bag storage 'rosbag1'"):
        write_bag(make_items(1), tmp_path / "y", storage="rosbag1")
    with pytest.raises(ValueError, match="the bag would be empty"):
        write_bag([], tmp_path / "z")
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_interfaces_load_into_the_rosbags_typestore(distro):
    ts = bag_tools.make_typestore(distro)
    fields = [name for name, _ in ts.get_msgdef(bag_tools.RESULT_TYPE).fields]
    assert fields == ["header", "command", "command_id", "found", "score", "bbox", "mask", "latency_ms"]
    request = [n for n, _ in ts.get_msgdef("coupalign_interfaces/srv/msg/Segment_Request").fields]
    response = [n for n, _ in ts.get_msgdef("coupalign_interfaces/srv/msg/Segment_Response").fields]
    assert request == ["text", "image"] and response == ["success", "message", "result"]
    # a full CDR round trip of a result
    header = bag_tools._header(ts, 5 * 10**9 + 7, "cam")
    ROI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    mask = bag_tools.image_message(ts, bag_tools.mask_to_mono8(np.eye(3, dtype=bool)), header)
    msg = ts.types[bag_tools.RESULT_TYPE](header, "cup", 3, True, 0.75, ROI(1, 2, 3, 4, False), mask, 12.5)
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, bag_tools.RESULT_TYPE), bag_tools.RESULT_TYPE)
    assert (back.command, back.command_id, back.found, back.score, back.latency_ms) == ("cup", 3, True, 0.75, 12.5)
    assert bag_tools.stamp_to_ns(back.header) == 5 * 10**9 + 7
    assert (mono8_to_mask(back.mask) == np.eye(3, dtype=bool)).all()


def test_split_service_needs_one_separator():
    with pytest.raises(ValueError, match="exactly one '---'"):
        bag_tools.split_service("string a\n")
    req, resp = bag_tools.split_service("string a\n---\nbool b\n")
    assert req.strip() == "string a" and resp.strip() == "bool b"


def test_interface_files_are_found_from_the_source_tree():
    text = bag_tools.interface_text("msg/ReferringSegmentation.msg")
    assert "sensor_msgs/Image mask" in text
    with pytest.raises(FileNotFoundError, match="not found; looked in"):
        bag_tools.interface_text("msg/Nope.msg")
    assert Path(__file__).resolve().parents[1] / "msg" in bag_tools.interface_dirs()


def test_a_bag_re_recorded_on_another_clock_still_pairs_commands(tmp_path):
    """`ros2 bag record` of a played bag stores receive times, while images keep their header
    stamps from the original clock: commands must be paired on the recording clock."""
    from rosbags.rosbag2 import Reader, Writer

    items = make_items(4)
    original = tmp_path / "original"
    write_bag(items, original)
    rerecorded = tmp_path / "rerecorded"
    shift = 95_797_601 * 1_000_000_000  # recorded much later than the header stamps say
    with Reader(original) as reader, Writer(rerecorded, version=8) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=bag_tools.make_typestore("jazzy"))
                 for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            writer.write(conns[conn.id], timestamp + shift, raw)

    seg = RedSegmenter()
    report = replay_bag(rerecorded, seg, progress=False)
    assert report.processed == 4 and report.with_ground_truth == 4
    assert [t for _, t, _ in seg.calls[1:]] == [it.sentence for it in items]
    assert report.metrics["oIoU"] == pytest.approx(100 * (4 * 80) / (2 * 80 + 2 * 96))
