"""The training YAML: ``model:`` (a CoupAlignConfig), ``data:`` (a refer-layout split) and ``train:``.

One file (with its ``base:`` chain) says everything a run needs, and the checkpoint stores it
(``TrainingConfig.to_dict``) so a resumed run and a reader of the checkpoint see the same numbers.
Example::

    model: {preset: tiny, presence_head: true}        # or every CoupAlignConfig field, no preset
    data:
      data_root: data/synth
      dataset: synthetic
      split_by: unc
      synthesize: {seed: 0, num_images: 2000}          # generate the data first when it is absent
    train:
      lr: 1.0e-3
      end_lr: 1.0e-4
      decay_steps: 3000
      max_minutes: 18
      batch_size: 16
      eval_every: 500                                  # steps; or "1 epoch"

A config may start from another one and state only what differs (as Mask2Former's ``_BASE_``)::

    base: refcoco_paper.yaml      # relative to this file; the base may have a base of its own
    data: {dataset: refcoco+}     # mappings merge key by key; lists and scalars replace
    train: {output_dir: runs/refcocoplus_paper, clip_grad_norm: null}   # null overrides too

``--set train.lr=3e-4 --set model.num_queries=8`` overrides single keys (values parsed as YAML), after
the base chain is merged. ``TrainingConfig.load(path).to_yaml()`` is the resolved config, as the run
folder's ``config.yaml`` and the checkpoint store it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from ..model.configuration import CoupAlignConfig

AmpMode = Literal["none", "bf16", "fp16", "auto"]
AMP_MODES = ("none", "bf16", "fp16", "auto")


@dataclass
class Interval:
    """Every ``every`` steps or every ``every`` epochs; ``every == 0`` means never."""

    every: int
    unit: Literal["step", "epoch"] = "step"

    @classmethod
    def parse(cls, value: Any, name: str) -> "Interval":
        """``500``, ``"500 steps"``, ``"1 epoch"``, ``0``/``None`` (never)."""
        if value is None:
            return cls(0)
        if isinstance(value, Interval):
            return value
        if isinstance(value, dict):
            unit = value.get("unit", "step")
            if unit not in ("step", "epoch"):
                raise ValueError(f"train.{name}: unit must be 'step' or 'epoch', got {unit!r}")
            return cls(int(value["every"]), unit)
        if isinstance(value, bool):
            raise ValueError(f"train.{name} must be a number of steps or 'N epochs', got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"train.{name} must be >= 0, got {value}")
            return cls(value)
        m = re.fullmatch(r"\s*(\d+)\s*(steps?|epochs?)?\s*", str(value))
        if not m:
            raise ValueError(
                f"train.{name} must be a number of steps or a string like '2 epochs', got {value!r}"
            )
        parsed_unit: Literal["step", "epoch"] = "epoch" if (m.group(2) or "step").startswith("epoch") else "step"
        return cls(int(m.group(1)), parsed_unit)

    def due(self, step: int, epoch_end: Optional[int] = None) -> bool:
        """At optimizer step ``step`` (1-based count of steps done); ``epoch_end``: epochs done, at
        the end of an epoch, else None."""
        if self.every <= 0:
            return False
        if self.unit == "step":
            return step % self.every == 0
        return epoch_end is not None and epoch_end % self.every == 0

    def to_yaml_value(self) -> Any:
        return self.every if self.unit == "step" else f"{self.every} epoch{'s' if self.every != 1 else ''}"


@dataclass
class DataConfig:
    """Where the refer-layout data lives (``coupalign_core.data.ReferDataset``)."""

    data_root: str
    dataset: str
    split_by: str
    train_split: str = "train"
    # None: no validation during training.
    val_split: Optional[str] = "val"
    image_root: Optional[str] = None
    num_workers: int = 2
    # LAVT validates during training on one random sentence per ref; "all" scores every sentence.
    val_sentences: Literal["random", "all"] = "random"
    # Score only the first N validation items (keeps a CPU run's evaluations short); None: all.
    val_max_samples: Optional[int] = None
    val_batch_size: Optional[int] = None  # None: the training per-process batch size
    skip_missing_images: bool = False
    # {seed, num_images, ...}: keyword arguments of coupalign_core.data.synthetic.generate (of
    # coupalign_core.data.tabletop.generate for dataset "tabletop"), run on rank 0 before training
    # when data_root holds no data set yet (a fresh machine needs no step).
    synthesize: Optional[dict[str, Any]] = None
    # What "an epoch" is. The paper's "trained for 50 epochs" does not say, and a referred object has
    # several sentences (RefCOCO train: 42,404 objects, ~120,600 sentences). "one_per_ref": one item
    # per object with one of its sentences drawn each epoch from (seed, epoch), as LAVT's loader;
    # "all": every sentence once per epoch (2.8x the steps on RefCOCO).
    epoch_sentences: Literal["one_per_ref", "all"] = "one_per_ref"
    # Model selection on training data, so that no reported split chooses its own model: a fraction
    # (0 < x < 1) or a number (an integer >= 1) of the training split's images, held out of training
    # with all their refs and used as the validation set (best.pt, curves) in place of val_split,
    # which must then be null. Deterministic: the images are ordered by a hash of their id, the
    # same for every seed and run. None: validate on val_split.
    val_from_train: Optional[float] = None

    def __post_init__(self) -> None:
        if self.val_sentences not in ("random", "all"):
            raise ValueError(f"data.val_sentences must be 'random' or 'all', got {self.val_sentences!r}")
        if self.epoch_sentences not in ("one_per_ref", "all"):
            raise ValueError(f"data.epoch_sentences must be 'one_per_ref' or 'all', got {self.epoch_sentences!r}")
        if self.val_from_train is not None:
            v = self.val_from_train
            is_count = isinstance(v, int) and not isinstance(v, bool) and v >= 1
            is_fraction = isinstance(v, float) and 0.0 < v < 1.0
            if not (is_count or is_fraction):
                raise ValueError(
                    f"data.val_from_train must be a fraction in (0, 1) or a whole number of images >= 1, got {v!r}"
                )
            if self.val_split is not None:
                raise ValueError(
                    f"data.val_from_train holds validation images out of {self.train_split!r} in place of "
                    f"data.val_split; set data.val_split: null (got {self.val_split!r})"
                )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.synthesize is not None and not isinstance(self.synthesize, dict):
            raise ValueError("data.synthesize must be a mapping like {seed: 0, num_images: 1000}")


@dataclass
class OptimConfig:
    """Optimizer, schedule, budget and bookkeeping (``train:``)."""

    optimizer: Literal["adamw"] = "adamw"
    lr: float = 3e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Polynomial decay per iteration (LAVT, mmseg): lr(t) = (lr - end_lr)(1 - t/T)^power + end_lr for
    # t < T, then end_lr. T = decay_steps, else decay_epochs x steps per epoch, else the whole run.
    end_lr: float = 0.0
    decay_epochs: Optional[float] = None
    decay_steps: Optional[int] = None
    poly_power: float = 0.9  # LAVT's and mmseg's power; the paper does not give one
    warmup_steps: int = 0  # linear warm-up from 0 (not in the paper; useful from scratch)
    # Budget: the first of these that is reached ends the run (at least one is needed).
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None  # wall time of this run, summed over resumes
    # Batch: per process; or global_batch_size = batch_size x world size x grad_accum, from which
    # the per-process size is derived at start (must divide evenly).
    batch_size: Optional[int] = None
    global_batch_size: Optional[int] = None
    grad_accum: int = 1
    clip_grad_norm: Optional[float] = None
    # Autocast dtype (fp16 adds a GradScaler). "auto": bf16 where the hardware has BF16 units (a CPU
    # with AVX-512 BF16/AMX/Arm BF16, a GPU that supports it), else none (coupalign_core.machine).
    amp: AmpMode = "none"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op threads on the CPU; None: torch's default; "auto": the usable cores that the
    # 1-min load leaves free, at least 1 (coupalign_core.machine.choose_num_threads).
    num_threads: Optional[int | Literal["auto"]] = None
    eval_every: Interval = field(default_factory=lambda: Interval(1, "epoch"))
    checkpoint_every: Interval = field(default_factory=lambda: Interval(1000))
    log_every: int = 20
    overlay_samples: int = 8  # validation items drawn in the overlay grid at each evaluation
    # The checkpoint a run stands for. "best": best.pt, the best validation oIoU so far (on
    # data.val_split, or on the images data.val_from_train holds out of train). "last": no best.pt;
    # the run's model is last.pt, chosen by no split. A split that chose a model and then reports
    # it (best.pt on val, scored on val) overstates it.
    select_checkpoint: Literal["best", "last"] = "best"
    find_unused_parameters: bool = False  # DDP; needed only for a model with unused branches
    # A checkpoint whose model weights start this run (a second training stage, or a fine-tune of a
    # trained model): only the weights are taken; optimizer, schedule and step count start afresh,
    # and the model config must describe the same architecture (loss weights may differ).
    # ``--resume`` takes precedence: a resumed stage continues from its own last.pt.
    init_from: Optional[str] = None
    output_dir: Optional[str] = None

    def __post_init__(self) -> None:
        # PyYAML reads "3e-5" (no dot) as a string: coerce every float field.
        for name in ("lr", "weight_decay", "eps", "end_lr", "poly_power"):
            setattr(self, name, _as_float(getattr(self, name), name))
        for name in ("decay_epochs", "max_minutes", "clip_grad_norm"):
            if getattr(self, name) is not None:
                setattr(self, name, _as_float(getattr(self, name), name))
        betas = tuple(_as_float(b, "betas") for b in self.betas)
        if len(betas) != 2:
            raise ValueError(f"train.betas must be two numbers, got {list(self.betas)}")
        self.betas = (betas[0], betas[1])
        self.eval_every = Interval.parse(self.eval_every, "eval_every")
        self.checkpoint_every = Interval.parse(self.checkpoint_every, "checkpoint_every")
        if self.optimizer.lower() != "adamw":
            raise ValueError(f"train.optimizer: only 'adamw' (the paper's) is supported, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}; got {self.amp!r}")
        threads = self.num_threads
        if threads is not None and threads != "auto" and (
                isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"train.num_threads must be an integer >= 1, 'auto' or null; got {threads!r}")
        if self.lr <= 0 or self.end_lr < 0 or self.end_lr > self.lr:
            raise ValueError(f"train.lr must be > 0 and 0 <= end_lr <= lr; got lr={self.lr}, end_lr={self.end_lr}")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise ValueError("train needs a budget: epochs, max_steps or max_minutes")
        for name in ("epochs", "max_steps", "decay_steps", "batch_size", "global_batch_size"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"train.{name} must be positive, got {v}")
        if self.batch_size is None and self.global_batch_size is None:
            raise ValueError("train needs batch_size (per process) or global_batch_size")
        if self.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda; got {self.device!r}")
        if self.select_checkpoint not in ("best", "last"):
            raise ValueError(f"train.select_checkpoint must be 'best' or 'last', got {self.select_checkpoint!r}")

    def per_process_batch(self, world_size: int) -> int:
        """The per-process batch size for ``world_size`` processes (checks global_batch_size)."""
        if self.global_batch_size is not None:
            denom = world_size * self.grad_accum
            if self.global_batch_size % denom:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} is not divisible by world size "
                    f"{world_size} x grad_accum {self.grad_accum}"
                )
            per = self.global_batch_size // denom
            if self.batch_size is not None and self.batch_size != per:
                raise ValueError(
                    f"train.batch_size {self.batch_size} contradicts global_batch_size "
                    f"{self.global_batch_size} with {world_size} processes x grad_accum {self.grad_accum}"
                )
            return per
        assert self.batch_size is not None
        return self.batch_size


@dataclass
class TrainingConfig:
    model: CoupAlignConfig
    data: DataConfig
    train: OptimConfig

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingConfig":
        unknown = sorted(set(d) - {"model", "data", "train"})
        if unknown:
            raise ValueError(f"unknown top-level sections {unknown}; expected model, data, train")
        for section in ("model", "data", "train"):
            if not isinstance(d.get(section), dict):
                raise ValueError(f"the training config needs a '{section}:' mapping")
        return cls(
            model=_model_config(d["model"]),
            data=_build(DataConfig, d["data"], "data"),
            train=_build(OptimConfig, d["train"], "train"),
        )

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> "TrainingConfig":
        """Read a YAML file, merge its ``base:`` chain and apply ``key.sub=value`` overrides (``--set``)."""
        return cls.from_dict(apply_overrides(load_config_dict(path), overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (what checkpoints and ``config.yaml`` in the run folder hold)."""
        train = dataclasses.asdict(self.train)
        train["betas"] = list(self.train.betas)
        train["eval_every"] = self.train.eval_every.to_yaml_value()
        train["checkpoint_every"] = self.train.checkpoint_every.to_yaml_value()
        return {"model": self.model.to_dict(), "data": dataclasses.asdict(self.data), "train": train}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


