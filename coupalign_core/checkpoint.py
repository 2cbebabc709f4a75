"""Model files that cannot run code: released weights (``.safetensors``) and training checkpoints
(``.pt``), both checked on read and written atomically.

**Released weights** (``coupalign export --format weights``; what a robot's ``checkpoint``
parameter names) are one safetensors file: raw tensors behind a JSON header, so reading one runs
nothing. Layout::

    tensors    the model's state dict by parameter name; floating tensors in float32, integer
               buffers (BatchNorm's num_batches_tracked) as they are
    metadata   str -> str, as safetensors requires; every value but "format" and "version" is JSON
      "format"      "coupalign-weights"
      "version"     "1"
      "config"      CoupAlignConfig.to_dict()
      "tokenizer"   TextTokenizer.to_state(): {"vocab": [token, ... in id order], "lowercase": bool}
      "training"    what the training run left to know it by: step, epoch, best_oiou, val_metrics,
                    global_batch_size, train_config (those the source checkpoint had)
      "provenance"  {"source": the checkpoint it was exported from, ...}

**Training checkpoints** (``last.pt``, ``best.pt``: what the trainer needs to resume) are a dict
saved with ``torch.save``::

    {"format": "coupalign-checkpoint", "version": 1,
     "config": CoupAlignConfig.to_dict(), "tokenizer": TextTokenizer.to_state(),
     "model": state_dict, ...training state (optimizer, scheduler, scaler, epoch, step, rng...)}

holding only tensors and plain Python values (``save_checkpoint`` refuses anything else), and are
read with ``torch.load(weights_only=True)``. The one allow-listed extra is NumPy's uint32 array, for
the NumPy RNG state that checkpoints written before the states became plain lists carry. A file that
needs any other object unpickled could run code on load and is refused with
:class:`UnsafeCheckpointError`; ``coupalign export --trust-pickle`` converts one the user trusts into
released weights (the only place that unpickles arbitrary objects).

``read_checkpoint`` reads both kinds into the training-checkpoint dict (a release has no optimizer
or RNG state) and checks it before anyone indexes it: the keys, their types, the config, the
vocabulary and that the weights fit the config's architecture, each failure a
:class:`CheckpointError` saying what is wrong. Loading needs no file beside it: the vocabulary
travels inside.

Writes go to ``.<name>.<host>.<pid>.<random>.tmp`` in the target's folder and are renamed over the
target; temp files that a killed write left there are removed by the next write into that folder.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from .model import CoupAlign, CoupAlignConfig, TextTokenizer

log = logging.getLogger(__name__)

FORMAT = "coupalign-checkpoint"
VERSION = 1
RELEASE_FORMAT = "coupalign-weights"
RELEASE_VERSION = 1
RELEASE_SUFFIX = ".safetensors"
# The training summary a release keeps (no optimizer, scheduler, scaler or RNG state).
TRAINING_SUMMARY_KEYS = ("step", "epoch", "best_oiou", "val_metrics", "global_batch_size", "train_config",
                         "grounding_vocabulary")
REQUIRED_KEYS = ("config", "tokenizer", "model")

# Stale temp files: a file whose writer process is gone is removed once it has not changed for
# STALE_TEMP_MIN_AGE_S (a writer in another PID namespace with the same host name may still be
# writing it); one whose writer cannot be checked (another host) once it has not changed for
# STALE_TEMP_MAX_AGE_S.
STALE_TEMP_MIN_AGE_S = 30.0
STALE_TEMP_MAX_AGE_S = 600.0
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<random>[a-z0-9_]+)\.tmp$")


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong with it."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.pt`` file that only arbitrary unpickling could read, which can run code it carries."""


