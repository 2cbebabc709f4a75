"""The tabletop RGB-D world: determinism, masks from the segmentation buffer, depth <-> 3D point <->
intrinsics, every sentence re-resolved, and the target point the node computes from depth.

The referent check re-implements the documented meaning of a query (the docstrings of
coupalign_core/data/synthetic/expressions.py and coupalign_core/data/tabletop/expressions.py) from
scratch, over what was *saved*: attributes, 3D points and supports from instances.json, image
positions from masks decoded here with pycocotools, margins from instances.json's info.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest

from coupalign_core.cli.main import main as cli_main
from coupalign_core.data import ReferDataset
from coupalign_core.data.refer import load_refer_refs
from coupalign_core.data.tabletop import KINDS, generate, load_depth
from coupalign_core.data.tabletop.render import TabletopRenderer, process_renderer
from coupalign_core.data.tabletop.world import CATEGORIES, TABLE_TOP_Z, sample_scene
from coupalign_core.data.tabletop.writer import SPLIT_PROFILES, split_of
from coupalign_core.runtime.depth import mask_centroid_3d

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SEED, NUM_IMAGES, SIZE = 7, 40, (96, 72)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabletop")
    summary = generate(root, seed=SEED, num_images=NUM_IMAGES, image_size=SIZE, no_target_fraction=0.2,
                       float_depth=True, progress=False)
    refs = load_refer_refs(root, "tabletop", "unc")
    instances = json.loads((root / "tabletop" / "instances.json").read_text())
    return root, summary, refs, instances


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def decode(ann, height, width) -> np.ndarray:
    (part,) = ann["segmentation"]
    assert part["size"] == [height, width]
    return mask_utils.decode({"size": part["size"], "counts": part["counts"].encode()}).astype(bool)


# ---- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_files_for_any_workers(tmp_path):
    generate(tmp_path / "a", seed=5, num_images=6, image_size=(64, 48), progress=False)
    generate(tmp_path / "b", seed=5, num_images=6, image_size=(64, 48), progress=False, workers=2)
    generate(tmp_path / "c", seed=6, num_images=6, image_size=(64, 48), progress=False)
    generate(tmp_path / "d", seed=5, num_images=3, image_size=(64, 48), progress=False)
    da, db, dc, dd = (file_digests(tmp_path / x) for x in "abcd")
    assert len(da) == 6 * 2 + 3  # colour + depth per image, instances.json and two refs files
    pictures = [k for k in da if k.endswith(".png")]
    assert all(db[k] == da[k] for k in pictures)
    assert (json.loads((tmp_path / "a/tabletop/instances.json").read_text())
            == json.loads((tmp_path / "b/tabletop/instances.json").read_text()))
    assert load_refer_refs(tmp_path / "a", "tabletop", "unc") == load_refer_refs(tmp_path / "b", "tabletop", "unc")
    assert all(dc[k] != da[k] for k in pictures)  # another seed: another world
    assert all(dd[k] == da[k] for k in dd if k.endswith(".png"))  # image i depends on (seed, i) only


def test_overwrite_is_refused_unless_asked(tmp_path, capsys):
    assert cli_main(["sim", "--out", str(tmp_path), "--seed", "3", "--images", "4", "--size", "64x48",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "testB" in out and "possible targets" in out
    assert cli_main(["sim", "--out", str(tmp_path), "--images", "2", "--size", "64x48", "--no-progress"]) == 2
    assert "already holds a tabletop world" in capsys.readouterr().err
    assert cli_main(["sim", "--out", str(tmp_path), "--images", "2", "--size", "64x48", "--no-progress",
                     "--overwrite"]) == 0
    assert len(list((tmp_path / "images" / "tabletop").glob("table_*.png"))) == 2


# ---- the scene and its rendering ------------------------------------------------------------------
def test_category_boxes_are_the_meshes():
    renderer = TabletopRenderer()
    try:
        for name, category in CATEGORIES.items():
            lo, hi = renderer.aabb(name)
            assert np.allclose(lo, category.aabb[0], atol=2e-3) and np.allclose(hi, category.aabb[1], atol=2e-3), name
    finally:
        renderer.close()


def test_masks_are_the_segmentation_buffer(world):
    root, _, _, instances = world
    anns = collections.defaultdict(list)
    for a in instances["annotations"]:
        anns[a["image_id"]].append(a)
    renderer = process_renderer()
    for image in instances["images"][:6]:
        index = image["id"] - 1
        scene = sample_scene(np.random.default_rng([SEED, index]), SPLIT_PROFILES[split_of(index)])
        frame = renderer.render(scene, image["width"], image["height"])
        seen = [i for i in range(len(scene.objects)) if frame.mask(i).any()]
        saved = [decode(a, image["height"], image["width"]) for a in anns[image["id"]]]
        assert len(saved) == len(seen)
        for mask, i in zip(saved, seen):
            assert np.array_equal(mask, frame.segmentation == i)
        picture = cv2.imread(str(root / "images" / "tabletop" / image["file_name"]))[..., ::-1]
        assert np.array_equal(picture, frame.rgb)
        assert list(frame.k) == image["camera_info"]["k"]


def test_depth_points_and_intrinsics_agree(world):
    root, _, _, instances = world
    image_dir = root / "images" / "tabletop"
    inside = total = 0
    anns = collections.defaultdict(list)
    for a in instances["annotations"]:
        anns[a["image_id"]].append(a)
    for image in instances["images"]:
        h, w = image["height"], image["width"]
        info = image["camera_info"]
        fx, _, cx, _, fy, cy = info["k"][:6]
        assert fx == fy and (cx, cy) == (w / 2, h / 2)  # square pixels, the render's centre
        assert info["p"][:3] == info["k"][:3] and info["p"][3] == 0.0
        exact = np.load(image_dir / image["float_depth_file"])
        millimetres = load_depth(image_dir, image)
        both = np.isfinite(exact)
        assert np.array_equal(both, np.isfinite(millimetres))
        assert np.abs(exact[both] - millimetres[both]).max() <= 0.0005 + 1e-6  # rounded to the millimetre
        for a in anns[image["id"]]:
            mask = decode(a, h, w)
            vs, us = np.nonzero(mask)
            z = exact[vs, us].astype(np.float64)
            points = np.stack([(us - cx) * z / fx, (vs - cy) * z / fy, z], 1)
            assert np.allclose(points.mean(0), a["point_3d"], atol=1e-6)  # the visible surface's centroid
            x, y, zc = a["point_3d"]
            u, v = int(round(fx * x / zc + cx)), int(round(fy * y / zc + cy))  # and back into the image
            total += 1
            inside += bool(0 <= u < w and 0 <= v < h and cv2.dilate(mask.astype(np.uint8), np.ones((3, 3)))[v, u])
            bx, by, bw, bh = a["bbox"]
            assert bx - 1 <= u <= bx + bw and by - 1 <= v <= by + bh
    assert inside >= 0.9 * total  # a centroid may fall in a gap of a concave or split visible part


def test_back_projected_pixels_lie_on_the_table_and_in_their_objects():
    """At 320x240 the table's pixels, back-projected with K and moved to the world with the camera
    pose, lie on the table top, and an object's pixels inside its box: K, pose and depth agree."""
    scene = sample_scene(np.random.default_rng([SEED, 3]))
    frame = process_renderer().render(scene, 320, 240)
    world_of = frame.camera_to_world
    background = frame.points(frame.segmentation == -1)
    ones = np.ones((len(background), 1))
    world_points = (world_of @ np.concatenate([background, ones], 1).T).T[:, :3]
    near_top = np.abs(world_points[:, 2] - TABLE_TOP_Z) < 0.02
    assert near_top.sum() > 0.2 * frame.width * frame.height
    assert np.percentile(np.abs(world_points[near_top, 2] - TABLE_TOP_Z), 99) < 0.002
    for i, obj in enumerate(scene.objects):
        pts = frame.points(frame.mask(i))
        if len(pts) == 0:
            continue
        wp = (world_of @ np.concatenate([pts, np.ones((len(pts), 1))], 1).T).T[:, :3]
        assert wp[:, 2].min() >= obj.bottom - 0.01 and wp[:, 2].max() <= obj.top + 0.01, obj.category
        reach = np.hypot(wp[:, 0] - obj.center[0], wp[:, 1] - obj.center[1])
        assert reach.max() <= obj.radius + 0.01, obj.category