BASE_KEY = "base"


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """The YAML mapping at ``path`` with its ``base:`` chain merged in, ``base:`` itself removed.

    Each file is merged over its base (``merge_config_dicts``); a base path is relative to the file
    that names it. Unknown keys are left for ``TrainingConfig.from_dict`` to refuse."""
    return _load_with_bases(Path(path), chain=())


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    # chain: the files that led here, each including the next (for the cycle check and messages)
    path = Path(os.path.normpath(path))
    if any(path.resolve() == seen.resolve() for seen in chain):
        names = " -> ".join(str(p) for p in (*chain, path))
        raise ValueError(f"training config base cycle: {names}")
    if not path.is_file():
        if chain:
            raise FileNotFoundError(f"{chain[-1]}: base {path} does not exist")
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{path}: '{BASE_KEY}:' must be the path of another training config, got {base!r}")
    return merge_config_dicts(_load_with_bases(path.parent / base, (*chain, path)), raw)


def merge_config_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over a copy of ``base``: mappings merge key by key; lists, scalars and null replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"train.{name} must be a number, got {value!r}") from None


def _model_config(d: dict[str, Any]) -> CoupAlignConfig:
    d = dict(d)
    preset = d.pop("preset", None)
    if preset is None:
        return CoupAlignConfig.from_dict(d)
    names = {f.name for f in dataclasses.fields(CoupAlignConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown model fields {unknown} (overrides of preset {preset!r})")
    return CoupAlignConfig.preset(preset, **d)


def _build(cls, d: dict[str, Any], section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown keys in '{section}:': {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:  # a missing required key
        raise ValueError(f"'{section}:' is incomplete: {e}") from e


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.preset=tiny"]`` applied to a copy of ``raw``; values are YAML."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (e.g. train.lr=1e-4), got {item!r}")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return out

