"""ReferDataset on a refer-layout fixture built here: polygons (overlapping), RLE masks, every split name."""

from __future__ import annotations

import json
import logging
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from torch.utils.data import DataLoader

from coupalign_core.data import ReferDataset, ReferTransform, collate, decode_segmentation
from coupalign_core.data.refer import DATASET_SPLITS, DEFAULT_IMAGE_DIRS, BadAnnotationError
from coupalign_core.model.tokenization import TextTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 30, 40


# ---- a Python 2 pickle, byte for byte -------------------------------------------------------------
def py2_pickle(obj) -> bytes:
    """Protocol 2 as Python 2 wrote it: ``str`` as byte strings (SHORT_BINSTRING/BINSTRING, latin-1)."""
    out = bytearray(b"\x80\x02")

    def emit(o):
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            raw = o.encode("latin1")
            out.extend((b"U" + bytes([len(raw)])) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw))))
            out.extend(raw)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


SQUARE_A = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]
SQUARE_B = [12.0, 10.0, 30.0, 10.0, 30.0, 26.0, 12.0, 26.0]
TRIANGLE = [22.0, 2.0, 38.0, 2.0, 30.0, 14.0]


def blob_mask() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[3:17, 25:37] = True
    m[10:25, 5:9] = True
    return m


def ring_mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 15, xx - 20)
    return (r < 10) & (r > 4)


def split_names_of(dataset: str, split_by: str) -> list[str]:
    names = DATASET_SPLITS[(dataset, split_by)]
    has_lettered = any(s.startswith("test") and s != "test" for s in names)
    return [s for s in names if not (has_lettered and s == "test")]  # "test" is their union there


