"""The paper's input pipeline (section 4.1): square resize, no augmentation, ImageNet normalisation.

These are the only image/mask resize and normalise functions in the project: the data sets, the
Segmenter and the ROS pipeline all call them, so training and deployment see identical inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np
import torch

# (text, max_tokens) -> (input_ids, attention_mask), each (1, max_tokens): a TextTokenizer
Tokenize = Callable[[str, int], tuple[np.ndarray, np.ndarray]]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (size,size,3) uint8, bilinear (area when shrinking a lot)."""
    h, w = image.shape[:2]
    if h > 2 * size and w > 2 * size:
        return _area_resize(image, size)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's pixel-area average (INTER_AREA) to (size, size), faster when the width shrinks by a
    whole number (camera widths: 640, 1280, 1920 to 128).

    Area averaging is separable: OpenCV's whole-number path averages the width in float32, then the
    height is averaged and rounded once. The same averages as one INTER_AREA call up to float
    rounding (a pixel can differ by one level); other widths take the one call.
    """
    h, w = image.shape[:2]
    if w % size:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    narrow = cv2.resize(image.astype(np.float32), (size, h), interpolation=cv2.INTER_AREA)
    square = cv2.resize(narrow, (size, size), interpolation=cv2.INTER_AREA)
    return np.rint(square, out=square).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H,W) bool -> resized bool with nearest neighbour (LAVT's protocol). ``size`` int or (H, W)."""
    hw = (size, size) if isinstance(size, int) else size
    out = cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (3,H,W) float32, ImageNet-normalised."""
    x = image.astype(np.float32) * (1.0 / 255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize + normalise: what the model sees for one (H,W,3) uint8 RGB image."""
    return normalize_image(resize_image(image, size))


class ReferTransform:
    """Turns a raw data-set item into model tensors.

    Input item: ``{"image": (H,W,3) uint8, "mask": (H,W) bool, "sentence": str, ...}``.
    Output adds ``"pixel_values"`` (3,S,S) float32, ``"target"`` (S,S) float32,
    ``"input_ids"``/``"attention_mask"`` (T,) int64, and keeps the other keys except the raw
    image and mask (``keep_original=True`` keeps them too, for scoring at the original size).
    """

    def __init__(self, image_size: int, tokenizer: Tokenize, max_tokens: int, keep_original: bool = False):
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.keep_original = keep_original

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in item.items() if k not in ("image", "mask")}
        out["pixel_values"] = torch.from_numpy(preprocess_image(item["image"], self.image_size))
        out["target"] = torch.from_numpy(resize_mask(item["mask"], self.image_size).astype(np.float32))
        ids, mask = self.tokenizer(item["sentence"], self.max_tokens)
        out["input_ids"] = torch.from_numpy(ids[0])
        out["attention_mask"] = torch.from_numpy(mask[0])
        if self.keep_original:
            out["image"] = item["image"]
            out["mask"] = item["mask"]
        return out
