"""Referring segmentation data in the standard *refer* layout (RefCOCO, RefCOCO+, G-Ref, ReferIt, synthetic).

Layout (the one the refer API, LAVT and most RIS code bases read)::

    <data_root>/<dataset>/refs(<split_by>).p   pickled list of refs (Python 2 pickles in the originals)
    <data_root>/<dataset>/no_target_refs(<split_by>).p   optional: refs that name nothing in their image
    <data_root>/<dataset>/instances.json       COCO-style images / annotations / categories
    <data_root>/images/mscoco/images/train2014/ images of refcoco, refcoco+, refcocog
    <data_root>/images/saiapr_tc-12/            images of refclef (ReferIt)
    <data_root>/images/synthetic/               images written by ``coupalign synth``
    <data_root>/images/tabletop/                images (and depth/ beside them) written by ``coupalign sim``

A ref is ``{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
sentences=[{sent_id, raw, sent, tokens, ...}]}``. Its ``file_name`` carries an annotation suffix and is
*not* the image file: the image file name comes from ``instances.json``. Synthetic sentences also carry
``kind`` (expression kind) and ``no_target``; a ref with ``ann_id == -1`` refers to nothing (empty mask).
Such refs live in ``no_target_refs(<split_by>).p``, a file the refer API does not read (its index
looks up every ref's annotation); worlds written before that file existed keep them inline in
``refs(<split_by>).p``, and both layouts read the same here.

Masks are the union of an annotation's polygons or RLEs (a bare RLE dict, compressed or not, or a
list of compressed RLEs, the form the refer API's ``getMask`` decodes). LAVT's copy of the refer code
sums the per-polygon masks and drops pixels where polygons overlap; here they belong to the object,
as they do in the annotation.

A broken ``instances.json`` is reported, never handed to pycocotools: pycocotools allocates memory by
polygon coordinate (a NaN, Inf or huge value crashes the process) and reads RLE counts without
checking their sum. An annotation that cannot give a mask, or gives an empty one, is a
:class:`BadAnnotationError` naming it; ``ReferDataset(on_bad_annotation="skip")`` drops its refs and
counts them instead, since a benchmark must not silently change.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Collection

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

# (dataset, split_by) -> split names that can be asked for. "test" is the union of every test split
# (testA ∪ testB for unc), as the refer API answers it; RefCOCO-family papers report testA and testB.
DATASET_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB", "test"),
    ("refcoco", "google"): ("train", "val", "test"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB", "test"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
    ("refclef", "unc"): ("train", "val", "testA", "testB", "testC", "test"),
    ("refclef", "berkeley"): ("train", "val", "test"),
    ("synthetic", "unc"): ("train", "val", "testA", "testB", "test"),
    ("tabletop", "unc"): ("train", "val", "testA", "testB", "test"),
}

# dataset -> image folder relative to data_root (the refer API's IMAGE_DIR).
DEFAULT_IMAGE_DIRS: dict[str, str] = {
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
    "synthetic": "images/synthetic",
    "tabletop": "images/tabletop",
}

SENTENCE_MODES = ("all", "random")
BAD_ANNOTATION_POLICIES = ("error", "skip")
NO_TARGET_ANN_ID = -1  # ann_id of a ref that names something absent from its image

# A polygon vertex may lie this far outside the image (a fraction of the side, at least the pixel
# minimum): annotation tools round and clip loosely; anything further is a broken file.
COORDINATE_SLACK = 0.02
COORDINATE_SLACK_MIN_PX = 2.0
MAX_IMAGE_SIDE = 65535  # JPEG's limit; a larger side in instances.json is a broken record

_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
_IMAGE_KEYS = ("id", "file_name", "height", "width")


class BadAnnotationError(ValueError):
    """An annotation whose segmentation gives no usable mask; the message names it and says why."""


def refs_path(data_root: str | os.PathLike[str], dataset: str, split_by: str) -> Path:
    return Path(data_root) / dataset / f"refs({split_by}).p"


def no_target_refs_path(data_root: str | os.PathLike[str], dataset: str, split_by: str) -> Path:
    """Refs with ``ann_id == -1``, kept apart so that the refer API, which indexes every ref's
    annotation, reads ``refs(<split_by>).p`` unchanged."""
    return Path(data_root) / dataset / f"no_target_refs({split_by}).p"


def instances_path(data_root: str | os.PathLike[str], dataset: str) -> Path:
    return Path(data_root) / dataset / "instances.json"


def ref_in_split(ref_split: str, split: str) -> bool:
    """The refer API's split rule: ``testA`` also takes refs marked ``testAB``; ``test`` takes every test ref."""
    if split == "test":
        return "test" in ref_split
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    return ref_split == split


