"""Checkpoints: one self-contained file (config, vocabulary, weights, training state), written atomically.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "coupalign-checkpoint", "version": 1,
     "config": CoupAlignConfig.to_dict(), "tokenizer": TextTokenizer.to_state(),
     "model": state_dict, ...training state (optimizer, scheduler, scaler, epoch, step, rng...)}

Loading needs no file beside it: the tokenizer's vocabulary travels inside.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

FORMAT = "coupalign-checkpoint"
VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, and a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; checkpoints and exports are not secrets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | os.PathLike, model, tokenizer, **extra: Any) -> Path:
    """Save ``model`` (a CoupAlign, possibly DDP-wrapped), its tokenizer and any training state."""
    model = getattr(model, "module", model)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_state(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    state.update(extra)
    return atomic_save(state, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} could not be read as a torch file: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a CoupAlign checkpoint (expected a dict with format={FORMAT!r})"
        )
    if state.get("version", 0) > VERSION:
        raise ValueError(
            f"{path} has checkpoint version {state['version']}; this code reads up to {VERSION}"
        )
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build the model from a checkpoint's config and load its weights.

    Returns ``(model, tokenizer, state)``; the model is in eval mode. Never touches the network:
    pretrained-weight loading is switched off because the weights are in the file.
    """
    from .model import CoupAlign, CoupAlignConfig
    from .model.tokenization import TextTokenizer

    state = read_checkpoint(path)
    config = CoupAlignConfig.from_dict(state["config"])
    # The checkpoint holds every weight; build the bare architecture. A pretrained text encoder's
    # architecture was written into config.text_config when the model was built (CoupAlign).
    config = config.replace(image_pretrained=None, text_pretrained=False)
    model = CoupAlign(config)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit its own config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.to(map_location).eval()
    tokenizer = TextTokenizer.from_state(state["tokenizer"])
    return model, tokenizer, state


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, **provenance: Any) -> Path:
    """A release copy of a training checkpoint: config, vocabulary and fp32 weights, no optimizer,
    scheduler or RNG state (a tiny-preset training checkpoint shrinks from ~50 MB to ~17 MB).

    ``provenance`` (the command that trained it, its metrics...) is stored under ``"provenance"``.
    """
    state = read_checkpoint(src)
    keep = {k: state[k] for k in ("format", "version", "config", "tokenizer", "model") if k in state}
    for key in ("step", "epoch", "train_config", "val_metrics", "best_oiou", "global_batch_size",
                "grounding_vocabulary"):
        if key in state:
            keep[key] = state[key]
    keep["provenance"] = {"source": str(src), **provenance}
    return atomic_save(keep, dst)