def build_refer(root: Path, dataset: str = "refcoco", split_by: str = "unc", *, python2: bool = True) -> dict:
    """Writes a refer-layout data set: one image per split, four annotations and four refs each."""
    splits = split_names_of(dataset, split_by)
    image_dir = root / DEFAULT_IMAGE_DIRS[dataset]
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    compressed = mask_utils.encode(np.asfortranarray(blob_mask().astype(np.uint8)))
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    segmentations = [
        [SQUARE_A, SQUARE_B],  # overlapping polygons of one object
        compressed,  # compressed RLE
        uncompressed_rle(ring_mask()),  # uncompressed RLE
        [[1.0, 1.0, 2.0, 2.0], TRIANGLE],  # a 2-point sliver first: must not be read as a bbox
    ]
    images, anns, refs = [], [], []
    expected = {}
    for i, split in enumerate(splits):
        image_id = 100 + i
        file_name = f"COCO_train2014_{image_id:012d}.png"
        pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
        for j, seg in enumerate(segmentations):
            ann_id = 1000 + 10 * i + j
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": seg,
                         "bbox": [0, 0, 1, 1], "iscrowd": 0, "area": 1.0})
            ref_id = 10 * i + j
            sents = [
                {"sent_id": 100 * ref_id + k, "raw": f"Thing {j} number {k} café",
                 "sent": f"thing {j} number {k} cafe", "tokens": ["thing", str(j), "number", str(k)]}
                for k in range(1 + j)  # 1..4 sentences per ref
            ]
            refs.append({
                "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
                # the refer convention: an annotation suffix that is not the image file
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
            })
            expected[ann_id] = (image_id, pixels, seg)
    payload = py2_pickle(refs) if python2 else pickle.dumps(refs)
    (root / dataset / f"refs({split_by}).p").write_bytes(payload)
    (root / dataset / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return {"splits": splits, "expected": expected, "refs": refs, "image_dir": image_dir}


@pytest.fixture()
def refcoco(tmp_path):
    return tmp_path, build_refer(tmp_path)


def test_python2_pickle_needs_latin1(refcoco):
    root, _ = refcoco
    with pytest.raises(UnicodeDecodeError):  # what a loader without encoding="latin1" would hit
        pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    ds = ReferDataset(root, "refcoco", "unc", "train")
    assert ds[0]["sentence"] == "Thing 0 number 0 café"


@pytest.mark.parametrize("dataset,split_by", [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"),
                                              ("refcocog", "google"), ("refclef", "berkeley"), ("refclef", "unc")])
def test_every_split_name(tmp_path, dataset, split_by):
    info = build_refer(tmp_path, dataset, split_by, python2=dataset != "refcocog")
    for split in DATASET_SPLITS[(dataset, split_by)]:
        ds = ReferDataset(tmp_path, dataset, split_by, split)
        lettered = [s for s in info["splits"] if s.startswith("test") and s != "test"]
        n_splits = len(lettered) if split == "test" and lettered else 1  # "test" = every test split
        assert len(ds.refs) == 4 * n_splits
        assert len(ds) == (1 + 2 + 3 + 4) * n_splits  # every sentence of every ref
        if split != "test":
            assert {r["split"] for r in ds.refs} == {split}
    with pytest.raises(ValueError, match="has no split 'testD'"):
        ReferDataset(tmp_path, dataset, split_by, "testD")
    if dataset == "refclef":
        assert str(ds.image_root).endswith("images/saiapr_tc-12")


def test_unc_test_is_testA_union_testB(refcoco):
    root, _ = refcoco
    ids = lambda s: {r["ref_id"] for r in ReferDataset(root, "refcoco", "unc", s).refs}  # noqa: E731
    assert ids("test") == ids("testA") | ids("testB") and not ids("testA") & ids("testB")


def test_items_masks_and_images(refcoco):
    root, info = refcoco
    ds = ReferDataset(root, "refcoco", "unc", "val")
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        image_id, pixels, seg = info["expected"][item["ann_id"]]
        assert item["image_id"] == image_id and item["image"].dtype == np.uint8 and item["image"].shape == (H, W, 3)
        np.testing.assert_array_equal(item["image"], pixels)  # RGB, not cv2's BGR
        assert item["mask"].dtype == bool and item["mask"].shape == (H, W)
        assert item["kind"] is None and item["no_target"] is False
        assert isinstance(item["sentence"], str) and isinstance(item["sent_id"], int)
        seen.add(item["ann_id"])
        j = item["ann_id"] % 10
        if j == 0:  # overlapping polygons: the union, overlap pixels included
            a = mask_utils.decode(mask_utils.frPyObjects([SQUARE_A], H, W)).squeeze(-1).astype(bool)
            b = mask_utils.decode(mask_utils.frPyObjects([SQUARE_B], H, W)).squeeze(-1).astype(bool)
            assert (a & b).sum() > 20
            np.testing.assert_array_equal(item["mask"], a | b)
            assert item["mask"][15, 15]  # inside both squares
            lavt = (a.astype(int) + b.astype(int)) == 1  # what summing and keeping == 1 would give
            assert (item["mask"] != lavt).sum() == (a & b).sum()
        elif j == 1:
            np.testing.assert_array_equal(item["mask"], blob_mask())
        elif j == 2:
            np.testing.assert_array_equal(item["mask"], ring_mask())
        else:
            tri = mask_utils.decode(mask_utils.frPyObjects([TRIANGLE], H, W)).squeeze(-1).astype(bool)
            np.testing.assert_array_equal(item["mask"], tri)
            assert tri.sum() > 40
    assert len(seen) == 4
    # sentence ids of a ref are all visited, once each
    sent_ids = [ds[i]["sent_id"] for i in range(len(ds))]
    assert len(set(sent_ids)) == len(sent_ids) == 10


def test_decode_segmentation_errors():
    with pytest.raises(ValueError, match="RLE size"):
        decode_segmentation({"size": [5, 5], "counts": [25]}, 6, 5, "ann 7")
    with pytest.raises(ValueError, match="sum to"):
        decode_segmentation({"size": [5, 5], "counts": [3, 4]}, 5, 5)
    with pytest.raises(ValueError, match="x,y pairs"):
        decode_segmentation([[1.0, 2.0, 3.0]], 5, 5)
    with pytest.raises(ValueError, match="polygon list or an RLE"):
        decode_segmentation("nope", 5, 5)
    assert not decode_segmentation([], 5, 5).any()


def test_image_name_comes_from_instances(refcoco):
    root, info = refcoco
    ds = ReferDataset(root, "refcoco", "unc", "train")
    ref = ds.refs[0]
    assert not (info["image_dir"] / ref["file_name"]).exists()
    assert ds.image_path(ref["image_id"]).is_file()


def test_missing_image_error_or_skip(refcoco, caplog):
    root, info = refcoco
    victim = info["image_dir"] / "COCO_train2014_000000000102.png"  # the testA image
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000102.png"):
        ReferDataset(root, "refcoco", "unc", "test")
    with caplog.at_level(logging.WARNING):
        ds = ReferDataset(root, "refcoco", "unc", "test", skip_missing_images=True)
    assert len(ds.refs) == 4 and {r["split"] for r in ds.refs} == {"testB"}
    assert "skipped 4 of 8 refs" in caplog.text
    with pytest.raises(ValueError, match="no ref"):
        ReferDataset(root, "refcoco", "unc", "testA", skip_missing_images=True)


def test_image_root_parameter(refcoco, tmp_path_factory):
    root, info = refcoco
    moved = tmp_path_factory.mktemp("elsewhere")
    for p in info["image_dir"].iterdir():
        p.rename(moved / p.name)
    with pytest.raises(FileNotFoundError, match="image_root"):
        ReferDataset(root, "refcoco", "unc", "val")
    ds = ReferDataset(root, "refcoco", "unc", "val", image_root=moved)
    assert ds[0]["image"].shape == (H, W, 3)


def test_malformed_files(refcoco):
    root, _ = refcoco
    refs_file = root / "refcoco" / "refs(unc).p"
    good = refs_file.read_bytes()
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p"):
        ReferDataset(root, "refcoco", "google", "val")
    refs_file.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p is not a readable pickle"):
        ReferDataset(root, "refcoco", "unc", "val")
    refs_file.write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(ValueError, match="expected a list of ref dicts"):
        ReferDataset(root, "refcoco", "unc", "val")
    refs_file.write_bytes(pickle.dumps([{"ref_id": 3, "ann_id": 1, "image_id": 1, "split": "val"}]))
    with pytest.raises(ValueError, match=r"ref_id 3\) lacks \['sentences'\]"):
        ReferDataset(root, "refcoco", "unc", "val")
    refs_file.write_bytes(good)
    inst = root / "refcoco" / "instances.json"
    text = inst.read_text()
    inst.write_text(text[:-10])
    with pytest.raises(ValueError, match="instances.json is not valid JSON"):
        ReferDataset(root, "refcoco", "unc", "val")
    data = json.loads(text)
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 1011]
    inst.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no annotation with id 1011"):
        ReferDataset(root, "refcoco", "unc", "val")
    inst.unlink()
    with pytest.raises(FileNotFoundError, match="instances.json"):
        ReferDataset(root, "refcoco", "unc", "val")


