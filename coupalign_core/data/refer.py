"""Referring segmentation data in the standard *refer* layout (RefCOCO, RefCOCO+, G-Ref, ReferIt, synthetic).

Layout (the one the refer API, LAVT and most RIS code bases read)::

    <data_root>/<dataset>/refs(<split_by>).p   pickled list of refs (Python 2 pickles in the originals)
    <data_root>/<dataset>/instances.json       COCO-style images / annotations / categories
    <data_root>/images/mscoco/images/train2014/ images of refcoco, refcoco+, refcocog
    <data_root>/images/saiapr_tc-12/            images of refclef (ReferIt)
    <data_root>/images/synthetic/               images written by ``coupalign synth``

A ref is ``{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
sentences=[{sent_id, raw, sent, tokens, ...}]}``. Its ``file_name`` carries an annotation suffix and is
*not* the image file: the image file name comes from ``instances.json``. Synthetic sentences also carry
``kind`` (expression kind) and ``no_target``; a ref with ``ann_id == -1`` refers to nothing (empty mask).

Masks are the union of an annotation's polygons (or its RLE, compressed or not). LAVT's copy of the
refer code sums the per-polygon masks and drops pixels where polygons overlap; here they belong to
the object, as they do in the annotation.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable

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
}

# dataset -> image folder relative to data_root (the refer API's IMAGE_DIR).
DEFAULT_IMAGE_DIRS: dict[str, str] = {
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
    "synthetic": "images/synthetic",
}

SENTENCE_MODES = ("all", "random")
NO_TARGET_ANN_ID = -1  # ann_id of a ref that names something absent from its image

_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def refs_path(data_root: str | os.PathLike, dataset: str, split_by: str) -> Path:
    return Path(data_root) / dataset / f"refs({split_by}).p"


def instances_path(data_root: str | os.PathLike, dataset: str) -> Path:
    return Path(data_root) / dataset / "instances.json"


def ref_in_split(ref_split: str, split: str) -> bool:
    """The refer API's split rule: ``testA`` also takes refs marked ``testAB``; ``test`` takes every test ref."""
    if split == "test":
        return "test" in ref_split
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    return ref_split == split


def load_refs(path: str | os.PathLike) -> list[dict[str, Any]]:
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


