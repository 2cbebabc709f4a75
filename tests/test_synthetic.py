"""The synthetic benchmark: determinism, the real loader reads it, every expression has one referent.

The referent check re-implements the documented meaning of a query (coupalign_core/data/synthetic/
expressions.py docstring) from scratch, over what was *saved*: attributes from instances.json and
positions from masks decoded here with pycocotools, margins from instances.json's info.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from peer_refer import PeerRefer

from coupalign_core.cli.main import main as cli_main
from coupalign_core.data import ReferDataset
from coupalign_core.data.refer import load_refer_refs
from coupalign_core.data.synthetic import KINDS, generate
from coupalign_core.data.synthetic.expressions import LOCATION_WORDS, ORDINAL_WORDS, PLURALS, SHAPE_WORDS, SIZE_WORDS
from coupalign_core.data.synthetic.world import COLORS
from coupalign_core.model.tokenization import TextTokenizer, minilm_path

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SEED, NUM_IMAGES = 11, 80


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate(root, seed=SEED, num_images=NUM_IMAGES, no_target_fraction=0.2, progress=False)
    refs = load_refer_refs(root, "synthetic", "unc")  # with a target, and the no-target file
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    return root, summary, refs, instances


def file_digests(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_files_other_seed_other_world(tmp_path):
    a = generate(tmp_path / "a", seed=5, num_images=10, progress=False)
    generate(tmp_path / "b", seed=5, num_images=10, progress=False)
    generate(tmp_path / "c", seed=6, num_images=10, progress=False)
    generate(tmp_path / "d", seed=5, num_images=4, progress=False)
    da, db, dc, dd = (file_digests(tmp_path / x) for x in "abcd")
    assert len(da) == 13 and da == db  # 10 images + two refs files + instances, byte for byte
    images = [k for k in da if k.endswith(".png")]
    assert all(da[k] != dc[k] for k in images)  # a fresh world: every picture differs
    assert all(dd[k] == da[k] for k in images[:4])  # image i depends on (seed, i) only
    assert a["splits"]["train"]["images"] == 6 and a["splits"]["val"]["images"] == 2


def test_workers_make_the_same_world(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    a = generate(one, seed=5, num_images=24, progress=False)
    b = generate(three, seed=5, num_images=24, progress=False, workers=3)
    paths = ("root", "refs_file", "no_target_refs_file", "instances_file", "image_dir")
    assert {k: v for k, v in a.items() if k not in paths} == {k: v for k, v in b.items() if k not in paths}
    images_one, images_three = one / "images" / "synthetic", three / "images" / "synthetic"
    for name in sorted(p.name for p in images_one.iterdir()):
        assert (images_one / name).read_bytes() == (images_three / name).read_bytes()
    assert (one / "synthetic" / "instances.json").read_bytes() == (three / "synthetic" / "instances.json").read_bytes()
    for name in ("refs(unc).p", "no_target_refs(unc).p"):
        refs_three = pickle.loads((three / "synthetic" / name).read_bytes())
        assert pickle.loads((one / "synthetic" / name).read_bytes()) == refs_three
    refs_one = load_refer_refs(one, "synthetic", "unc")
    assert [r["ref_id"] for r in refs_one] == list(range(1, len(refs_one) + 1))  # numbered in image order


def test_overwrite(tmp_path):
    generate(tmp_path, seed=1, num_images=6, progress=False)
    with pytest.raises(ValueError, match="already holds a synthetic benchmark"):
        generate(tmp_path, seed=1, num_images=3, progress=False)
    generate(tmp_path, seed=1, num_images=3, overwrite=True, progress=False)
    assert len(list((tmp_path / "images" / "synthetic").glob("*.png"))) == 3  # no stale images
    with pytest.raises(ValueError, match="no_target_fraction"):
        generate(tmp_path, seed=1, num_images=3, no_target_fraction=1.0, overwrite=True)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate(tmp_path, seed=1, num_images=3, workers=0, overwrite=True)


def test_loader_reads_every_split(bench):
    root, summary, refs, instances = bench
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    objects_per_image = collections.Counter(a["image_id"] for a in instances["annotations"])
    for split in ("train", "val", "testA", "testB"):
        ds = ReferDataset(root, "synthetic", "unc", split)
        assert len(ds) == summary["splits"][split]["sentences"] > 0
        item = ds[len(ds) // 2]
        assert item["image"].shape == (144, 192, 3) and item["mask"].shape == (144, 192)
        assert item["kind"] in KINDS and isinstance(item["no_target"], bool)
        counts = [objects_per_image[r["image_id"]] for r in ds.refs]
        lo, hi = {"testA": (3, 6), "testB": (7, 12)}.get(split, (3, 12))
        assert lo <= min(counts) and max(counts) <= hi  # testA sparse, testB crowded
    ds = ReferDataset(root, "synthetic", "unc", "train", sentences="random")
    assert len(ds) == summary["splits"]["train"]["refs"]


# ---- an independent resolver over the saved annotations ----------------------------------------
def saved_scenes(instances):
    """image_id -> list of (ann_id, shape, colour, size, x, y, mask), positions normalised."""
    images = {im["id"]: im for im in instances["images"]}
    shapes = {c["id"]: c["name"] for c in instances["categories"]}
    scenes = collections.defaultdict(list)
    for ann in instances["annotations"]:
        im = images[ann["image_id"]]
        h, w = im["height"], im["width"]
        seg = ann["segmentation"]
        if isinstance(seg[0], list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        else:  # one compressed RLE in a list
            (part,) = seg
            rle = {"size": part["size"], "counts": part["counts"].encode()}
        mask = mask_utils.decode(rle).astype(bool)
        ys, xs = np.nonzero(mask)
        attrs = ann["attributes"]
        assert attrs["shape"] == shapes[ann["category_id"]]
        scenes[ann["image_id"]].append(
            (ann["id"], attrs["shape"], attrs["color"], attrs["size"], xs.mean() / w, ys.mean() / h, mask))
    return scenes


def referents(query, objs, margin, ratio):
    """Set of ann ids the query denotes, or 'ill-posed'."""
    def fits(np_, o):
        return (o[1] == np_["shape"] and np_.get("color") in (None, o[2]) and np_.get("size") in (None, o[3]))

    cands = [o for o in objs if fits(query["np"], o)]
    sp = query.get("spatial")
    if sp is None:
        return {o[0] for o in cands}
    if sp["type"] == "relation":
        lms = [o for o in objs if fits(sp["landmark"], o)]
        if len(lms) != 1:
            return "ill-posed"
        lm = lms[0]
        cands = [o for o in cands if o[0] != lm[0]]
    if not cands:
        return set()
    if sp["type"] in ("extreme", "ordinal"):
        rank = sp.get("rank", 1)
        pos = {"left": lambda o: o[4], "right": lambda o: 1 - o[4],
               "top": lambda o: o[5], "bottom": lambda o: 1 - o[5]}[sp["dir"]]
        ranked = sorted(cands, key=pos)
        if len(ranked) < rank:
            return set()
        for a, b in zip(ranked[: rank], ranked[1: rank + 1]):
            if pos(b) - pos(a) < margin:
                return "ill-posed"
        return {ranked[rank - 1][0]}
    if sp["type"] == "center" or sp["rel"] == "near":
        cx, cy = (0.5, 0.5) if sp["type"] == "center" else (lm[4], lm[5])
        ranked = sorted(cands, key=lambda o: math.hypot(o[4] - cx, o[5] - cy))
        if len(ranked) > 1:
            d0, d1 = (math.hypot(o[4] - cx, o[5] - cy) for o in ranked[:2])
            if d1 < ratio * d0 or d1 - d0 < margin:
                return "ill-posed"
        return {ranked[0][0]}
    dx, dy = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}[sp["rel"]]
    out = set()
    for o in cands:
        shift = dx * (o[4] - lm[4]) + dy * (o[5] - lm[5])
        if 0 < shift < margin:
            return "ill-posed"
        if shift >= margin:
            out.add(o[0])
    return out


def words_of(np_) -> list[tuple[str, ...]]:
    """Alternatives, one of which must appear, for each attribute a description names."""
    shape_words = SHAPE_WORDS[np_["shape"]] + tuple(PLURALS[w] for w in SHAPE_WORDS[np_["shape"]])
    need = [shape_words]
    if np_.get("color"):
        need.append((np_["color"],))
    if np_.get("size"):
        need.append(SIZE_WORDS[np_["size"]])
    return need


def test_every_expression_has_exactly_its_referent(bench):
    _, _, refs, instances = bench
    margin, ratio = instances["info"]["position_margin"], instances["info"]["distance_ratio"]
    scenes = saved_scenes(instances)
    checked = collections.Counter()
    for ref in refs:
        objs = scenes[ref["image_id"]]
        for s in ref["sentences"]:
            q, kind, text = s["query"], s["kind"], f" {s['sent']} "
            got = referents(q, objs, margin, ratio)
            if kind == "no_target":
                assert s["no_target"] and ref["ann_id"] == -1 and got == set(), (text, got)
            else:
                assert got == {ref["ann_id"]}, (text, q, got)
            # the words say what the query says
            for alternatives in words_of(q["np"]):
                assert any(f" {w} " in text for w in alternatives), (text, alternatives)
            sp = q.get("spatial")
            if kind in ("attribute", "no_location"):
                assert sp is None and not set(text.split()) & LOCATION_WORDS, text
            elif kind == "location":
                assert sp["type"] in ("extreme", "center")
                if sp["type"] == "extreme":  # the resolver is not blind to words: the other end is another object
                    flipped = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[sp["dir"]]
                    flipped_query = {"np": q["np"], "spatial": {"type": "extreme", "dir": flipped}}
                    other = referents(flipped_query, objs, margin, ratio)
                    assert other != got, (text, other)  # (or ill-posed: the far end may be a close call)
            elif kind == "ordinal":
                assert sp["type"] == "ordinal" and ORDINAL_WORDS[sp["rank"]] in text and sp["dir"] in text
            elif kind == "relation":
                assert sp["type"] == "relation"
                assert all(any(f" {w} " in text for w in alt) for alt in words_of(sp["landmark"]))
            elif kind == "long":
                assert len(text.split()) >= 6
            checked[kind] += 1
    assert set(checked) == set(KINDS)  # every kind is present (and was checked)
    assert sum(checked.values()) > 400


def test_masks_are_visible_parts(bench):
    root, _, _, instances = bench
    scenes = saved_scenes(instances)
    anns = {a["id"]: a for a in instances["annotations"]}
    ds = ReferDataset(root, "synthetic", "unc", "train")
    forms = collections.Counter()
    for image_id in list(scenes)[:30]:
        objs = scenes[image_id]
        stack = np.stack([o[6] for o in objs])
        assert stack.sum(0).max() <= 1  # each pixel shows at most one object
        image = ds.load_image(image_id) if image_id in ds.images else None
        for o in objs:
            ann = anns[o[0]]
            assert ann["area"] == o[6].sum() > 0
            if ann["occluded"]:
                forms["rle"] += isinstance(ann["segmentation"][0], dict)
                assert 0.6 * ann["full_area"] <= ann["area"] < ann["full_area"]
            else:
                forms["polygon"] += isinstance(ann["segmentation"][0], list)
                assert ann["area"] == ann["full_area"]
            if image is not None:  # the mask's pixels show the object's colour, not what covers it
                median = np.median(image[o[6]].astype(float), axis=0)
                assert np.abs(median - np.array(COLORS[o[2]])).max() < 45, (o[2], median)
    assert forms["rle"] > 5 and forms["polygon"] > 50


def test_no_target_items_have_empty_masks(bench):
    root, _, refs, _ = bench
    ds = ReferDataset(root, "synthetic", "unc", "train")
    seen = 0
    for i in range(len(ds)):
        if ds.ref_and_sentence(i)[1]["kind"] != "no_target":
            continue
        item = ds[i]
        assert item["no_target"] and item["ann_id"] == -1 and not item["mask"].any()
        seen += 1
    assert seen >= 5


def test_crowds_of_lookalikes_and_object_sizes(bench):
    _, summary, _, instances = bench
    by_image = collections.defaultdict(collections.Counter)
    for a in instances["annotations"]:
        attrs = a["attributes"]
        by_image[a["image_id"]][(attrs["shape"], attrs["color"], attrs["size"])] += 1
        if not a["occluded"]:  # still several pixels wide once resized to a 96x96 model input
            x, y, w, h = a["bbox"]
            assert min(w * 96 / 192, h * 96 / 144) >= 9, a["bbox"]
    alike = sum(max(c.values()) >= 3 for c in by_image.values())
    assert alike >= 0.3 * NUM_IMAGES  # only location words separate these
    assert summary["images_with_3_alike"] >= alike


def test_sentences_fit_twenty_tokens(bench):
    _, _, refs, _ = bench
    tokenizer = TextTokenizer.from_pretrained(minilm_path())
    lengths = [len(tokenizer.tokens(s["raw"])) for r in refs for s in r["sentences"]]
    assert max(lengths) <= 20  # [CLS] ... [SEP]: nothing is truncated at T = 20


def test_cli(tmp_path, capsys):
    rc = cli_main(["synth", "--out", str(tmp_path), "--seed", "2", "--num-images", "8", "--image-size", "160x120",
                   "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "testB" in out and "ordinal" in out
    ds = ReferDataset(tmp_path, "synthetic", "unc", "train")
    assert ds[0]["image"].shape == (120, 160, 3)
    assert cli_main(["synth", "--out", str(tmp_path), "--num-images", "2", "--no-progress"]) == 2  # exists


# ---- the refer API reads the world; worlds written in the old layout still load -------------------
def test_refer_api_reads_the_world_with_the_same_masks(bench):
    """Before: the refer API's index raised KeyError: -1 on no-target refs, its getMask KeyError: 0
    on RLE annotations (a bare dict)."""
    root, _, refs, _ = bench
    peer = PeerRefer(root, "synthetic", "unc")
    assert all(r["ann_id"] != -1 for r in peer.refs)
    rle_masks = 0
    for split in ("train", "val", "testA", "testB", "test"):
        ds = ReferDataset(root, "synthetic", "unc", split)
        targets = [r for r in ds.refs if r["ann_id"] != -1]
        assert peer.get_ref_ids(split) == [r["ref_id"] for r in targets]
        assert len(targets) < len(ds.refs)  # the no-target refs are there for ReferDataset only
        if split == "test":
            continue
        for ref in targets:
            peer_ref = next(r for r in peer.refs if r["ref_id"] == ref["ref_id"])
            assert peer_ref["sentences"] == ref["sentences"]
            mask = peer.get_mask(peer_ref)
            assert mask.max() == 1  # one object, one layer
            np.testing.assert_array_equal(mask.astype(bool), ds.load_mask(ref["ann_id"], ref["image_id"]))
            rle_masks += isinstance(peer.ref_to_ann[ref["ref_id"]]["segmentation"][0], dict)
    assert rle_masks > 5  # occluded objects (RLE) were among them
    assert sorted(r["ref_id"] for r in refs) == list(range(1, len(refs) + 1))


def write_old_layout(root: Path, new_root: Path) -> None:
    """The world as generator version 1 wrote it: no-target refs inline with ann_id -1, occluded
    masks as a bare compressed RLE dict."""
    (new_root / "synthetic").mkdir(parents=True)
    refs = load_refer_refs(root, "synthetic", "unc")
    (new_root / "synthetic" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=4))
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    for ann in instances["annotations"]:
        if isinstance(ann["segmentation"][0], dict):
            ann["segmentation"] = ann["segmentation"][0]
    (new_root / "synthetic" / "instances.json").write_text(json.dumps(instances))


def test_old_layout_worlds_read_the_same(bench, tmp_path):
    root, _, _, _ = bench
    old = tmp_path / "old"
    write_old_layout(root, old)
    with pytest.raises(KeyError):  # why the layout changed: the refer API cannot index it
        PeerRefer(old, "synthetic", "unc")
    for split in ("val", "testB"):
        new_ds = ReferDataset(root, "synthetic", "unc", split)
        old_ds = ReferDataset(old, "synthetic", "unc", split, image_root=root / "images" / "synthetic")
        assert len(new_ds) == len(old_ds) and new_ds.refs == old_ds.refs
        for i in range(len(new_ds)):
            a, b = new_ds[i], old_ds[i]
            np.testing.assert_array_equal(a.pop("mask"), b.pop("mask"))
            np.testing.assert_array_equal(a.pop("image"), b.pop("image"))
            assert a == b
    new_train = ReferDataset(root, "synthetic", "unc", "train", sentences="random", seed=3)
    old_train = ReferDataset(old, "synthetic", "unc", "train", sentences="random", seed=3,
                             image_root=root / "images" / "synthetic")
    assert [new_train.ref_and_sentence(i)[1] for i in range(len(new_train))] == [
        old_train.ref_and_sentence(i)[1] for i in range(len(old_train))]  # the same training draws