def test_bad_arguments(refcoco):
    root, _ = refcoco
    with pytest.raises(ValueError, match="unknown dataset/split_by"):
        ReferDataset(root, "refcoco+", "google", "val")
    with pytest.raises(ValueError, match="sentences must be"):
        ReferDataset(root, "refcoco", "unc", "val", sentences="first")


def test_random_mode_draws_one_sentence_per_ref(refcoco):
    root, _ = refcoco
    ds = ReferDataset(root, "refcoco", "unc", "train", sentences="random", seed=3)
    assert len(ds) == 4  # one item per ref
    last = ds.refs[3]  # 4 sentences
    def draws(d, epochs):  # noqa: E306
        out = []
        for e in epochs:
            d.set_epoch(e)
            out.append(d[3]["sent_id"])
        return out
    first = draws(ds, range(12))
    assert set(first) <= set(last["sent_ids"]) and len(set(first)) >= 3  # changes with the epoch
    assert draws(ds, range(12)) == first  # deterministic per (seed, epoch, index)
    assert ds.ref_and_sentence(3)[1]["sent_id"] == ds[3]["sent_id"]  # the same draw, no image read
    again = ReferDataset(root, "refcoco", "unc", "train", sentences="random", seed=3)
    assert draws(again, range(12)) == first
    other = ReferDataset(root, "refcoco", "unc", "train", sentences="random", seed=4)
    assert draws(other, range(12)) != first
    ds.set_epoch(0)
    assert ds[0]["sent_id"] == ds.refs[0]["sent_ids"][0]  # a one-sentence ref always gives it


def test_transform_and_collate(refcoco):
    root, _ = refcoco
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "thing", "number", "cafe", "0", "1", "2", "3"]
    tokenizer = TextTokenizer(words)
    transform = ReferTransform(16, tokenizer, 8, keep_original=True)
    ds = ReferDataset(root, "refcoco", "unc", "val", transform=transform)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["target"].shape == (3, 16, 16)
    assert batch["input_ids"].shape == (3, 8) and batch["input_ids"][:, 0].eq(2).all()  # [CLS]
    assert isinstance(batch["sentence"], list) and len(batch["sentence"]) == 3
    assert batch["ref_id"] == [10, 11, 11] and batch["no_target"] == [False] * 3
    assert isinstance(batch["image"], list) and batch["image"][0].shape == (H, W, 3)
    with pytest.raises(ValueError, match="different shapes"):
        collate([{"x": torch.zeros(2)}, {"x": torch.zeros(3)}])


