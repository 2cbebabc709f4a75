"""Where exported ONNX files and TensorRT engines are cached, and the hashes that key them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write

CACHE_ENV = "COUPALIGN_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$COUPALIGN_CACHE_DIR``, else ``$XDG_CACHE_HOME/coupalign``, else ``~/.cache/coupalign``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "coupalign"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_sha256(model: torch.nn.Module) -> str:
    """Hash of a model's config and weights: two models with equal hashes export equal graphs."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def key_digest(fields: dict[str, Any]) -> str:
    """A stable hex digest of a JSON-able dict (sorted keys): the basis of every cache key."""
    return sha256_bytes(json.dumps(fields, sort_keys=True, default=str).encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder and rename: a reader never sees half a file."""
    return atomic_write(path, lambda f: f.write(data))
