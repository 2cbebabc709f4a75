"""A minimal refer loader, written from the refer API's documented behaviour (lichengunc/refer), to
check that what this project writes is read by the tools RefCOCO users run. Not a copy of that code:
only what its index, ``getRefIds`` and ``getMask`` do with the two files.

* ``refs(<split_by>).p`` is unpickled as is; ``instances.json`` gives images, annotations, categories.
* The index maps every ref to its annotation by ``ann_id``: a ref whose annotation does not exist
  fails there (``KeyError``), as it does in the API.
* ``getRefIds(split)``: train/val by equality; testA/testB/testC take every ref whose split name
  holds the letter; ``test`` takes every ref whose split name holds "test".
* ``getMask(ref)``: a segmentation whose first element is a list is polygons, rasterised at the
  image's size; anything else is handed to pycocotools' ``decode`` as it is. The decoded stack is
  summed over its last axis (overlapping polygons count twice) and returned as uint8.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils


class PeerRefer:
    def __init__(self, data_root: str | Path, dataset: str, split_by: str):
        folder = Path(data_root) / dataset
        with open(folder / f"refs({split_by}).p", "rb") as f:
            self.refs: list[dict[str, Any]] = pickle.load(f)
        instances = json.loads((folder / "instances.json").read_text())
        self.anns = {a["id"]: a for a in instances["annotations"]}
        self.images = {im["id"]: im for im in instances["images"]}
        self.categories = {c["id"]: c["name"] for c in instances["categories"]}
        self.ref_to_ann = {r["ref_id"]: self.anns[r["ann_id"]] for r in self.refs}
        self.sentences = {s["sent_id"]: s for r in self.refs for s in r["sentences"]}

    def get_ref_ids(self, split: str) -> list[int]:
        if split in ("testA", "testB", "testC"):
            keep = [r for r in self.refs if split[-1] in r["split"]]
        elif split == "test":
            keep = [r for r in self.refs if "test" in r["split"]]
        else:
            keep = [r for r in self.refs if r["split"] == split]
        return [r["ref_id"] for r in keep]

    def get_mask(self, ref: dict[str, Any]) -> np.ndarray:
        segmentation = self.ref_to_ann[ref["ref_id"]]["segmentation"]
        image = self.images[ref["image_id"]]
        if isinstance(segmentation[0], list):
            rle = mask_utils.frPyObjects(segmentation, image["height"], image["width"])
        else:
            rle = segmentation
        return np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)