# ---- broken instances.json: refused with a message naming the annotation, never a crash ----------
def _set_segmentation(root: Path, ann_id: int, segmentation) -> None:
    inst = root / "refcoco" / "instances.json"
    data = json.loads(inst.read_text())
    for ann in data["annotations"]:
        if ann["id"] == ann_id:
            ann["segmentation"] = segmentation
    inst.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them


_CHILD = r"""
import resource, sys
limit = 4 << 30  # torch needs ~3 GiB of address space to import; pycocotools asked for far more
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from coupalign_core.data import ReferDataset
for root in sys.argv[1:]:
    try:
        ds = ReferDataset(root, "refcoco", "unc", "val")
        print("LOADED", [int(ds[i]["mask"].sum()) for i in range(len(ds))], flush=True)
    except ValueError as e:
        print("REFUSED", e, flush=True)
"""


def test_nonfinite_or_huge_coordinates_are_refused_before_pycocotools(tmp_path):
    """pycocotools sizes its buffers by coordinate: these crash the process (segfault under the
    memory limit the child runs with, an OOM kill without one) unless refused first."""
    import os
    import subprocess
    import sys

    values = {"nan": float("nan"), "inf": float("inf"), "huge": 1e9, "far_negative": -1e7}
    roots = []
    for name, value in values.items():
        root = tmp_path / name
        build_refer(root)
        _set_segmentation(root, 1010, [[4.0, 4.0, value, 4.0, 20.0, 20.0]])  # val split, ref_id 10
        roots.append(str(root))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, "-c", _CHILD, *roots], capture_output=True, text=True, env=env,
                           timeout=300)
    lines = child.stdout.splitlines()
    assert child.returncode == 0 and len(lines) == len(values), (child.returncode, child.stdout, child.stderr[-2000:])
    for (name, _), line, root in zip(values.items(), lines, roots):
        assert line.startswith("REFUSED"), (name, line)
        assert "annotation 1010" in line and f"{root}/refcoco/instances.json" in line, line
        assert ("non-finite" in line) if name in ("nan", "inf") else ("outside the image" in line), line


def test_coordinates_slightly_outside_the_image_are_accepted(refcoco):
    root, _ = refcoco
    _set_segmentation(root, 1010, [[-1.5, 0.0, W + 1.5, 0.0, W + 1.0, H + 1.9, 0.0, H]])  # rounding slack
    ds = ReferDataset(root, "refcoco", "unc", "val")
    assert ds.load_mask(1010, 101).all()


