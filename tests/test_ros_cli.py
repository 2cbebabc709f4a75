"""make-bag and bag-eval end to end with a real Segmenter (a tiny random CoupAlign on the CPU) on a
synthetic refer-layout split, plus the node's model loading and the pipeline on the real model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from coupalign_core.bags import read_results, stamp_to_ns
from coupalign_core.checkpoint import save_checkpoint
from coupalign_core.cli.main import main
from coupalign_core.data import ReferDataset
from coupalign_core.data.synthetic import generate
from coupalign_core.inference import Segmenter
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer
from coupalign_core.runtime.conversions import mono8_to_mask
from coupalign_core.runtime.loading import ModelLoadError, load_segmenter
from coupalign_core.runtime.pipeline import Frame, Pipeline


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = CoupAlignConfig.preset("tiny")
    torch.manual_seed(0)
    model = CoupAlign(config).eval()
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, build_tokenizer(config))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, num_images=6, image_size=(96, 72), progress=False)
    return root


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu")


@pytest.mark.parametrize("storage, distro, encoding", [("mcap", "humble", "bgr8"), ("sqlite3", "jazzy", "rgb8")])
def test_make_bag_then_bag_eval(tmp_path, checkpoint, data_root, storage, distro, encoding, capsys):
    bag = tmp_path / "bag"
    assert main(["make-bag", "--data-root", str(data_root), "--dataset", "synthetic", "--split", "val",
                 "--out", str(bag), "--storage", storage, "--distro", distro, "--encoding", encoding,
                 "--limit", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 5 and summary["storage"] == storage

    out, report_json, sheet = tmp_path / "results", tmp_path / "eval.json", tmp_path / "sheet.png"
    assert main(["bag-eval", str(bag), "--checkpoint", str(checkpoint), "--backend", "torch", "--device", "cpu",
                 "--distro", distro, "--out", str(out), "--json", str(report_json), "--overlays", str(sheet),
                 "--max-overlays", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "oIoU" in printed and "latency ms" in printed
    report = json.loads(report_json.read_text())
    assert report["n"] == 5 and report["processed"] == 5 and report["with_ground_truth"] == 5
    for key in ("oIoU", "mIoU", "prec@0.5", "prec@0.9", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"):
        assert key in report, key
    assert 0.0 <= report["oIoU"] <= 100.0 and report["latency_ms_p50"] > 0
    assert sheet.read_bytes()[:4] == b"\x89PNG"

    # the result bag: one ReferringSegmentation per frame, stamped like its image, mask at image size
    dataset = ReferDataset(data_root, "synthetic", "unc", "val")
    results = read_results(out, distro=distro)
    assert len(results) == 5
    for i, r in enumerate(results):
        item = dataset[i]
        assert r.command == item["sentence"].strip() and r.command_id == i + 1
        assert (r.mask.height, r.mask.width) == item["image"].shape[:2]
        assert stamp_to_ns(r.header) == stamp_to_ns(r.mask.header)
        mask = mono8_to_mask(r.mask)
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert (r.bbox.x_offset, r.bbox.y_offset) == (xs.min(), ys.min())
        assert 0.0 <= r.score <= 1.0 and r.latency_ms > 0


def test_bag_eval_reports_bad_inputs(tmp_path, checkpoint, capsys):
    assert main(["bag-eval", str(tmp_path / "missing"), "--checkpoint", str(checkpoint)]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["make-bag", "--data-root", str(tmp_path), "--out", str(tmp_path / "b"), "--limit", "0"]) == 2
    assert "--limit must be >= 1" in one_error_line(capsys)


# ---- damaged bags and existing outputs: one line on stderr, exit 2, nothing of the user's replaced ------
def one_error_line(capsys) -> str:
    """The only line the command wrote to stderr (an ERROR log line; no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and " ERROR " in lines[0] and "Traceback" not in err, err
    return lines[0]


def make_bag(data_root, out, capsys, *extra: str) -> None:
    assert main(["make-bag", "--data-root", str(data_root), "--split", "val", "--out", str(out), "--limit", "3",
                 *extra]) == 0
    capsys.readouterr()


def cut_storage_file(bag, keep: float) -> None:
    (path,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_bag_eval_refuses_bad_bags_and_existing_outputs_before_loading_the_model(tmp_path, data_root, capsys):
    bag = tmp_path / "bag"
    make_bag(data_root, bag, capsys, "--storage", "mcap")
    no_model = ["--checkpoint", str(tmp_path / "model-never-loaded.pt")]  # reached only after all checks
    no_metadata, cut_sqlite = tmp_path / "no-metadata", tmp_path / "cut-sqlite"
    make_bag(data_root, no_metadata, capsys, "--storage", "mcap")
    (no_metadata / "metadata.yaml").unlink()
    make_bag(data_root, cut_sqlite, capsys, "--storage", "sqlite3")
    cut_storage_file(cut_sqlite, 0.3)
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    cases = [
        ([str(no_metadata)], "has no metadata.yaml"),
        ([str(cut_sqlite)], f"cannot read bag {cut_sqlite}: "),
        ([str(bag), "--image-topic", "/nope"], "has no image topic '/nope'; its topics: /camera/image_raw"),
        ([str(bag), "--out", str(bag)], f"output bag {bag} already exists; choose another path or pass --overwrite"),
        ([str(bag), "--json", str(existing)], "already exists"),
        ([str(bag), "--overlays", str(existing)], "already exists"),
        ([str(bag), "--overwrite", "--out", str(data_root)], "is not a bag folder; refusing to replace it"),
    ]
    for args, message in cases:
        assert main(["bag-eval", *args, *no_model]) == 2, args
        line = one_error_line(capsys)
        assert message in line and "model-never-loaded" not in line, (args, line)
    assert existing.read_text() == "{}" and any(data_root.iterdir())


def test_bag_eval_replays_an_mcap_cut_short_and_says_what_was_lost(tmp_path, data_root, checkpoint, capsys):
    bag = tmp_path / "bag"
    make_bag(data_root, bag, capsys, "--storage", "mcap")
    cut_storage_file(bag, 0.6)
    report_json = tmp_path / "eval.json"
    assert main(["bag-eval", str(bag), "--checkpoint", str(checkpoint), "--json", str(report_json),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    # The tiny checkpoint also warns that it carries no grounding vocabulary; this test is about the bag.
    (warning,) = [line for line in captured.err.splitlines() if " WARNING coupalign_core.bags" in line]
    assert "was cut short" in warning and "metadata.yaml lists 9, so" in warning and "are lost" in warning
    report = json.loads(report_json.read_text())
    assert 0 < report["processed"] < 3 and len(report["warnings"]) == 1


def test_make_bag_and_bag_eval_replace_outputs_only_with_overwrite(tmp_path, data_root, checkpoint, capsys):
    bag = tmp_path / "bag"
    make_bag(data_root, bag, capsys)
    before = {p.name: p.read_bytes() for p in bag.iterdir()}
    args = ["make-bag", "--data-root", str(data_root), "--split", "val", "--out", str(bag), "--limit", "2"]
    assert main(args) == 2
    assert "already exists; choose another path or pass --overwrite" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in bag.iterdir()} == before
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2
    assert len(read_results(bag, topic="/coupalign/command")) == 2

    out, report_json, sheet = tmp_path / "results", tmp_path / "eval.json", tmp_path / "sheet.png"
    outputs = ["--out", str(out), "--json", str(report_json), "--overlays", str(sheet)]
    evaluate = ["bag-eval", str(bag), "--checkpoint", str(checkpoint), "--no-progress", *outputs]
    assert main(evaluate) == 0
    capsys.readouterr()
    report_json.write_text("mine")
    assert main(evaluate) == 2
    assert "already exists" in one_error_line(capsys) and report_json.read_text() == "mine"
    assert main([*evaluate, "--overwrite"]) == 0
    assert json.loads(report_json.read_text())["processed"] == 2 and len(read_results(out)) == 2


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(mine), "--checkpoint", str(tmp_path / "never-loaded.pt")]) == 2
    assert "is not a demo output folder (it holds notes.txt)" in one_error_line(capsys)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_load_segmenter_errors_name_the_problem(tmp_path, checkpoint):
    with pytest.raises(ModelLoadError, match="no checkpoint given"):
        load_segmenter("")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_segmenter(str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError, match=r"could not load .*junk.pt \(backend=torch, device=cpu"):
        load_segmenter(str(junk), backend="torch")
    seg = load_segmenter(str(checkpoint), backend="torch", device="cpu")
    assert "torch" in seg.describe().lower()


def test_pipeline_worker_with_the_real_segmenter(segmenter):
    """Odd-sized frames from a producer faster than the model: masks at frame size, newest wins."""
    outputs = []
    pipe = Pipeline(segmenter, on_result=outputs.append)
    pipe.set_command("the small green triangle", arrival_ns=0)
    rng = np.random.default_rng(0)
    pipe.start()
    try:
        for n in range(1, 41):
            pipe.submit(Frame(rng.integers(0, 256, (37 + n % 3, 53, 3), dtype=np.uint8), n))
            time.sleep(0.001)
        deadline = time.monotonic() + 30
        while (not outputs or outputs[-1].frame.stamp_ns != 40) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pipe.stop()
    stats = pipe.stats.snapshot()
    assert outputs[-1].frame.stamp_ns == 40
    assert stats["processed"] + stats["dropped"].get("superseded", 0) == 40
    for out in outputs:
        assert out.result.mask.shape == out.frame.image.shape[:2]
        fields = out.message_fields()
        assert (fields["mask"].height, fields["mask"].width) == out.frame.image.shape[:2]
        assert fields["found"] == bool(out.result.found)  # no node threshold: the Segmenter's own