# ---- atomic writes ----------------------------------------------------------------------------------
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files of killed :func:`atomic_write` calls in ``folder``; returns them.

    Only names of our own pattern are considered. One of this host is stale when its writer's
    PID is gone and it has not changed for ``STALE_TEMP_MIN_AGE_S``; any other when it has not
    changed for ``STALE_TEMP_MAX_AGE_S``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = _host_tag(), time.time(), []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:  # its writer renamed or removed it just now
            continue
        writer_gone = os.name == "posix" and match["host"] == host and not _pid_alive(int(match["pid"]))
        if (writer_gone and age >= STALE_TEMP_MIN_AGE_S) or age >= STALE_TEMP_MAX_AGE_S:
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            log.warning("removed %s, left by an interrupted write of %s", entry, folder / match["target"])
            removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, and a reader never sees half a file. The
    temp file's name carries this host and process, so the next write into the folder can tell a
    killed write's leftover from a running one's (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


# ---- training checkpoints ---------------------------------------------------------------------------
_PLAIN_TYPES = (str, bytes, int, float, bool, complex, type(None), torch.Size, torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is what ``torch.load(weights_only=True)`` reads back.

    Exact types: ``numpy.float64`` is a ``float`` subclass but pickles as a NumPy object.
    """
    kind = type(value)
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif kind in (list, tuple, set):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif kind not in _PLAIN_TYPES and kind not in (torch.Tensor, torch.nn.Parameter):
        raise TypeError(
            f"checkpoint field {where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds only "
            "tensors and plain Python values (what torch.load(weights_only=True) reads back)"
        )


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, tokenizer: "TextTokenizer",
                    **extra: Any) -> Path:
    """Save ``model`` (a CoupAlign, possibly DDP-wrapped), its tokenizer and any training state.

    ``extra`` must hold only tensors and plain Python values (TypeError naming the field
    otherwise), so that the file loads with ``torch.load(weights_only=True)``.
    """
    core: Any = getattr(model, "module", model)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": core.config.to_dict(),
        "tokenizer": tokenizer.to_state(),
        "model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
    }
    state.update(extra)
    _check_plain(state, "checkpoint")
    return atomic_save(state, path)


def _legacy_safe_globals() -> list[Any]:
    """NumPy's uint32 array: the NumPy RNG state of checkpoints written before it became a list."""
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The Python objects a refused ``.pt`` asks to unpickle, without unpickling anything."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint (the legacy format): read torch's message instead
        names = [a or b for a, b in _UNSAFE_GLOBAL.findall(str(error))]
    legacy = {f"{g.__module__}.{g.__qualname__}" for g in _legacy_safe_globals()}
    return [n for n in names if n not in legacy]


def _unsafe_message(path: Path, names: list[str]) -> str:
    suggested = path.with_suffix(RELEASE_SUFFIX)
    return (
        f"refusing to load {path}: it needs Python objects beyond tensors and plain values "
        f"({', '.join(names[:5])}), and unpickling them can run any code the file carries. "
        f"If you trust where it came from, convert it once: coupalign export --checkpoint {path} "
        f"--format weights --trust-pickle --out {suggested}"
    )


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{path} could not be read as a torch file: {e}") from e
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if names:
            raise UnsafeCheckpointError(_unsafe_message(path, names)) from None
        raise CheckpointError(f"{path} is not a torch checkpoint file (or is corrupt): {_torch_reason(e)}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt (an interrupted write, copy or download?): "
                              f"torch could not read it: {_torch_reason(e)}") from None


def _torch_reason(error: Exception) -> str:
    """The informative sentence of one of torch.load's long messages."""
    text = str(error).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = detail.group(1) if detail else (text.splitlines()[0] if text else type(error).__name__)
    return first.split(". ")[0].rstrip(".")


# ---- released weights -------------------------------------------------------------------------------
def _is_release(path: Path) -> bool:
    """safetensors by content (8-byte header length, then the JSON header), or by name."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch's zip format, or a bare pickle
        return False
    return path.suffix == RELEASE_SUFFIX or (len(head) == 9 and head[8:9] == b"{")


def _json_metadata(metadata: dict[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{path}: its safetensors metadata lacks {key!r} (a CoupAlign release holds "
                              f"config, tokenizer, training and provenance)")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({e})") from None


def _read_release(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt?): {e}") from None
    if metadata.get("format") != RELEASE_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not CoupAlign weights "
                              f"(metadata format={metadata.get('format')!r}, expected {RELEASE_FORMAT!r})")
    version = metadata.get("version", "")
    if not version.isdigit():
        raise CheckpointError(f"{path}: metadata version {version!r} is not a number")
    if int(version) > RELEASE_VERSION:
        raise CheckpointError(f"{path} has weights version {version}; this code reads up to {RELEASE_VERSION}")
    training = _json_metadata(metadata, "training", path)
    provenance = _json_metadata(metadata, "provenance", path)
    if not isinstance(training, dict) or not isinstance(provenance, dict):
        raise CheckpointError(f"{path}: metadata 'training' and 'provenance' must be JSON objects")
    state: dict[str, Any] = {k: v for k, v in training.items() if k in TRAINING_SUMMARY_KEYS}
    state.update(format=RELEASE_FORMAT, version=int(version), config=_json_metadata(metadata, "config", path),
                 tokenizer=_json_metadata(metadata, "tokenizer", path), model=tensors, provenance=provenance)
    return state


def _json_default(value: Any) -> Any:
    """What JSON lacks in a training summary: NumPy and one-element tensor scalars as numbers,
    anything else (a path, a trusted old file's own objects) as its str()."""
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    return str(value)


def _release_bytes(state: dict[str, Any], provenance: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    tensors = {}
    for name, tensor in state["model"].items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensors[name] = tensor.contiguous().clone()  # safetensors refuses views that share storage
    training = {k: state[k] for k in TRAINING_SUMMARY_KEYS if k in state}
    metadata = {
        "format": RELEASE_FORMAT,
        "version": str(RELEASE_VERSION),
        "config": json.dumps(state["config"]),
        "tokenizer": json.dumps(state["tokenizer"]),
        "training": json.dumps(training, default=_json_default),
        "provenance": json.dumps(provenance, default=_json_default),
    }
    return save(tensors, metadata=metadata)


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, *, trust_pickle: bool = False,
                   **provenance: Any) -> Path:
    """Write the released weights of ``src`` (a training checkpoint or a release) to ``dst``
    (``.safetensors``): config, vocabulary, fp32 weights and the training summary, no optimizer,
    scheduler or RNG state.

    ``provenance`` (the command that trained it, its metrics...) joins the ``"provenance"``
    metadata, which starts as the source's own provenance, else ``{"source": src}``.
    ``trust_pickle`` reads a ``.pt`` with ``torch.load(weights_only=False)``, which runs any code
    the file carries: only for files whose origin the user trusts.
    """
    dst = Path(dst)
    if dst.suffix != RELEASE_SUFFIX:
        raise ValueError(f"released weights are a safetensors file: name the output *{RELEASE_SUFFIX}, not {dst}")
    state = read_checkpoint(src, trust_pickle=trust_pickle)
    own = state.get("provenance")
    info = dict(own) if isinstance(own, dict) else {"source": str(src)}
    info.update(provenance)
    data = _release_bytes(state, info)
    return atomic_write(dst, lambda f: f.write(data))


# ---- reading and checking -----------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Read released weights (``.safetensors``) or a training checkpoint (``.pt``) on the CPU.

    Returns the training-checkpoint dict (``config``, ``tokenizer``, ``model`` and whatever
    training state the file holds), checked as the module docstring says. Raises
    FileNotFoundError for a missing file, :class:`UnsafeCheckpointError` for a ``.pt`` that
    needs arbitrary unpickling (unless ``trust_pickle``: see :func:`export_weights`) and
    :class:`CheckpointError` for anything else wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (an interrupted write or copy?)")
    if _is_release(path):
        state = _read_release(path)
    else:
        state = _torch_load(path, trust_pickle)
        _check_header(state, path)
    _check_contents(state, path)
    return state


def _check_header(state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a CoupAlign checkpoint "
                              f"(a dict with format={FORMAT!r})")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CoupAlign checkpoint (expected a dict with format={FORMAT!r}, "
                              f"got format={state.get('format')!r})")
    version = state.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: version is a {type(version).__name__}, not an int")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version}; this code reads up to {VERSION}")


def _check_contents(state: dict[str, Any], path: Path) -> None:
    """Keys, types, config, vocabulary and weights against the config's architecture."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(map(repr, missing))}: a CoupAlign checkpoint holds "
                              f"the model's config, its tokenizer and its weights ('model')")
    for key, kind in (("config", dict), ("tokenizer", dict), ("model", dict), ("optimizer", dict),
                      ("scheduler", dict), ("scaler", dict), ("train_config", dict), ("val_metrics", dict),
                      ("rng", list), ("step", int), ("epoch", int), ("step_in_epoch", int)):
        value = state.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise CheckpointError(f"{path}: {key!r} is a {type(value).__name__}, not {article} {kind.__name__}")
    not_tensors = [k for k, v in state["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: 'model' must map parameter names to tensors; "
                              f"{not_tensors[:3]} are not tensors")
    config = _parse_config(state["config"], path)
    _parse_tokenizer(state["tokenizer"], path)
    _check_architecture(state["model"], config, path)


def _parse_config(raw: dict[str, Any], path: Path) -> "CoupAlignConfig":
    import dataclasses

    from .model import CoupAlignConfig

    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(CoupAlignConfig)})
    if unknown:
        raise CheckpointError(f"{path}: its config has fields this version of coupalign does not know: {unknown} "
                              "(written by a newer version, or edited by hand?)")
    try:
        return CoupAlignConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config is invalid: {e}") from None


def _parse_tokenizer(raw: dict[str, Any], path: Path) -> "TextTokenizer":
    from .model import TextTokenizer

    vocab = raw.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        raise CheckpointError(f"{path}: its tokenizer's 'vocab' must be a non-empty list of tokens in id order")
    if not isinstance(raw.get("lowercase", True), bool):
        raise CheckpointError(f"{path}: its tokenizer's 'lowercase' must be true or false")
    try:
        return TextTokenizer.from_state(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its tokenizer is invalid: {e}") from None


def _architecture(config: "CoupAlignConfig") -> "CoupAlign":
    """The bare architecture of ``config``: every weight comes from the file, so no pretrained
    files are read (a pretrained text encoder's shape was written into ``text_config``)."""
    from .model import CoupAlign

    return CoupAlign(config.replace(image_pretrained=None, text_pretrained=False))


def _check_architecture(weights: dict[str, torch.Tensor], config: "CoupAlignConfig", path: Path) -> None:
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            expected = {k: tuple(v.shape) for k, v in _architecture(config).state_dict().items()}
    except Exception as e:  # timm, transformers: an unknown encoder name, an impossible width...
        raise CheckpointError(f"{path}: its config does not describe a model this version can build: "
                              f"{type(e).__name__}: {e}") from None
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = [f"{k} {tuple(weights[k].shape)} (config: {expected[k]})"
                for k in sorted(set(expected) & set(weights)) if tuple(weights[k].shape) != expected[k]]
    if missing or unexpected or reshaped:
        problems = [f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
                    for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
                    if names]
        raise CheckpointError(f"{path}: its weights do not fit its own config: {'; '.join(problems)}")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"
               ) -> tuple["CoupAlign", "TextTokenizer", dict[str, Any]]:
    """Build the model from a checkpoint's or release's config and load its weights.

    Returns ``(model, tokenizer, state)``; the model is in eval mode. Never touches the network:
    pretrained-weight loading is switched off because the weights are in the file.
    """
    state = read_checkpoint(path)
    config = _parse_config(state["config"], Path(path))
    model = _architecture(config)
    model.load_state_dict(state["model"])  # read_checkpoint checked names and shapes
    model.to(map_location).eval()
    tokenizer = _parse_tokenizer(state["tokenizer"], Path(path))
    return model, tokenizer, state

