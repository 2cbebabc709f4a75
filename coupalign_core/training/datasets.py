"""The training run's data sets: what an epoch holds (``data.epoch_sentences``) and which items choose
the model (``data.val_split``, or images held out of train by ``data.val_from_train``)."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Optional

import torch
from torch.utils.data import Dataset

from ..data import ReferDataset
from ..data.refer import load_refer_refs, ref_in_split
from .config import DataConfig

# data.epoch_sentences -> ReferDataset(sentences=...)
EPOCH_SENTENCE_MODES = {"one_per_ref": "random", "all": "all"}


def held_out_images(image_ids: Iterable[int], size: float) -> set[int]:
    """The images ``data.val_from_train`` holds out: a fraction (0 < size < 1, at least one image)
    or a number of them, the first in the order of a hash of their id (the same for every seed and
    every run on the data set, and stable when other images are added)."""
    ids = sorted({int(i) for i in image_ids}, key=lambda i: (hashlib.sha1(str(i).encode()).hexdigest(), i))
    count = max(1, round(size * len(ids))) if isinstance(size, float) else int(size)
    if count >= len(ids):
        raise ValueError(f"data.val_from_train={size!r} holds out {count} of the {len(ids)} training images: "
                         "nothing would be left to train on")
    return set(ids[:count])


def build_datasets(data: DataConfig, transform: Callable[[dict[str, Any]], Any], seed: int
                   ) -> tuple[ReferDataset, Optional[Dataset[Any]]]:
    """(training set, validation set or None). Training items pass through ``transform``;
    validation items stay raw (the evaluation engine transforms them itself)."""
    common: dict[str, Any] = dict(image_root=data.image_root, skip_missing_images=data.skip_missing_images,
                                  seed=seed)
    train_images: Optional[set[int]] = None
    val: Optional[ReferDataset] = None
    if data.val_from_train is not None:
        split_images = {int(r["image_id"]) for r in load_refer_refs(data.data_root, data.dataset, data.split_by)
                        if ref_in_split(str(r["split"]), data.train_split)}
        held = held_out_images(split_images, data.val_from_train)
        train_images = split_images - held
        val = ReferDataset(data.data_root, data.dataset, data.split_by, data.train_split, transform=None,
                           sentences=data.val_sentences, image_ids=held, **common)
    elif data.val_split:
        val = ReferDataset(data.data_root, data.dataset, data.split_by, data.val_split, transform=None,
                           sentences=data.val_sentences, **common)
    train = ReferDataset(data.data_root, data.dataset, data.split_by, data.train_split, transform=transform,
                         sentences=EPOCH_SENTENCE_MODES[data.epoch_sentences], image_ids=train_images, **common)
    if val is not None and data.val_max_samples is not None and len(val) > data.val_max_samples:
        return train, torch.utils.data.Subset(val, range(data.val_max_samples))
    return train, val
