"""Bag round trips without ROS: make a bag, replay it through the node's pipeline, read the results.

Both storage formats (sqlite3, MCAP) and both distros' type stores (Humble, Jazzy). The segmenter
here is deterministic (the red pixels of the image), so pairing, metrics and the result bag can be
checked exactly; tests/test_ros_cli.py runs the same path with a real Segmenter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coupalign_core import bags
from coupalign_core.bags import BagError, BagItem, read_results, replay_bag, write_bag
from coupalign_core.inference import SegmentationResult
from coupalign_core.runtime.conversions import mask_to_mono8, mono8_to_mask


class RedSegmenter:
    """Mask = red pixels. Records (frame number encoded in pixel (0,0) green, text, image checksum)."""

    def __init__(self):
        self.calls: list[tuple[int, str, int]] = []

    def __call__(self, image: np.ndarray, text: str) -> SegmentationResult:
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
    stamps = [bags.stamp_to_ns(r.header) for r in results]
    assert stamps == [bags.START_NS + i * bags.FRAME_PERIOD_NS for i in range(6)]
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

    typestore = bags.make_typestore("jazzy")
    bag = tmp_path / "handmade"
    String = typestore.types["std_msgs/msg/String"]
    item = make_items(1)[0]
    with Writer(bag, version=8) as writer:
        img = writer.add_connection("/camera/image_raw", bags.IMAGE_TYPE, typestore=typestore)
        cmd = writer.add_connection("/coupalign/command", bags.STRING_TYPE, typestore=typestore)

        def image_at(t, step=None):
            from coupalign_core.runtime.conversions import rgb_to_image_fields

            fields = rgb_to_image_fields(item.image)
            if step is not None:
                fields.step = step
            msg = bags.image_message(typestore, fields, bags.make_header(typestore, t, "cam"))
            writer.write(img, t, typestore.serialize_cdr(msg, bags.IMAGE_TYPE))

        image_at(10)  # before any command
        writer.write(cmd, 20, typestore.serialize_cdr(String(data="the red box"), bags.STRING_TYPE))
        writer.write(cmd, 25, typestore.serialize_cdr(String(data="   "), bags.STRING_TYPE))  # refused
        image_at(30, step=5)  # malformed: step < width * 3
        image_at(40)
    seg = RedSegmenter()
    report = replay_bag(bag, seg, warmup=False, progress=False)
    assert report.frames == 3 and report.processed == 1
    assert report.stats["dropped"] == {"no_command": 1}
    assert report.stats["rejected"] == {"command": 1, "image": 1}
    assert [t for _, t, _ in seg.calls] == ["the red box"]


def test_bad_arguments(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        replay_bag(tmp_path / "nope", RedSegmenter())
    bag = tmp_path / "in"
    write_bag(make_items(1), bag)
    with pytest.raises(BagError,
                       match=r"no image topic '/cam'; its topics: /camera/image_raw \(sensor_msgs/msg/Image\)"):
        replay_bag(bag, RedSegmenter(), image_topic="/cam")
    with pytest.raises(BagError, match="/coupalign/gt_mask is sensor_msgs/msg/Image, not std_msgs/msg/String"):
        replay_bag(bag, RedSegmenter(), command_topic="/coupalign/gt_mask")
    with pytest.raises(BagError, match="already exists; choose another path or pass --overwrite"):
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
    ts = bags.make_typestore(distro)
    fields = [name for name, _ in ts.get_msgdef(bags.RESULT_TYPE).fields]
    assert fields == ["header", "command", "command_id", "found", "score", "bbox", "mask", "latency_ms"]
    request = [n for n, _ in ts.get_msgdef("coupalign_ros/srv/msg/Segment_Request").fields]
    response = [n for n, _ in ts.get_msgdef("coupalign_ros/srv/msg/Segment_Response").fields]
    assert request == ["text", "image"] and response == ["success", "message", "result"]
    # a full CDR round trip of a result
    header = bags.make_header(ts, 5 * 10**9 + 7, "cam")
    ROI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    mask = bags.image_message(ts, mask_to_mono8(np.eye(3, dtype=bool)), header)
    msg = ts.types[bags.RESULT_TYPE](header, "cup", 3, True, 0.75, ROI(1, 2, 3, 4, False), mask, 12.5)
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, bags.RESULT_TYPE), bags.RESULT_TYPE)
    assert (back.command, back.command_id, back.found, back.score, back.latency_ms) == ("cup", 3, True, 0.75, 12.5)
    assert bags.stamp_to_ns(back.header) == 5 * 10**9 + 7
    assert (mono8_to_mask(back.mask) == np.eye(3, dtype=bool)).all()


def test_split_service_needs_one_separator():
    with pytest.raises(ValueError, match="exactly one '---'"):
        bags.split_service("string a\n")
    req, resp = bags.split_service("string a\n---\nbool b\n")
    assert req.strip() == "string a" and resp.strip() == "bool b"


def test_interface_files_are_found_from_the_source_tree():
    text = bags.interface_text("msg/ReferringSegmentation.msg")
    assert "sensor_msgs/Image mask" in text
    with pytest.raises(FileNotFoundError, match="not found; looked in"):
        bags.interface_text("msg/Nope.msg")
    assert Path(__file__).resolve().parents[1] in bags.interface_dirs()  # the checkout: msg/ and srv/


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
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=bags.make_typestore("jazzy"))
                 for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            writer.write(conns[conn.id], timestamp + shift, raw)

    seg = RedSegmenter()
    report = replay_bag(rerecorded, seg, progress=False)
    assert report.processed == 4 and report.with_ground_truth == 4
    assert [t for _, t, _ in seg.calls[1:]] == [it.sentence for it in items]
    assert report.metrics["oIoU"] == pytest.approx(100 * (4 * 80) / (2 * 80 + 2 * 96))


# ---- damaged bags and outputs that already exist (never a traceback, never a lost file) ---------------
def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def cut_copy(bag: Path, dest: Path, keep: float) -> Path:
    """A copy of ``bag`` whose storage file keeps only its first ``keep`` share of bytes, as a
    recorder losing power leaves it (metadata.yaml kept, as rosbag2 writes it)."""
    import shutil

    shutil.copytree(bag, dest)
    data = storage_file(bag).read_bytes()
    storage_file(dest).write_bytes(data[:int(len(data) * keep)])
    return dest


@pytest.mark.parametrize("keep", [0.002, 0.05, 0.3, 0.55, 0.8, 0.97, 0.995])
def test_an_mcap_cut_short_is_replayed_up_to_the_cut(tmp_path, keep, caplog):
    items = make_items(6)
    whole = tmp_path / "whole"
    write_bag(items, whole, storage="mcap")
    cut = cut_copy(whole, tmp_path / "cut", keep)
    seg = RedSegmenter()
    try:
        report = replay_bag(cut, seg, out=tmp_path / "results", warmup=False, progress=False)
    except BagError as e:  # cut inside the file's header or before the first message: nothing to replay
        assert "cut short" in str(e) or "not an MCAP file" in str(e)
        assert keep <= 0.05
        return
    assert keep > 0.05
    # the frames before the cut, each with its own sentence, in order; scored and written like any other
    n = report.processed
    assert report.frames == n and 0 < n <= 6
    assert n == 6 or keep < 0.97
    assert [t for _, t, _ in seg.calls] == [it.sentence for it in items[:n]]
    assert report.with_ground_truth in (n, n - 1)  # the last frame's mask may be past the cut
    assert [r.command for r in read_results(tmp_path / "results")] == [it.sentence for it in items[:n]]
    # one warning saying what happened and how much was lost
    (warning,) = report.warnings
    assert "cut short" in warning and "mcap" in warning
    read = int(warning.split("replaying the ")[1].split()[0])
    assert read >= 2 * n
    if read < 18:
        assert f"so {18 - read} are lost" in warning
    else:
        assert "that is all 18 that metadata.yaml lists" in warning
    assert warning in caplog.text and report.to_dict()["warnings"] == [warning]


def test_a_cut_compressed_mcap_keeps_its_complete_chunks(tmp_path):
    """Chunks of about 1 MB, zstd-compressed (as recorders often write them): the chunks before the cut
    are read, the one the cut runs through is lost whole."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer

    items = make_items(5, h=360, w=480)  # one ~1 MB chunk per frame or so
    plain = tmp_path / "plain"
    write_bag(items, plain, storage="mcap", progress=False)
    packed = tmp_path / "packed"
    typestore = bags.make_typestore("jazzy")
    writer = Writer(packed, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with Reader(plain) as reader, writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore) for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            writer.write(conns[conn.id], timestamp, raw)
    cut = cut_copy(packed, tmp_path / "cut", 0.7)
    seg = RedSegmenter()
    report = replay_bag(cut, seg, warmup=False, progress=False)
    assert 0 < report.processed < 5 and report.with_ground_truth >= report.processed - 1
    assert [t for _, t, _ in seg.calls] == [it.sentence for it in items[:report.processed]]
    assert "are lost" in report.warnings[0]


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.3, 0.6, 0.9, 0.999])
def test_a_cut_or_corrupt_sqlite_bag_is_one_bag_error(tmp_path, keep):
    items = make_items(6)
    whole = tmp_path / "whole"
    write_bag(items, whole, storage="sqlite3")
    cut = cut_copy(whole, tmp_path / "cut", keep)
    seg = RedSegmenter()
    try:
        report = replay_bag(cut, seg, warmup=False, progress=False)
    except BagError as e:
        assert str(e).startswith(f"cannot read bag {cut}: ")
        return
    # sqlite keeps free pages at the end of the file: a cut there loses nothing
    assert report.processed == 6 and [t for _, t, _ in seg.calls] == [it.sentence for it in items]


