"""Batching for DataLoader: tensors are stacked, everything else is kept as a per-sample list."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """List of item dicts -> one dict: same-shape tensors stacked to (B, ...), other values as lists.

    Strings, ids, kinds and the original-size images/masks (different sizes per item) stay lists,
    so scoring code can still reach each sample's own values.
    """
    if not items:
        raise ValueError("collate got an empty batch")
    keys = list(items[0].keys())
    for i, item in enumerate(items[1:], 1):
        if item.keys() != items[0].keys():
            raise ValueError(f"batch item {i} has keys {sorted(item)}, item 0 has {sorted(keys)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        if all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"batch key {key!r} holds tensors of different shapes {sorted(shapes)}")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