def load_refs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads a refs pickle (Python 2 or 3) and checks each ref has the fields the loader needs.

    Python 2 pickles hold byte strings; ``encoding="latin1"`` decodes them (as every refer loader
    does). Only open refs files you trust: unpickling runs code chosen by the file's author.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"refs file {path} not found (expected a pickled list of refs at "
            f"<data_root>/<dataset>/refs(<split_by>).p)"
        )
    try:
        with open(path, "rb") as f:
            refs = pickle.load(f, encoding="latin1")
    except Exception as e:  # pickle raises many types for a corrupt file
        raise ValueError(f"refs file {path} is not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(refs, list):
        raise ValueError(f"refs file {path} holds a {type(refs).__name__}; expected a list of ref dicts")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ValueError(f"refs file {path}: entry {i} is a {type(ref).__name__}, expected a dict")
        missing = [k for k in _REF_KEYS if k not in ref]
        if missing:
            raise ValueError(f"refs file {path}: ref {i} (ref_id {ref.get('ref_id')}) lacks {missing}")
        sents = ref["sentences"]
        if not isinstance(sents, list) or not sents:
            raise ValueError(f"refs file {path}: ref_id {ref['ref_id']} has no sentences list")
        for s in sents:
            if not isinstance(s, dict) or "sent_id" not in s or not ("raw" in s or "sent" in s):
                raise ValueError(
                    f"refs file {path}: ref_id {ref['ref_id']} has a sentence that is not a dict with "
                    f"sent_id and raw/sent: {s!r:.80}"
                )
    return refs


def load_refer_refs(data_root: str | os.PathLike[str], dataset: str, split_by: str) -> list[dict[str, Any]]:
    """Every ref of a data set: ``refs(<split_by>).p`` plus ``no_target_refs(<split_by>).p`` if present.

    With both files the refs come back in ``ref_id`` order, the order one inline file had, so a
    world reads the same items in either layout.
    """
    refs = load_refs(refs_path(data_root, dataset, split_by))
    extra_file = no_target_refs_path(data_root, dataset, split_by)
    if not extra_file.is_file():
        return refs
    extra = load_refs(extra_file)
    for ref in extra:
        if int(ref["ann_id"]) != NO_TARGET_ANN_ID:
            raise ValueError(
                f"refs file {extra_file}: ref_id {ref['ref_id']} has ann_id {ref['ann_id']}; "
                f"this file holds only refs with ann_id {NO_TARGET_ANN_ID}"
            )
    seen = {int(r["ref_id"]) for r in refs}
    clash = sorted(int(r["ref_id"]) for r in extra if int(r["ref_id"]) in seen)
    if clash:
        raise ValueError(f"refs file {extra_file} repeats ref_ids of {refs_path(data_root, dataset, split_by)}: "
                         f"{clash[:5]}")
    return sorted(refs + extra, key=lambda r: int(r["ref_id"]))


def load_instances(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a COCO-style instances.json and checks its images and annotations records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"instances file {path} not found (expected COCO-style JSON with images/annotations at "
            f"<data_root>/<dataset>/instances.json)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"instances file {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"instances file {path} lacks the COCO 'images' and 'annotations' lists")
    for i, image in enumerate(data["images"]):
        missing = [k for k in _IMAGE_KEYS if not isinstance(image, dict) or k not in image]
        if missing:
            raise ValueError(f"instances file {path}: images[{i}] lacks {missing}")
        for key in ("id", "height", "width"):
            if not _is_int(image[key]):
                raise ValueError(f"instances file {path}: image {image['id']!r} has a non-integer {key} {image[key]!r}")
        if not (0 < int(image["height"]) <= MAX_IMAGE_SIDE and 0 < int(image["width"]) <= MAX_IMAGE_SIDE):
            raise ValueError(f"instances file {path}: image {image['id']} has size {image['width']}x"
                             f"{image['height']}; each side must be in 1..{MAX_IMAGE_SIDE}")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or not _is_int(ann["id"]):
            raise ValueError(f"instances file {path}: annotations[{i}] is not a dict with an integer 'id'")
    return data


def _is_int(value: Any) -> bool:
    """An integer id or size as JSON gives it (a float with an integral value counts; bools do not)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


# ---- segmentations: checked here, then decoded by pycocotools ------------------------------------
def _checked_polygon(poly: Any, height: int, width: int, where: str) -> list[float]:
    """A flat x,y list whose coordinates are finite and inside the image (with slack)."""
    if not isinstance(poly, (list, tuple)) or len(poly) % 2:
        raise BadAnnotationError(f"{where}: a polygon must be a flat list of x,y pairs, got {poly!r:.80}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
        raise BadAnnotationError(f"{where}: a polygon must be a flat list of x,y numbers, got {poly!r:.80}")
    coords = np.asarray(poly, dtype=np.float64)
    if not np.isfinite(coords).all():
        raise BadAnnotationError(f"{where}: a polygon has a non-finite coordinate (NaN or Inf)")
    for axis, side in (("x", width), ("y", height)):
        values = coords[0::2] if axis == "x" else coords[1::2]
        slack = max(COORDINATE_SLACK_MIN_PX, COORDINATE_SLACK * side)
        if values.size and (values.min() < -slack or values.max() > side + slack):
            raise BadAnnotationError(
                f"{where}: polygon {axis} coordinates span [{values.min():g}, {values.max():g}], outside the "
                f"image's 0..{side} (allowed slack {slack:g} px)"
            )
    return [float(v) for v in coords]


def _compressed_rle_counts(counts: bytes, where: str) -> list[int]:
    """Run lengths of COCO's compressed RLE string (6-bit chunks from '0', deltas from the 3rd run on)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value = shift = 0
        more = True
        while more:
            if pos >= len(counts) or shift > 30:
                raise BadAnnotationError(f"{where}: compressed RLE counts end mid-number or overflow")
            chunk = counts[pos] - 48
            if not 0 <= chunk < 64:
                raise BadAnnotationError(f"{where}: compressed RLE counts hold an invalid byte {counts[pos]!r}")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise BadAnnotationError(f"{where}: compressed RLE counts decode to a negative run")
        runs.append(value)
    return runs


def _checked_rle(rle: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """An RLE dict (compressed or not) of this image's size -> pycocotools' compressed RLE."""
    try:
        size = [int(v) for v in rle["size"]]
    except (TypeError, ValueError):
        raise BadAnnotationError(f"{where}: RLE size must be [height, width], got {rle['size']!r:.80}") from None
    if size != [height, width]:
        raise BadAnnotationError(f"{where}: RLE size {size} differs from the image's [height, width] {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed (column-major run lengths)
        if not all(_is_int(c) and c >= 0 for c in counts):
            raise BadAnnotationError(f"{where}: uncompressed RLE counts must be non-negative integers")
        runs = [int(c) for c in counts]
        if sum(runs) != height * width:
            raise BadAnnotationError(f"{where}: uncompressed RLE counts sum to {sum(runs)}, expected {height * width}")
        return dict(mask_utils.frPyObjects({"size": size, "counts": runs}, height, width))
    if isinstance(counts, (str, bytes)):
        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError:
            raise BadAnnotationError(f"{where}: compressed RLE counts are not ASCII") from None
        total = sum(_compressed_rle_counts(raw, where))
        if total != height * width:
            raise BadAnnotationError(f"{where}: compressed RLE counts sum to {total}, expected {height * width}")
        return {"size": size, "counts": raw}
    raise BadAnnotationError(f"{where}: RLE counts must be a list or a string, got {type(counts).__name__}")


def _is_rle(value: Any) -> bool:
    return isinstance(value, dict) and "counts" in value and "size" in value


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str = "segmentation") -> dict[str, Any]:
    """COCO segmentation -> one compressed RLE (the union of its parts), checked before pycocotools.

    Accepts a polygon list, a bare RLE dict (compressed or uncompressed) and a list of RLE dicts.
    Polygons of fewer than 3 points are left out (4 numbers would read as a bounding box); what
    remains may be empty. Raises :class:`BadAnnotationError` (naming ``where``) on anything else.
    """
    if _is_rle(segmentation):
        return _checked_rle(segmentation, height, width, where)
    if not isinstance(segmentation, list):
        raise BadAnnotationError(
            f"{where}: expected a polygon list or an RLE dict with counts and size, got {segmentation!r:.80}"
        )
    if segmentation and all(_is_rle(part) for part in segmentation):
        rles = [_checked_rle(part, height, width, where) for part in segmentation]
        return rles[0] if len(rles) == 1 else dict(mask_utils.merge(rles))
    polygons = [p for p in (_checked_polygon(p, height, width, where) for p in segmentation) if len(p) >= 6]
    if not polygons:
        return dict(mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F")))
    return dict(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """COCO segmentation (see :func:`segmentation_to_rle`) -> (height, width) bool mask.

    Polygons are rasterised one by one and merged as a union, so pixels covered by two polygons of
    the same object stay in the mask. ``where`` names the annotation in error messages.
    """
    rle = segmentation_to_rle(segmentation, height, width, where)
    with warnings.catch_warnings():  # pycocotools 2.0.x calls np.array(copy=False) under NumPy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        mask: np.ndarray = mask_utils.decode(rle).astype(bool)
    return mask


def annotation_problem(ann: dict[str, Any], height: int, width: int, where: str) -> str | None:
    """Why an annotation gives no usable mask for a ref that has a target, or None if it does."""
    if "segmentation" not in ann:
        return "has no segmentation"
    segmentation = ann["segmentation"]
    try:
        rle = segmentation_to_rle(segmentation, height, width, where)
    except BadAnnotationError as e:
        return str(e).removeprefix(f"{where}: ")
    if int(mask_utils.area(rle)) > 0:
        return None
    if isinstance(segmentation, list) and not segmentation:
        return "has an empty segmentation"
    if isinstance(segmentation, list) and not any(_is_rle(p) or len(p) >= 6 for p in segmentation):
        return "has no polygon of 3 or more points"
    return "decodes to an empty mask (zero area)"


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey or alpha images are converted so every item has three channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} not found")
        raise ValueError(f"image {path} could not be decoded (expected a PNG or JPEG file)")
    rgb: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return rgb


class ReferDataset(Dataset[Any]):
    """One split of a refer-layout data set.

    ``sentences="all"`` gives one item per sentence (evaluation: every sentence of every ref);
    ``"random"`` gives one item per ref and draws one of its sentences from ``(seed, epoch, index)``
    (training: call :meth:`set_epoch` each epoch). Images and masks are read lazily per item; the
    refs and the instances index are read, and every annotation the split uses is checked, here.

    ``on_bad_annotation``: what to do with a ref that has a target whose annotation gives no usable
    mask (a broken or degenerate segmentation, or an empty mask): ``"error"`` (default) raises
    :class:`BadAnnotationError` naming the annotation; ``"skip"`` drops the ref, logs and counts it
    (``skipped_ref_ids["bad_annotation"]``, reasons in ``bad_annotations``).
    ``skip_missing_images=True`` likewise drops refs whose image file is missing
    (``skipped_ref_ids["missing_image"]``). ``image_ids``: keep only the refs of these images (a
    part of a split, such as one held out of training for model selection).

    An item is ``{"image": (H,W,3) uint8 RGB, "mask": (H,W) bool, "sentence", "ref_id", "sent_id",
    "image_id", "ann_id", "kind" (str or None), "no_target" (bool)}``, passed through ``transform``
    when one is given (e.g. :class:`~coupalign_core.data.transforms.ReferTransform`).
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        dataset: str,
        split_by: str,
        split: str,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        image_root: str | os.PathLike[str] | None = None,
        sentences: str = "all",
        skip_missing_images: bool = False,
        on_bad_annotation: str = "error",
        seed: int = 0,
        image_ids: Collection[int] | None = None,
    ) -> None:
        _check_arguments(dataset, split_by, split, sentences, on_bad_annotation)
        self.data_root = Path(data_root)
        self.dataset, self.split_by, self.split = dataset, split_by, split
        self.image_root = Path(image_root) if image_root is not None else self.data_root / DEFAULT_IMAGE_DIRS[dataset]
        self.transform = transform
        self.sentences = sentences
        self.seed = int(seed)
        self.epoch = 0
        self.refs_file = refs_path(data_root, dataset, split_by)
        self.instances_file = instances_path(data_root, dataset)

        refs = [r for r in load_refer_refs(data_root, dataset, split_by) if ref_in_split(str(r["split"]), split)]
        if image_ids is not None:
            wanted = {int(i) for i in image_ids}
            refs = [r for r in refs if int(r["image_id"]) in wanted]
        if not refs:
            of_images = "" if image_ids is None else f" among the {len(image_ids)} images asked for"
            raise ValueError(f"refs file {self.refs_file} has no ref in split {split!r}{of_images}")
        instances = load_instances(self.instances_file)
        images = {int(im["id"]): im for im in instances["images"]}
        needed_anns = {int(r["ann_id"]) for r in refs}
        anns = {int(a["id"]): a for a in instances["annotations"] if int(a["id"]) in needed_anns}
        self._check_references(refs, images, anns)

        self.bad_annotations: dict[int, str] = self._find_bad_annotations(refs, images, anns, on_bad_annotation)
        self.skipped_ref_ids: dict[str, list[int]] = {"bad_annotation": [], "missing_image": []}
        kept = self._drop_refs(refs, lambda ref: int(ref["ann_id"]) in self.bad_annotations, "bad_annotation",
                               "whose annotation gives no usable mask")
        missing_images = {i for i in {int(r["image_id"]) for r in kept}
                          if not (self.image_root / images[i]["file_name"]).is_file()}
        if missing_images and not skip_missing_images:
            ref = next(r for r in kept if int(r["image_id"]) in missing_images)
            raise FileNotFoundError(
                f"image {self.image_root / images[int(ref['image_id'])]['file_name']} of ref_id {ref['ref_id']} not "
                f"found (image_root {self.image_root}; pass skip_missing_images=True to skip such refs)"
            )
        kept = self._drop_refs(kept, lambda ref: int(ref["image_id"]) in missing_images, "missing_image",
                               f"whose image is missing ({len(missing_images)} images) under {self.image_root}")
        if not kept:
            skipped = ", ".join(f"{len(v)} with {k.replace('_', ' ')}" for k, v in self.skipped_ref_ids.items() if v)
            raise ValueError(f"no ref of {dataset}/{split_by} {split} is left after skipping {skipped} "
                             f"(images under {self.image_root})")

        self.refs: list[dict[str, Any]] = kept
        self.images: dict[int, dict[str, Any]] = {int(r["image_id"]): images[int(r["image_id"])] for r in kept}
        self.annotations: dict[int, dict[str, Any]] = anns
        # "all": (ref index, sentence index) per item, in file order.
        self._items: list[tuple[int, int]] = [
            (ri, si) for ri, ref in enumerate(kept) for si in range(len(ref["sentences"]))
        ]

    def _check_references(self, refs: list[dict[str, Any]], images: dict[int, dict[str, Any]],
                          anns: dict[int, dict[str, Any]]) -> None:
        """Every ref's image and annotation exist in instances.json, and the annotation is of that image."""
        for ref in refs:
            image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
            where = f"(ref_id {ref['ref_id']} of {self.refs_file})"
            if image_id not in images:
                raise ValueError(f"{self.instances_file} has no image with id {image_id} {where}")
            if ann_id == NO_TARGET_ANN_ID:
                continue
            if ann_id not in anns:
                raise ValueError(f"{self.instances_file} has no annotation with id {ann_id} {where}")
            ann_image = anns[ann_id].get("image_id")
            if ann_image is not None and _is_int(ann_image) and int(ann_image) != image_id:
                raise ValueError(
                    f"{self.instances_file}: annotation {ann_id} belongs to image {ann_image}, not to the "
                    f"ref's image {image_id} {where}"
                )

    def _find_bad_annotations(self, refs: list[dict[str, Any]], images: dict[int, dict[str, Any]],
                              anns: dict[int, dict[str, Any]], policy: str) -> dict[int, str]:
        """ann_id -> why it gives no usable mask, for the targets of ``refs``; raises on the first under "error"."""
        bad: dict[int, str] = {}
        checked: set[int] = set()
        for ref in refs:
            ann_id = int(ref["ann_id"])
            if ann_id == NO_TARGET_ANN_ID or ann_id in checked:
                continue
            checked.add(ann_id)
            image = images[int(ref["image_id"])]
            where = f"annotation {ann_id} of {self.instances_file}"
            problem = annotation_problem(anns[ann_id], int(image["height"]), int(image["width"]), where)
            if problem is None:
                continue
            if policy == "error":
                raise BadAnnotationError(
                    f"{where} (target of ref_id {ref['ref_id']}) {problem}; fix the file, or pass "
                    f"on_bad_annotation='skip' to drop and count such refs"
                )
            bad[ann_id] = problem
        return bad

    def _drop_refs(self, refs: list[dict[str, Any]], drop: Callable[[dict[str, Any]], bool], reason: str,
                   because: str) -> list[dict[str, Any]]:
        """``refs`` without those ``drop`` picks, which are counted under ``reason`` and logged."""
        kept = [r for r in refs if not drop(r)]
        dropped = [r for r in refs if drop(r)]
        if dropped:
            self.skipped_ref_ids[reason] = [int(r["ref_id"]) for r in dropped]
            examples = ""
            if reason == "bad_annotation":
                examples = "; " + "; ".join(f"ann {a}: {p}" for a, p in list(self.bad_annotations.items())[:5])
            log.warning(
                "%s/%s %s: skipped %d of %d refs (%d sentences) %s%s",
                self.dataset, self.split_by, self.split, len(dropped), len(refs),
                sum(len(r["sentences"]) for r in dropped), because, examples,
            )
        return kept

    def __len__(self) -> int:
        return len(self._items) if self.sentences == "all" else len(self.refs)

    @property
    def num_sentences(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """Selects the sentence drawn per ref in ``"random"`` mode (same epoch, same draw).

        DataLoader workers copy the data set when an epoch's iterator starts, so call this before
        iterating; persistent workers (``persistent_workers=True``) would keep the old epoch.
        """
        self.epoch = int(epoch)

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        if self.sentences == "all":
            return self._items[index]
        n = len(self.refs[index]["sentences"])
        draw = np.random.default_rng([self.seed, self.epoch, index]).integers(n) if n > 1 else 0
        return index, int(draw)

    def ref_and_sentence(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ref and sentence dicts behind item ``index``, without reading any image."""
        ref_index, sent_index = self._locate(index)
        ref = self.refs[ref_index]
        sentence: dict[str, Any] = ref["sentences"][sent_index]
        return ref, sentence

    def image_path(self, image_id: int) -> Path:
        return self.image_root / str(self.images[image_id]["file_name"])

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, checked against the size instances.json gives for it."""
        info = self.images[image_id]
        path = self.image_path(image_id)
        image = read_image_rgb(path)
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            raise ValueError(
                f"image {path} is {image.shape[1]}x{image.shape[0]}, instances.json says {expected[1]}x{expected[0]}"
            )
        return image

    def load_mask(self, ann_id: int, image_id: int) -> np.ndarray:
        """(H, W) bool mask of an annotation; all False for a no-target ref (``ann_id == -1``)."""
        info = self.images[image_id]
        height, width = int(info["height"]), int(info["width"])
        if ann_id == NO_TARGET_ANN_ID:
            return np.zeros((height, width), dtype=bool)
        ann = self.annotations[ann_id]
        where = f"annotation {ann_id} of {self.instances_file}"
        if "segmentation" not in ann:
            raise BadAnnotationError(f"{where} has no segmentation")
        return decode_segmentation(ann["segmentation"], height, width, where)

    def __getitem__(self, index: int) -> Any:
        ref, sent = self.ref_and_sentence(index)
        image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
        no_target = bool(sent.get("no_target", False)) or ann_id == NO_TARGET_ANN_ID
        image = self.load_image(image_id)
        mask = np.zeros(image.shape[:2], dtype=bool) if no_target else self.load_mask(ann_id, image_id)
        # LAVT feeds the raw sentence to BERT; "sent" (lower-cased, punctuation stripped) is the fallback.
        text = sent.get("raw") or sent.get("sent") or ""
        item = {
            "image": image,
            "mask": mask,
            "sentence": str(text),
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sent["sent_id"]),
            "image_id": image_id,
            "ann_id": ann_id,
            "kind": sent.get("kind"),
            "no_target": no_target,
        }
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        if not hasattr(self, "refs"):  # failed half-way through __init__
            return f"ReferDataset({self.__dict__.get('dataset')}, not loaded)"
        return (
            f"ReferDataset({self.dataset}/{self.split_by} {self.split}: {len(self.refs)} refs, "
            f"{self.num_sentences} sentences, sentences={self.sentences!r}, images under {self.image_root})"
        )


def _check_arguments(dataset: str, split_by: str, split: str, sentences: str, on_bad_annotation: str) -> None:
    if (dataset, split_by) not in DATASET_SPLITS:
        known = ", ".join(f"{d}/{s}" for d, s in DATASET_SPLITS)
        raise ValueError(f"unknown dataset/split_by {dataset}/{split_by}; known: {known}")
    if split not in DATASET_SPLITS[(dataset, split_by)]:
        raise ValueError(f"{dataset}/{split_by} has no split {split!r}; valid: {DATASET_SPLITS[(dataset, split_by)]}")
    if sentences not in SENTENCE_MODES:
        raise ValueError(f"sentences must be one of {SENTENCE_MODES}, got {sentences!r}")
    if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
        raise ValueError(f"on_bad_annotation must be one of {BAD_ANNOTATION_POLICIES}, got {on_bad_annotation!r}")