def test_a_corrupt_bag_file_is_one_bag_error(tmp_path):
    for storage in ("sqlite3", "mcap"):
        bag = tmp_path / storage
        write_bag(make_items(2), bag, storage=storage)
        data = bytearray(storage_file(bag).read_bytes())
        data[:64] = bytes(64)  # the file's header
        storage_file(bag).write_bytes(bytes(data))
        with pytest.raises(BagError, match=f"cannot read bag {bag}|{bag}.* is not an MCAP file"):
            replay_bag(bag, RedSegmenter(), progress=False)


def test_a_bag_folder_without_metadata_names_the_fix_and_its_file_replays(tmp_path):
    items = make_items(3)
    bag = tmp_path / "bag"
    write_bag(items, bag, storage="mcap")
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=r"has no metadata.yaml .*ros2 bag reindex .*or give its file .*bag.mcap"):
        replay_bag(bag, RedSegmenter(), progress=False)
    report = replay_bag(bag / "bag.mcap", RedSegmenter(), progress=False, out=tmp_path / "results")
    assert report.processed == 3 and report.metrics["n"] == 3
    assert any((tmp_path / "results").glob("*.mcap"))  # the input's storage
    with pytest.raises(BagError, match="is not a bag: give a bag folder"):
        replay_bag(tmp_path / "notes.txt" if (tmp_path / "notes.txt").write_text("x") else None, RedSegmenter())