DEGENERATE = {
    "two_points": ([[2.0, 2.0, 9.0, 9.0]], "no polygon of 3 or more points"),
    "zero_area": ([[1.0, 1.0, 5.0, 5.0, 9.0, 9.0]], "empty mask"),
    "empty": ([], "empty segmentation"),
    "empty_rle": ({"size": [H, W], "counts": [H * W]}, "empty mask"),
    "empty_rle_list": ([{"size": [H, W], "counts": mask_utils.encode(np.zeros((H, W), np.uint8, order="F"))[
        "counts"].decode()}], "empty mask"),
    "short_rle": ({"size": [H, W], "counts": "3"}, "sum to 3"),  # pycocotools would decode stray memory
    "negative_rle": ({"size": [H, W], "counts": [H * W + 5, -5]}, "non-negative"),
    "string": ("polygon", "expected a polygon list"),
    "no_segmentation": (None, "has no segmentation"),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_bad_annotation_is_an_error_by_default(refcoco, case):
    """Before: an empty ground truth for a ref that has a target (the score silently changes)."""
    root, _ = refcoco
    segmentation, reason = DEGENERATE[case]
    if segmentation is None:
        inst = root / "refcoco" / "instances.json"
        data = json.loads(inst.read_text())
        data["annotations"] = [{k: v for k, v in a.items() if not (a["id"] == 1011 and k == "segmentation")}
                               for a in data["annotations"]]
        inst.write_text(json.dumps(data))
    else:
        _set_segmentation(root, 1011, segmentation)
    with pytest.raises(BadAnnotationError, match="annotation 1011 of .*instances.json") as err:
        ReferDataset(root, "refcoco", "unc", "val")
    assert reason in str(err.value) and "ref_id 11" in str(err.value) and "on_bad_annotation='skip'" in str(err.value)
    ReferDataset(root, "refcoco", "unc", "train")  # another split does not use the annotation


def test_bad_annotation_skip_drops_and_counts(refcoco, caplog):
    root, _ = refcoco
    _set_segmentation(root, 1011, [[2.0, 2.0, 9.0, 9.0]])
    _set_segmentation(root, 1013, [])
    with caplog.at_level(logging.WARNING):
        ds = ReferDataset(root, "refcoco", "unc", "val", on_bad_annotation="skip")
    assert [r["ref_id"] for r in ds.refs] == [10, 12]
    assert ds.skipped_ref_ids == {"bad_annotation": [11, 13], "missing_image": []}
    assert set(ds.bad_annotations) == {1011, 1013} and "empty segmentation" in ds.bad_annotations[1013]
    assert len(ds) == 1 + 3 and all(ds[i]["mask"].any() for i in range(len(ds)))
    assert "skipped 2 of 4 refs (6 sentences) whose annotation gives no usable mask" in caplog.text
    assert "ann 1011" in caplog.text
    with pytest.raises(ValueError, match="on_bad_annotation must be one of"):
        ReferDataset(root, "refcoco", "unc", "val", on_bad_annotation="ignore")


def test_decode_segmentation_reads_a_list_of_rles():
    blob, ring = blob_mask(), ring_mask()
    parts = []
    for m in (blob, ring):
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        parts.append({"size": enc["size"], "counts": enc["counts"].decode("ascii")})
    np.testing.assert_array_equal(decode_segmentation(parts, H, W), blob | ring)
    np.testing.assert_array_equal(decode_segmentation(parts[:1], H, W), blob)
    with pytest.raises(BadAnnotationError, match="ann 5: compressed RLE counts sum to"):
        decode_segmentation([{"size": [H, W], "counts": parts[0]["counts"] + "5"}], H, W, "ann 5")


@pytest.mark.parametrize("case", ["image_without_height", "image_size_nan", "annotation_without_id",
                                  "annotation_of_another_image"])
def test_malformed_records_name_what_and_where(refcoco, case):
    """Before: a bare KeyError/ValueError from int(), or a mask of another image's object."""
    root, _ = refcoco
    inst = root / "refcoco" / "instances.json"
    data = json.loads(inst.read_text())
    if case == "image_without_height":
        del data["images"][1]["height"]
        expected = r"images\[1\] lacks \['height'\]"
    elif case == "image_size_nan":
        data["images"][1]["width"] = float("nan")
        expected = "image 101 has a non-integer width nan"
    elif case == "annotation_without_id":
        del data["annotations"][6]["id"]
        expected = r"annotations\[6\] is not a dict with an integer 'id'"
    else:
        next(a for a in data["annotations"] if a["id"] == 1012)["image_id"] = 100
        expected = "annotation 1012 belongs to image 100, not to the ref's image 101 \\(ref_id 12"
    inst.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=expected) as err:
        ReferDataset(root, "refcoco", "unc", "val")
    assert "instances.json" in str(err.value) and not isinstance(err.value, KeyError)


# ---- no-target refs in their own file ------------------------------------------------------------
def test_no_target_refs_file_is_merged_in_ref_id_order(refcoco):
    root, _ = refcoco
    text = "the purple star"
    no_target = [{"ref_id": ref_id, "ann_id": -1, "image_id": 101, "category_id": 1, "split": "val",
                  "file_name": "x", "sent_ids": [ref_id],
                  "sentences": [{"sent_id": ref_id, "raw": text, "sent": text, "tokens": text.split(),
                                 "kind": "no_target", "no_target": True}]} for ref_id in (111, 105)]
    (root / "refcoco" / "no_target_refs(unc).p").write_bytes(pickle.dumps(no_target))
    ds = ReferDataset(root, "refcoco", "unc", "val")
    assert [r["ref_id"] for r in ds.refs] == [10, 11, 12, 13, 105, 111]
    items = [ds[i] for i in range(len(ds))]
    assert [it["no_target"] for it in items].count(True) == 2
    assert all(not it["mask"].any() and it["ann_id"] == -1 for it in items if it["no_target"])
    no_target[0]["ann_id"] = 1010
    (root / "refcoco" / "no_target_refs(unc).p").write_bytes(pickle.dumps(no_target))
    with pytest.raises(ValueError, match=r"no_target_refs\(unc\)\.p: ref_id 111 has ann_id 1010"):
        ReferDataset(root, "refcoco", "unc", "val")
    no_target[0].update(ann_id=-1, ref_id=12)
    (root / "refcoco" / "no_target_refs(unc).p").write_bytes(pickle.dumps(no_target))
    with pytest.raises(ValueError, match=r"repeats ref_ids .*\[12\]"):
        ReferDataset(root, "refcoco", "unc", "val")
