"""Data: refer-layout data sets, the paper's transforms, batching and the synthetic benchmark."""

from .collate import collate
from .refer import BadAnnotationError, ReferDataset, decode_segmentation
from .transforms import ReferTransform

__all__ = ["BadAnnotationError", "ReferDataset", "ReferTransform", "collate", "decode_segmentation"]
