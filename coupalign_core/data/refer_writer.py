"""Writes a data set in the refer layout that both :class:`ReferDataset` and the refer API read.

Every world this project generates (``coupalign synth``, and any later one) goes through here, so the
format lives in one place::

    <root>/<dataset>/instances.json                COCO images / annotations / categories (+ info)
    <root>/<dataset>/no_target_refs(<split_by>).p  refs with ann_id -1 (nothing to segment)
    <root>/<dataset>/refs(<split_by>).p            every ref that has a target

Two choices keep the refer API (``REFER`` of lichengunc/refer, which RefCOCO tools copy) working:

* its index looks up the annotation of every ref in ``refs(<split_by>).p``, so refs without one go
  to ``no_target_refs(<split_by>).p``, which it never opens and :class:`ReferDataset` merges back;
* its ``getMask`` takes a segmentation whose first element is a list as polygons and decodes anything
  else as a *list* of compressed RLEs, so a mask that is not a polygon is stored as
  ``[{"size": [h, w], "counts": "<compressed>"}]`` (a bare RLE dict would fail there).

Files are written atomically, refs last: a killed run leaves no refs file pointing at missing data.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from .refer import NO_TARGET_ANN_ID, instances_path, no_target_refs_path, refs_path


def mask_segmentation(mask: np.ndarray) -> list[dict[str, Any]]:
    """(H, W) bool mask -> ``[{"size": [H, W], "counts": str}]``, one compressed RLE in a list."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}]


def refer_files(root: str | os.PathLike[str], dataset: str, split_by: str) -> tuple[Path, Path, Path]:
    """(instances.json, no_target_refs(<split_by>).p, refs(<split_by>).p) under ``root``."""
    return (instances_path(root, dataset), no_target_refs_path(root, dataset, split_by),
            refs_path(root, dataset, split_by))


def remove_refer_files(root: str | os.PathLike[str], dataset: str, split_by: str) -> None:
    """Deletes the three files and any temporary file a killed write left beside them."""
    for path in refer_files(root, dataset, split_by):
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_refer(
    root: str | os.PathLike[str],
    dataset: str,
    split_by: str,
    *,
    instances: dict[str, Any],
    refs: list[dict[str, Any]],
) -> tuple[Path, Path, Path]:
    """Writes ``instances`` (a COCO dict) and ``refs`` (in ``ref_id`` order) in the refer layout.

    Refs with ``ann_id == -1`` go to the no-target file (an empty list when there are none, so the
    layout is the same for every world). Returns the paths of :func:`refer_files`.
    """
    inst_file, no_target_file, refs_file = refer_files(root, dataset, split_by)
    refs_file.parent.mkdir(parents=True, exist_ok=True)
    with_target = [r for r in refs if r["ann_id"] != NO_TARGET_ANN_ID]
    no_target = [r for r in refs if r["ann_id"] == NO_TARGET_ANN_ID]
    _atomic_write(inst_file, json.dumps(instances, separators=(",", ":")).encode("utf-8"))
    _atomic_write(no_target_file, pickle.dumps(no_target, protocol=4))
    _atomic_write(refs_file, pickle.dumps(with_target, protocol=4))
    return inst_file, no_target_file, refs_file