def load_instances(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a COCO-style instances.json and checks it has images and annotations lists."""
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
    return data


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """COCO segmentation (polygon list, compressed or uncompressed RLE) -> (height, width) bool mask.

    Polygons are rasterised one by one and merged as a union, so pixels covered by two polygons of
    the same object stay in the mask. ``where`` names the annotation in error messages.
    """
    if isinstance(segmentation, list):
        polygons = []
        for poly in segmentation:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2:
                raise ValueError(f"{where}: a polygon must be a flat list of x,y pairs, got {poly!r:.80}")
            if len(poly) >= 6:  # fewer than 3 points has no area (and 4 numbers would read as a bbox)
                polygons.append([float(v) for v in poly])
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"{where}: RLE size {size} differs from the image's [height, width] {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed (column-major run lengths)
            if sum(counts) != height * width:
                raise ValueError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
            rle = mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"{where}: RLE counts must be a list or a string, got {type(counts).__name__}")
    else:
        raise ValueError(
            f"{where}: expected a polygon list or an RLE dict with counts and size, got {segmentation!r:.80}"
        )
    with warnings.catch_warnings():  # pycocotools 2.0.x calls np.array(copy=False) under NumPy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey or alpha images are converted so every item has three channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} not found")
        raise ValueError(f"image {path} could not be decoded (expected a PNG or JPEG file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ReferDataset(Dataset):
    """One split of a refer-layout data set.

    ``sentences="all"`` gives one item per sentence (evaluation: every sentence of every ref);
    ``"random"`` gives one item per ref and draws one of its sentences from ``(seed, epoch, index)``
    (training: call :meth:`set_epoch` each epoch). Images and masks are read lazily per item; the
    refs and the instances index are read once here.

    An item is ``{"image": (H,W,3) uint8 RGB, "mask": (H,W) bool, "sentence", "ref_id", "sent_id",
    "image_id", "ann_id", "kind" (str or None), "no_target" (bool)}``, passed through ``transform``
    when one is given (e.g. :class:`~coupalign_core.data.transforms.ReferTransform`).
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        dataset: str,
        split_by: str,
        split: str,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        image_root: str | os.PathLike | None = None,
        sentences: str = "all",
        skip_missing_images: bool = False,
        seed: int = 0,
    ):
        if (dataset, split_by) not in DATASET_SPLITS:
            known = ", ".join(f"{d}/{s}" for d, s in DATASET_SPLITS)
            raise ValueError(f"unknown dataset/split_by {dataset}/{split_by}; known: {known}")
        if split not in DATASET_SPLITS[(dataset, split_by)]:
            raise ValueError(
                f"{dataset}/{split_by} has no split {split!r}; valid: {DATASET_SPLITS[(dataset, split_by)]}"
            )
        if sentences not in SENTENCE_MODES:
            raise ValueError(f"sentences must be one of {SENTENCE_MODES}, got {sentences!r}")
        self.data_root = Path(data_root)
        self.dataset, self.split_by, self.split = dataset, split_by, split
        self.image_root = Path(image_root) if image_root is not None else self.data_root / DEFAULT_IMAGE_DIRS[dataset]
        self.transform = transform
        self.sentences = sentences
        self.seed = int(seed)
        self.epoch = 0

        refs_file = refs_path(data_root, dataset, split_by)
        refs = [r for r in load_refs(refs_file) if ref_in_split(str(r["split"]), split)]
        if not refs:
            raise ValueError(f"refs file {refs_file} has no ref in split {split!r}")
        inst_file = instances_path(data_root, dataset)
        instances = load_instances(inst_file)
        images = {int(im["id"]): im for im in instances["images"]}
        needed_anns = {int(r["ann_id"]) for r in refs}
        anns = {int(a["id"]): a for a in instances["annotations"] if int(a["id"]) in needed_anns}

        kept, missing_images = [], set()
        for ref in refs:
            image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
            if image_id not in images:
                raise ValueError(f"{inst_file} has no image with id {image_id} (ref_id {ref['ref_id']} of {refs_file})")
            if ann_id != NO_TARGET_ANN_ID and ann_id not in anns:
                raise ValueError(
                    f"{inst_file} has no annotation with id {ann_id} (ref_id {ref['ref_id']} of {refs_file})"
                )
            if image_id in missing_images or not (self.image_root / images[image_id]["file_name"]).is_file():
                missing_images.add(image_id)
                if not skip_missing_images:
                    raise FileNotFoundError(
                        f"image {self.image_root / images[image_id]['file_name']} of ref_id {ref['ref_id']} not "
                        f"found (image_root {self.image_root}; pass skip_missing_images=True to skip such refs)"
                    )
                continue
            kept.append(ref)
        if missing_images:
            log.warning(
                "%s/%s %s: skipped %d of %d refs whose image is missing (%d images) under %s",
                dataset, split_by, split, len(refs) - len(kept), len(refs), len(missing_images), self.image_root,
            )
        if not kept:
            raise ValueError(f"no ref of {dataset}/{split_by} {split} has its image under {self.image_root}")

        self.refs: list[dict[str, Any]] = kept
        self.images: dict[int, dict[str, Any]] = {int(r["image_id"]): images[int(r["image_id"])] for r in kept}
        self.annotations: dict[int, dict[str, Any]] = anns
        # "all": (ref index, sentence index) per item, in file order.
        self._items: list[tuple[int, int]] = [
            (ri, si) for ri, ref in enumerate(kept) for si in range(len(ref["sentences"]))
        ]

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
        return ref, ref["sentences"][sent_index]

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.images[image_id]["file_name"]

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
        where = f"annotation {ann_id} of {instances_path(self.data_root, self.dataset)}"
        if "segmentation" not in ann:
            raise ValueError(f"{where} has no segmentation")
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

