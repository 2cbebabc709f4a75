"""Evaluation engine and ``coupalign eval`` on a refer-layout fixture built here.

An "oracle" stand-in model segments the pure-red pixels of the image whatever the sentence says, so
exact expected numbers follow from the fixture's geometry: refs to the red object score IoU 1, refs
to the blue object IoU 0, at both resolutions (on the 64x64 val images the boxes sit on the 2x2 grid
that the 64 -> 32 resize and the bilinear 32 -> 64 upsampling map exactly). testA images are 64x96,
to check the original-size path on non-square images. The tiny random CoupAlign then runs the same
paths end to end.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from coupalign_core import evaluation
from coupalign_core.checkpoint import save_checkpoint
from coupalign_core.cli.main import main as cli_main
from coupalign_core.data import ReferDataset
from coupalign_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from coupalign_core.evaluation import evaluate, results_to_json, shuffled_sources
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = {"val": (64, 64), "testA": (64, 96)}  # (H, W) of the images of each split
RED_BOX = (8, 24, 12, 42)  # rows [8, 24), cols [12, 42): 16 x 30 = 480 pixels
BLUE_BOX = (36, 56, 30, 60)  # 20 x 30 = 600 pixels
RED_AREA, BLUE_AREA = 480, 600
SCALE = 4  # val: original pixels per pixel of the oracle's 32x32 input


def box_mask(box, shape) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": enc["size"], "counts": enc["counts"].decode("ascii")}


def build_fixture(root: Path) -> dict[str, dict[str, int]]:
    """root/synthetic/{refs(unc).p, instances.json}, root/images/synthetic/*.png.

    Per image: a red and a blue box; a ref to red (attribute + ordinal sentences), a ref to blue
    (relation + location sentences); image 0 of each split also a no-target ref. Returns per split
    the counts the tests expect.
    """
    (root / "synthetic").mkdir(parents=True)
    (root / "images" / "synthetic").mkdir(parents=True)
    images, annotations, refs = [], [], []
    counts: dict[str, dict[str, int]] = {}
    sent_id = ann_id = ref_id = 0
    plan = {"val": 4, "testA": 2}
    image_id = 0
    for split, n_images in plan.items():
        counts[split] = {"red": 0, "blue": 0, "no_target": 0}
        for k in range(n_images):
            image_id += 1
            shape = SIZES[split]
            img = np.full((*shape, 3), 128, dtype=np.uint8)
            img[box_mask(RED_BOX, shape)] = (255, 0, 0)
            img[box_mask(BLUE_BOX, shape)] = (0, 0, 255)
            name = f"img_{image_id:03d}.png"
            cv2.imwrite(str(root / "images" / "synthetic" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            images.append({"id": image_id, "file_name": name, "height": shape[0], "width": shape[1]})
            for colour, box, kinds in (("red", RED_BOX, ("attribute", "ordinal")),
                                       ("blue", BLUE_BOX, ("relation", "location"))):
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                    "bbox": [box[2], box[0], box[3] - box[2], box[1] - box[0]],
                                    "segmentation": rle(box_mask(box, shape))})
                sentences = []
                for kind in kinds:
                    sent_id += 1
                    text = f"the {colour} box number {sent_id}"
                    sentences.append({"sent_id": sent_id, "raw": text, "sent": text,
                                      "tokens": text.split(), "kind": kind})
                ref_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1,
                             "split": split, "file_name": f"{name}_{ann_id}",
                             "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
                counts[split][colour] += len(sentences)
            if k == 0:
                sent_id += 1
                ref_id += 1
                text = "the purple star"
                refs.append({"ref_id": ref_id, "ann_id": -1, "image_id": image_id, "category_id": 1,
                             "split": split, "file_name": f"{name}_none", "sent_ids": [sent_id],
                             "sentences": [{"sent_id": sent_id, "raw": text, "sent": text, "tokens": text.split(),
                                            "kind": "no_target", "no_target": True}]})
                counts[split]["no_target"] += 1
    (root / "synthetic" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}))
    with open(root / "synthetic" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return counts


class RedOracle(nn.Module):
    """Stand-in with CoupAlign's interface: segments pure-red pixels, ignores the sentence except that
    its presence logit is negative when the word "purple" (the no-target expressions) is in it."""

    def __init__(self, purple_id: int, image_size: int = 32, max_tokens: int = 12):
        super().__init__()
        self.config = SimpleNamespace(image_size=image_size, max_tokens=max_tokens)
        self.purple_id = purple_id
        self.scale = nn.Parameter(torch.tensor(10.0))  # so that .parameters() names a device
        self.calls = 0

    def forward(self, images, input_ids, attention_mask):
        self.calls += 1
        mean = torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = images * std + mean  # (B, 3, S, S) in [0, 1]
        red = (rgb[:, 0] > 0.9) & (rgb[:, 1] < 0.1) & (rgb[:, 2] < 0.1)  # (B, S, S)
        logits = torch.where(red, self.scale, -self.scale)[:, None]  # (B, 1, S, S)
        purple = (input_ids == self.purple_id).any(1)
        presence = torch.where(purple, -5.0, 5.0)
        return SimpleNamespace(logits=logits, pixel_embeddings=None, presence_logits=presence)


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("refer")
    return root, build_fixture(root)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = CoupAlignConfig.preset("tiny")
    return CoupAlign(config).eval(), build_tokenizer(config)


@pytest.fixture(scope="module")
def oracle(tiny):
    tokenizer = tiny[1]
    return RedOracle(tokenizer.vocab["purple"]), tokenizer


def expected_input_metrics(n_red: int, n_blue: int) -> dict:
    """Red refs: I = U = red area; blue refs: I = 0, U = red + blue area (at 32x32: areas / SCALE)."""
    red, blue = RED_AREA // SCALE, BLUE_AREA // SCALE
    union = n_red * red + n_blue * (red + blue)
    n = n_red + n_blue
    return {"oIoU": 100 * n_red * red / union, "mIoU": 100 * n_red / n, "n": n}


# ---- the engine ------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", ["input", "original"])
def test_oracle_scores_exactly_at_both_resolutions(refer_root, oracle, resolution):
    root, counts = refer_root
    model, tokenizer = oracle
    data = ReferDataset(root, "synthetic", "unc", "val", sentences="all")
    result = evaluate(model, tokenizer, data, batch_size=3, resolution=resolution, progress=False)
    c = counts["val"]
    m = result["metrics"]
    # the same share at both resolutions because the boxes map exactly; the areas differ by SCALE
    exp = expected_input_metrics(c["red"], c["blue"])
    assert m["n"] == exp["n"] == 16
    assert m["oIoU"] == pytest.approx(exp["oIoU"])
    assert m["mIoU"] == pytest.approx(exp["mIoU"])
    assert m["prec@0.9"] == pytest.approx(50.0)
    assert m["iou_hist"] == [8, 0, 0, 0, 0]
    assert result["resolution"] == resolution
    assert result["num_sentences"] == 17  # 16 with a target + 1 no-target
    # kind breakdown: red refs are attribute/ordinal, blue ones relation/location
    kinds = result["by_kind"]
    assert set(kinds) == {"attribute", "ordinal", "relation", "location", "ordinal+relation"}
    assert kinds["attribute"]["oIoU"] == pytest.approx(100.0) and kinds["attribute"]["n"] == 4
    assert kinds["relation"]["oIoU"] == 0.0
    assert kinds["ordinal+relation"]["n"] == 8
    assert kinds["ordinal+relation"]["mIoU"] == pytest.approx(50.0)
    # presence: the no-target sentence is rejected, every target found
    p = result["presence"]
    assert p["no_target_n"] == 1 and p["no_target_accuracy"] == pytest.approx(100.0)
    assert p["target_n"] == 16 and p["found_rate"] == pytest.approx(100.0)


def test_original_resolution_counts_original_pixels(refer_root, oracle, monkeypatch):
    """"original" scores each non-square 64x96 image at its own size, "input" at 32x32."""
    root, _ = refer_root
    model, tokenizer = oracle
    data = ReferDataset(root, "synthetic", "unc", "testA", sentences="all")
    seen_shapes = []
    from coupalign_core import metrics as metrics_module

    original_update = metrics_module.RISMetrics.update

    def spy(self, pred, gt, group=None):
        seen_shapes.append(tuple(gt.shape))
        return original_update(self, pred, gt, group)

    monkeypatch.setattr(metrics_module.RISMetrics, "update", spy)
    evaluate(model, tokenizer, data, batch_size=4, resolution="original", progress=False)
    assert seen_shapes and set(seen_shapes) == {SIZES["testA"]}
    seen_shapes.clear()
    evaluate(model, tokenizer, data, batch_size=4, resolution="input", progress=False)
    assert {s[-2:] for s in seen_shapes} == {(32, 32)}


def test_shuffled_expressions_keep_an_oracle_that_ignores_text_unchanged(refer_root, oracle):
    root, _ = refer_root
    model, tokenizer = oracle
    data = ReferDataset(root, "synthetic", "unc", "val", sentences="all")
    plain = evaluate(model, tokenizer, data, batch_size=4, progress=False)
    shuffled = evaluate(model, tokenizer, data, batch_size=4, progress=False, shuffle_expressions=True, seed=3)
    assert shuffled["shuffle_expressions"] is True
    assert shuffled["metrics"] == plain["metrics"]  # the oracle never reads the words


def test_shuffled_sources_is_a_cross_image_derangement():
    image_ids = [1, 1, 1, 2, 2, 3, 4, 4, 5, 6]
    src = shuffled_sources(image_ids, seed=0)
    assert sorted(src) == list(range(len(image_ids)))  # every sentence used once
    assert all(image_ids[s] != image_ids[i] for i, s in enumerate(src))
    assert shuffled_sources(image_ids, seed=0) == src  # deterministic
    assert shuffled_sources(image_ids, seed=1) != src
    with pytest.raises(ValueError, match="3 of the 4 expressions"):
        shuffled_sources([1, 1, 1, 2], seed=0)


def test_tiny_model_end_to_end_restores_mode_and_rejects_bad_input(refer_root, tiny):
    root, counts = refer_root
    model, tokenizer = tiny
    data = ReferDataset(root, "synthetic", "unc", "testA", sentences="all")
    model.train()
    result = evaluate(model, tokenizer, data, batch_size=4, progress=False, num_examples=2)
    assert model.training  # mode restored for the trainer
    m = result["metrics"]
    assert m["n"] == counts["testA"]["red"] + counts["testA"]["blue"]
    assert 0.0 <= m["oIoU"] <= 100.0 and sum(m["iou_hist"]) <= m["n"]
    assert result["image_size"] == 96
    ex = result["examples"]
    assert len(ex) == 2 and ex[0]["image"].shape == (96, 96, 3) and ex[0]["image"].dtype == np.uint8
    assert ex[0]["pred"].shape == ex[0]["target"].shape == (96, 96) and 0.0 <= ex[0]["iou"] <= 1.0
    # the de-normalised example image is the resized fixture image (red box where it should be)
    assert (ex[0]["image"][14:34, 14:40] == (255, 0, 0)).all()  # rows 8..24 x 1.5, cols 12..42 x 1
    with pytest.raises(ValueError, match="resolution"):
        evaluate(model, tokenizer, data, resolution="native")
    with pytest.raises(RuntimeError, match="process group"):
        evaluate(model, tokenizer, data, distributed=True)
    transformed = ReferDataset(root, "synthetic", "unc", "testA", transform=lambda item: {"x": 1})
    with pytest.raises(ValueError, match="transform=None"):
        evaluate(model, tokenizer, transformed, progress=False)


# ---- DDP: two gloo ranks give the single-process result ----------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, root: str, purple_id: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        config = CoupAlignConfig.preset("tiny")
        model = RedOracle(purple_id)
        data = ReferDataset(root, "synthetic", "unc", "val", sentences="all")
        result = evaluate(model, build_tokenizer(config), data, batch_size=2, progress=False)
        results[rank] = (result["metrics"], result["by_kind"], result["presence"], model.calls)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(refer_root, oracle, tmp_path):
    root, _ = refer_root
    model, tokenizer = oracle
    single = evaluate(model, tokenizer, ReferDataset(root, "synthetic", "unc", "val"), batch_size=2,
                      progress=False)
    results = mp.get_context("spawn").Manager().dict()
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "rdzv"), str(root), model.purple_id, results),
                       nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        metrics, by_kind, presence, _ = results[rank]
        assert metrics == single["metrics"]
        assert by_kind == single["by_kind"]
        assert presence == single["presence"]
    # 17 sentences at batch 2: ranks take 9 and 8 (no padding duplicates) -> 5 + 4 forward calls
    assert results[0][3] + results[1][3] == 9


# ---- the CLI ------------------------------------------------------------------------------------------
def test_cli_writes_table_and_json(refer_root, tiny, tmp_path, capsys):
    root, counts = refer_root
    model, tokenizer = tiny
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, tokenizer)
    out = tmp_path / "eval.json"
    rc = cli_main(["-q", "eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--dataset", "synthetic",
                   "--split-by", "unc", "--splits", "val", "testA", "--batch-size", "4", "--num-workers", "0",
                   "--device", "cpu", "--json", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "input resolution (96x96" in printed and "oIoU" in printed and "ordinal+relation" in printed
    report = json.loads(out.read_text())
    assert set(report) == {"val", "testA", "by_kind", "presence", "meta"}
    for split in ("val", "testA"):
        assert set(report[split]) == {"oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8",
                                      "prec@0.9", "n", "iou_hist"}
        assert report[split]["n"] == counts[split]["red"] + counts[split]["blue"]
        assert report["presence"][split]["no_target_n"] == counts[split]["no_target"]
        assert "ordinal+relation" in report["by_kind"][split]
    assert report["meta"]["resolution"] == "input" and report["meta"]["shuffle_expressions"] is False
    assert report["meta"]["num_sentences"] == {"val": 17, "testA": 9}

    rc = cli_main(["-q", "eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--splits", "testA",
                   "--resolution", "original", "--shuffle-expressions", "--num-workers", "0",
                   "--device", "cpu", "--json", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "original image resolution" in printed and "CONTROL" in printed
    report = json.loads(out.read_text())
    assert report["meta"]["resolution"] == "original" and report["meta"]["shuffle_expressions"] is True


def test_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    rc = cli_main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data-root", str(tmp_path)])
    assert rc == 2
    assert "none.pt does not exist" in capsys.readouterr().err


def eval_args(root: Path, ckpt: Path, *more: str) -> list[str]:
    return ["-q", "eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--dataset", "synthetic",
            "--split-by", "unc", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress",
            *more]


@pytest.fixture
def scored_splits(monkeypatch) -> list[str]:
    """The splits ``coupalign eval`` hands to the engine, in order (the engine itself still runs)."""
    seen: list[str] = []
    engine = evaluation.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs["desc"].split()[-1])
        return engine(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    return seen


def test_cli_checks_every_split_before_scoring_any(refer_root, tiny, tmp_path, capsys, scored_splits):
    root, _ = refer_root
    ckpt = save_checkpoint(tmp_path / "tiny.pt", *tiny)
    out = tmp_path / "eval.json"
    # testB is a split of synthetic/unc, but this data set has no ref in it; it comes last
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "testA", "testB", "--json", str(out)))
    captured = capsys.readouterr()
    assert rc == 2 and scored_splits == [] and not out.exists() and captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert "testB" in line and "no ref in split 'testB'" in line and "nothing was scored" in line
    # every bad split is named in the one line, an unknown split name too
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "dev", "testB"))
    [line] = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and scored_splits == []
    assert "2 of 3 splits" in line and "dev: synthetic/unc has no split 'dev'" in line and "testB" in line
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "val"))
    assert rc == 2 and "more than once: ['val']" in capsys.readouterr().err and scored_splits == []
    # a --json path that cannot be written is refused before scoring, not after
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "--json", str(tmp_path)))
    assert rc == 2 and "is a directory" in capsys.readouterr().err and scored_splits == []


def test_cli_keeps_the_scored_splits_when_a_later_one_fails(tiny, tmp_path, capsys):
    root = tmp_path / "refer"
    counts = build_fixture(root)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", *tiny)
    out = tmp_path / "eval.json"
    # testA's second image breaks mid-split (its first item, read when the splits are checked, is fine)
    (root / "images" / "synthetic" / "img_006.png").write_bytes(b"not a png")
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "testA", "--json", str(out)))
    captured = capsys.readouterr()
    assert rc == 2
    [line] = captured.err.strip().splitlines()
    assert "'testA'" in line and "img_006.png could not be decoded" in line and str(out) in line
    assert "val" in captured.out and "oIoU" in captured.out  # the scored split's table is printed
    report = json.loads(out.read_text())
    assert report["val"]["n"] == counts["val"]["red"] + counts["val"]["blue"] and "testA" not in report
    assert report["meta"]["incomplete"]["not_scored"] == ["testA"]
    assert "img_006.png" in report["meta"]["incomplete"]["reason"]


def test_cli_report_is_written_after_each_split(refer_root, tiny, tmp_path, capsys, monkeypatch):
    """An interrupt (Ctrl-C, or a kill) during a later split leaves the earlier splits on disk."""
    root, counts = refer_root
    ckpt = save_checkpoint(tmp_path / "tiny.pt", *tiny)
    out = tmp_path / "eval.json"
    engine = evaluation.evaluate
    on_disk_when_testA_starts = []

    def interrupted_on_testA(*args, **kwargs):
        if kwargs["desc"].endswith("testA"):
            on_disk_when_testA_starts.append(json.loads(out.read_text()))
            raise KeyboardInterrupt
        return engine(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", interrupted_on_testA)
    rc = cli_main(eval_args(root, ckpt, "--splits", "val", "testA", "--json", str(out)))
    assert rc == 130
    [report] = on_disk_when_testA_starts
    assert report["val"]["n"] == counts["val"]["red"] + counts["val"]["blue"]
    assert report["meta"]["incomplete"]["not_scored"] == ["testA"]
    final = json.loads(out.read_text())
    assert "testA" not in final and final["meta"]["incomplete"]["reason"] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "tiny.pt"]  # no temp file left


def test_results_to_json_rejects_clashing_split_names():
    result = {"metrics": {}, "by_kind": {}, "presence": {}, "resolution": "input", "image_size": 32,
              "threshold": 0.5, "shuffle_expressions": False, "num_sentences": 0}
    with pytest.raises(ValueError, match="meta"):
        results_to_json({"meta": result})