def test_an_undecodable_message_is_rejected_and_counted(tmp_path):
    from rosbags.rosbag2 import Writer

    typestore = bags.make_typestore("jazzy")
    String = typestore.types[bags.STRING_TYPE]
    item = make_items(1)[0]
    bag = tmp_path / "garbled"
    with Writer(bag, version=8) as writer:
        img = writer.add_connection(bags.IMAGE_TOPIC, bags.IMAGE_TYPE, typestore=typestore)
        cmd = writer.add_connection(bags.COMMAND_TOPIC, bags.STRING_TYPE, typestore=typestore)
        writer.write(cmd, 5, typestore.serialize_cdr(String(data="the red box"), bags.STRING_TYPE))
        writer.write(cmd, 6, b"\x00\x01")  # not a String
        from coupalign_core.runtime.conversions import rgb_to_image_fields

        good = bags.image_message(typestore, rgb_to_image_fields(item.image), bags.make_header(typestore, 10, "c"))
        writer.write(img, 10, typestore.serialize_cdr(good, bags.IMAGE_TYPE))
        writer.write(img, 20, b"\x00\x01\x00\x00\xff\xff\xff\x7f")  # not an Image
        writer.write(img, 30, typestore.serialize_cdr(good, bags.IMAGE_TYPE))
    report = replay_bag(bag, RedSegmenter(), warmup=False, progress=False)
    assert (report.frames, report.processed) == (3, 2)
    assert report.stats["rejected"] == {"command": 1, "image": 1}


def test_outputs_are_never_replaced_without_overwrite(tmp_path):
    items = make_items(2)
    bag = tmp_path / "in"
    write_bag(items, bag)
    out, sheet = tmp_path / "results", tmp_path / "sheet.png"
    replay_bag(bag, RedSegmenter(), out=out, overlays=sheet, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    sheet_before = sheet.read_bytes()
    for kwargs in ({"out": out}, {"overlays": sheet}):
        with pytest.raises(BagError, match="already exists; choose another path or pass --overwrite"):
            replay_bag(bag, RedSegmenter(), progress=False, **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and sheet.read_bytes() == sheet_before

    # overwrite replaces a bag (and a file), never a folder that is not a bag
    report = replay_bag(bag, RedSegmenter(), out=out, overlays=sheet, overwrite=True, progress=False)
    assert report.processed == 2 and len(read_results(out)) == 2
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BagError, match="is not a bag folder; refusing to replace it"):
        write_bag(items, precious, overwrite=True)
    with pytest.raises(BagError, match="is a folder; refusing to replace it"):
        replay_bag(bag, RedSegmenter(), overlays=precious, overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_a_failed_write_leaves_no_half_bag_and_keeps_the_old_one(tmp_path):
    items = make_items(3)
    out = tmp_path / "bag"
    write_bag(items[:1], out)
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing():
        yield items[1]
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        write_bag(failing(), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="camera unplugged"):
        write_bag(failing(), fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no partial bag, no staging folder
    write_bag(items, out, overwrite=True)
    assert len(read_results(out, topic=bags.COMMAND_TOPIC)) == 3