def test_scenes_hold_lookalikes_stacks_and_trays(world):
    _, summary, _, instances = world
    assert summary["images_with_3_alike"] >= 0.25 * NUM_IMAGES
    assert summary["objects_in_tray"] > 0 and summary["stacked_objects"] > 0
    referable = collections.Counter(a["referable"] for a in instances["annotations"])
    assert referable[True] == summary["referable_objects"] and referable[False] > 0  # some only peek out
    mounts = collections.Counter(im["camera_mount"] for im in instances["images"])
    assert set(mounts) == {"head", "wrist"}


# ---- an independent resolver over the saved annotations ----------------------------------------
def saved_objects(instances):
    """image_id -> list of dicts: id, category, color, size, x, y (image, normalised), p (3D), support."""
    images = {im["id"]: im for im in instances["images"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    out = collections.defaultdict(list)
    for a in instances["annotations"]:
        im = images[a["image_id"]]
        mask = decode(a, im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        attrs = a["attributes"]
        assert attrs["category"] == names[a["category_id"]] and a["visible_pixels"] == mask.sum() > 0
        out[a["image_id"]].append({"id": a["id"], "category": attrs["category"], "color": attrs["color"],
                                   "size": attrs["size"], "x": xs.mean() / im["width"], "y": ys.mean() / im["height"],
                                   "p": np.array(a["point_3d"]), "support": a["support"], "referable": a["referable"]})
    return out


def referents(query, objs, info):
    """Set of ann ids the query denotes, or 'ill-posed'."""
    margin, ratio = info["position_margin"], info["distance_ratio"]
    depth_margin, band = info["depth_margin"], info["lateral_band"]

    def fits(np_, o):
        return o["category"] == np_["shape"] and np_.get("color") in (None, o["color"]) and \
            np_.get("size") in (None, o["size"])

    cands = [o for o in objs if fits(query["np"], o)]
    sp = query.get("spatial")
    if sp is None:
        return {o["id"] for o in cands}
    lm = None
    if sp["type"] == "relation":
        lms = [o for o in objs if fits(sp["landmark"], o)]
        if len(lms) != 1:
            return "ill-posed"
        lm = lms[0]
        cands = [o for o in cands if o["id"] != lm["id"]]
    if not cands:
        return set()

    def ranked_pick(key, rank, gap):
        ranked = sorted(cands, key=key)
        if len(ranked) < rank:
            return set()
        for a, b in zip(ranked[:rank], ranked[1:rank + 1]):
            if key(b) - key(a) < gap:
                return "ill-posed"
        return {ranked[rank - 1]["id"]}

    if sp["type"] in ("extreme", "ordinal"):
        key = {"left": lambda o: o["x"], "right": lambda o: -o["x"], "top": lambda o: o["y"],
               "bottom": lambda o: -o["y"]}[sp["dir"]]
        return ranked_pick(key, sp.get("rank", 1), margin)
    if sp["type"] == "distance":
        sign = 1 if sp["dir"] == "near" else -1
        return ranked_pick(lambda o: sign * float(np.linalg.norm(o["p"])), sp.get("rank", 1), depth_margin)
    if sp["type"] == "center" or sp["rel"] == "near":
        cx, cy = (0.5, 0.5) if sp["type"] == "center" else (lm["x"], lm["y"])
        ranked = sorted(cands, key=lambda o: math.hypot(o["x"] - cx, o["y"] - cy))
        if len(ranked) > 1:
            d0, d1 = (math.hypot(o["x"] - cx, o["y"] - cy) for o in ranked[:2])
            if d1 < ratio * d0 or d1 - d0 < margin:
                return "ill-posed"
        return {ranked[0]["id"]}
    rel = sp["rel"]
    if rel in ("in", "on"):
        if (rel == "in") != (lm["category"] == "tray"):
            return "ill-posed"
        return {o["id"] for o in cands if o["support"] == lm["id"]}
    out = set()
    for o in cands:
        if rel in ("behind", "in_front"):
            if o["support"] == lm["id"] or lm["support"] == o["id"]:
                return "ill-posed"
            shift = (o["p"][2] - lm["p"][2]) * (1 if rel == "behind" else -1)
            side = abs(o["p"][0] - lm["p"][0])
            if shift >= depth_margin and side <= band:
                out.add(o["id"])
            elif shift > 0 and side <= 1.5 * band:
                return "ill-posed"
            continue
        dx, dy = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}[rel]
        shift = dx * (o["x"] - lm["x"]) + dy * (o["y"] - lm["y"])
        if 0 < shift < margin:
            return "ill-posed"
        if shift >= margin:
            out.add(o["id"])
    return out


def test_every_sentence_has_exactly_its_referent(world):
    _, _, refs, instances = world
    scenes = saved_objects(instances)
    words = {c["name"]: None for c in instances["categories"]}
    checked = collections.Counter()
    for ref in refs:
        objs = scenes[ref["image_id"]]
        for s in ref["sentences"]:
            q, kind, text = s["query"], s["kind"], f" {s['sent']} "
            got = referents(q, objs, instances["info"])
            if kind == "no_target":
                assert s["no_target"] and ref["ann_id"] == -1 and got == set(), (text, got)
            else:
                assert got == {ref["ann_id"]}, (text, q, got)
                target = next(o for o in objs if o["id"] == ref["ann_id"])
                assert target["referable"], text  # too few pixels: never a target
            assert any(f" {w} " in text or f" {p} " in text for w, p in
                       zip(CATEGORIES[q["np"]["shape"]].words, CATEGORIES[q["np"]["shape"]].plurals)), text
            sp = q.get("spatial") or {}
            assert sp.get("dir") not in ("top", "bottom") and sp.get("rel") not in ("above", "below"), text
            if kind == "distance":
                assert sp["type"] == "distance"
                assert sp.get("rank", 1) == 1 or {2: " second ", 3: " third "}[sp["rank"]] in text, text
            elif kind in ("depth_relation", "support"):
                assert sp["rel"] in (("behind", "in_front") if kind == "depth_relation" else ("in", "on"))
            checked[kind] += 1
    assert words and set(checked) == set(KINDS), set(KINDS) - set(checked)


def test_generator_vocabulary_covers_every_target_sentence(world):
    from coupalign_core.data.tabletop.vocabulary import generator_words

    _, _, refs, _ = world
    words = {w for r in refs for s in r["sentences"] if not s["no_target"] for w in s["sent"].split()}
    assert words <= generator_words(), words - generator_words()
    assert {"behind", "closest", "tray"} <= generator_words() and "highest" not in generator_words()


def test_loader_reads_every_split_with_empty_no_target_masks(world):
    root, summary, _, _ = world
    for split in ("train", "val", "testA", "testB"):
        ds = ReferDataset(root, "tabletop", "unc", split, sentences="all")
        assert len(ds) == summary["splits"][split]["sentences"]
    ds = ReferDataset(root, "tabletop", "unc", "train", sentences="all")
    no_target = 0
    for i in range(len(ds)):
        ref, sent = ds.ref_and_sentence(i)
        if sent["no_target"]:
            item = ds[i]
            assert not item["mask"].any()
            no_target += 1
    assert no_target > 0
    assert ds[0]["image"].shape == (SIZE[1], SIZE[0], 3)


# ---- the target point ---------------------------------------------------------------------------
def test_target_point_ignores_mask_edges_on_the_wall_behind():
    """An object 1.0 m away in front of a wall at 2 m; the mask spills 2 px onto the wall, as a
    predicted mask does: the point stays on the object (the plain mean read z = 1.12)."""
    h, w = 48, 64
    k = (50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0)
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - 32) ** 2 + (yy - 24) ** 2 <= 8 ** 2
    depth = np.where(disc, 1.0, 2.0).astype(np.float32)
    mask = cv2.dilate(disc.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert depth[mask].mean() > 1.1  # what a plain mean reads here
    point = mask_centroid_3d(mask, depth, k)
    assert point.z == pytest.approx(1.0, abs=1e-6)
    assert point.x == pytest.approx(0.0, abs=1e-6) and point.y == pytest.approx(0.0, abs=1e-6)
    assert point.num_points == disc.sum()


def test_target_point_of_a_spilled_mask_is_near_the_ground_truth(world):
    """On rendered scenes: a ground-truth mask grown by 1 px (its rim on the table or on what stands
    behind, as a predicted mask's often is) still gives the saved 3D centroid within a centimetre or
    two, closer than the plain mean does."""
    root, _, _, instances = world
    image_dir = root / "images" / "tabletop"
    images = {im["id"]: im for im in instances["images"]}
    errors, plain_errors = [], []
    for a in instances["annotations"]:
        if not a["referable"]:
            continue
        im = images[a["image_id"]]
        mask = cv2.dilate(decode(a, im["height"], im["width"]).astype(np.uint8), np.ones((3, 3), np.uint8))
        depth = load_depth(image_dir, im)
        point = mask_centroid_3d(mask.astype(bool), depth, im["camera_info"]["k"])
        errors.append(np.linalg.norm(np.array([point.x, point.y, point.z]) - a["point_3d"]))
        plain = mask_centroid_3d(mask.astype(bool), depth, im["camera_info"]["k"], erode_px=0)
        plain_errors.append(np.linalg.norm(np.array([plain.x, plain.y, plain.z]) - a["point_3d"]))
    assert np.median(errors) < 0.01 and np.percentile(errors, 90) < 0.02
    assert np.mean(errors) < 0.7 * np.mean(plain_errors)


# ---- bags with depth ----------------------------------------------------------------------------
def test_bag_round_trip_with_depth_camera_info_and_points(world, tmp_path, capsys):
    from coupalign_core.bags import (
        CAMERA_INFO_TOPIC,
        COLOR_TOPIC,
        DEPTH_INFO_TOPIC,
        DEPTH_TOPIC,
        GT_POINT_TOPIC,
        BagReader,
        replay_bag,
        stamp_to_ns,
    )
    from coupalign_core.inference import SegmentationResult
    from coupalign_core.runtime.depth import depth_to_meters

    root, _, _, instances = world
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--data-root", str(root), "--dataset", "tabletop", "--split", "train",
                     "--out", str(bag), "--limit", "24"]) == 0
    capsys.readouterr()
    ds = ReferDataset(root, "tabletop", "unc", "train", sentences="all")
    items = [ds[i] for i in range(24)]
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    with BagReader(bag, "jazzy") as reader:
        assert {COLOR_TOPIC, DEPTH_TOPIC, CAMERA_INFO_TOPIC, DEPTH_INFO_TOPIC, GT_POINT_TOPIC} <= set(reader.topics)
        by_topic: dict[str, list] = collections.defaultdict(list)
        for message in reader.messages([DEPTH_TOPIC, CAMERA_INFO_TOPIC, GT_POINT_TOPIC]):
            by_topic[message.topic].append(reader.decode(message))
    assert len(by_topic[DEPTH_TOPIC]) == len(by_topic[CAMERA_INFO_TOPIC]) == 24
    targets = [it for it in items if not it["no_target"]]
    assert len(by_topic[GT_POINT_TOPIC]) == len(targets) > 0
    for item, depth, info in zip(items, by_topic[DEPTH_TOPIC], by_topic[CAMERA_INFO_TOPIC]):
        image = images[item["image_id"]]
        assert depth.encoding == "16UC1" and info.header.stamp == depth.header.stamp
        saved = load_depth(root / "images" / "tabletop", image)
        assert np.array_equal(np.isnan(depth_to_meters(depth)), np.isnan(saved))
        assert np.allclose(np.nan_to_num(depth_to_meters(depth)), np.nan_to_num(saved))
        assert list(info.k) == image["camera_info"]["k"] and (info.width, info.height) == (image["width"],
                                                                                            image["height"])
        assert info.header.frame_id == "camera_color_optical_frame"
    for item, point in zip(targets, by_topic[GT_POINT_TOPIC]):
        p = point.point
        assert [p.x, p.y, p.z] == pytest.approx(anns[item["ann_id"]]["point_3d"])

    masks = {it["sentence"]: it["mask"] for it in items}

    def oracle(image, text):  # the ground truth as the prediction: the 3D error is the estimator's alone
        mask = masks[text]
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else None
        return SegmentationResult(mask, 0.9 if xs.size else 0.1, bool(xs.size), box)

    report = replay_bag(bag, oracle, image_topic=COLOR_TOPIC, progress=False)
    summary = report.to_dict()
    assert summary["point_n"] == len(targets) == summary["point_estimated"]
    assert summary["point_error_m_median"] < 0.01 and summary["point_within_5cm"] >= 90.0
    stamps = sorted(stamp_to_ns(p.header) for p in by_topic[GT_POINT_TOPIC])
    assert len(stamps) == len(set(stamps))
