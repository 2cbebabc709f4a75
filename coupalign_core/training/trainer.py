"""The training loop: one process or DDP under torchrun, AMP, accumulation, exact resume.

``Trainer(config, output_dir).fit()`` runs the whole schedule. Guarantees:

* **Same schedule after a resume.** The learning rate is a function of the optimizer step; the data
  order is a function of (seed, epoch) (``ResumableDistributedSampler``, ``ReferDataset.set_epoch``),
  and a resumed run skips the batches its epoch had already consumed; model, optimizer, scheduler,
  scaler and every rank's RNG states come back from the checkpoint. A resumed run therefore takes
  the same steps as an uninterrupted one (bit-for-bit on the CPU; see tests/test_training.py).
* **At most one checkpoint interval lost.** ``last.pt`` is written atomically every
  ``checkpoint_every``; SIGTERM/SIGINT finish the current step, write ``last.pt`` and exit
  (a second signal interrupts at once).
* **Only rank 0 writes files.** Metrics are reduced across ranks first.

Files in ``output_dir``: ``last.pt``, ``best.pt`` (by validation oIoU; none with
``train.select_checkpoint: last``), ``config.yaml`` (the
resolved config), ``metrics.jsonl`` (one row per log/eval), ``curves.png``, ``overlays/step_N.png``
and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import read_checkpoint, remove_stale_temp_files, save_checkpoint
from ..data import collate
from ..inference.grounding_vocabulary import GroundingVocabulary, training_vocabulary, vocabulary_from_checkpoint
from ..machine import CpuInfo, choose_amp, choose_num_threads, read_cpu_info
from .config import TrainingConfig
from .distributed import (
    DistContext,
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    ignore_stop_signals,
    init_distributed,
)
from .schedule import PolyLR, build_optimizer, steps_for

if TYPE_CHECKING:
    from ..model import CoupAlign

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "seg", "aux", "presence")
LOGGED_KEYS = LOSS_KEYS + ("grad_norm",)  # averaged over the log window and the ranks


# ---- RNG ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    # Plain values only (NumPy's MT19937 key as a list): checkpoints load with weights_only=True.
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = (name, np.asarray(key).tolist(), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]  # key: a list (an array in checkpoints written before)
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Whatever runs inside (evaluation, drawing) leaves the training RNG streams untouched, so
    adding or moving an evaluation does not change the training trajectory."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ---- the trainer ------------------------------------------------------------------------------------
def resolve_runtime(amp: str, num_threads: Optional[int | str], device_type: str,
                    cpu: Optional[CpuInfo] = None, load_1min: Optional[float] = None,
                    processes: Optional[int] = None) -> dict[str, Any]:
    """``train.amp`` and ``train.num_threads`` as this run uses them: ``auto`` decided from the
    hardware (``coupalign_core.machine``), with the reason. ``cpu``/``load_1min``/``processes``
    stand in for what is detected (tests); ``processes`` defaults to torchrun's LOCAL_WORLD_SIZE."""
    if amp == "auto":
        amp, amp_reason = choose_amp(device_type, cpu)
    else:
        amp_reason = "as configured"
    threads: Optional[int]
    if num_threads == "auto":
        if device_type == "cuda":
            threads, threads_reason = None, "a GPU run: torch's default"
        else:
            local = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            threads, threads_reason = choose_num_threads(load_1min=load_1min, processes=local)
    else:
        threads = int(num_threads) if num_threads else None
        threads_reason = "as configured" if threads else "torch's default"
    return {"amp": amp, "amp_reason": amp_reason, "num_threads": threads, "num_threads_reason": threads_reason}


@dataclass
class TrainResult:
    step: int
    epoch: int
    best_oiou: Optional[float]
    last_metrics: dict[str, float]
    stopped_by: str  # "budget", "signal:SIGTERM", "request"
    output_dir: Path

    @property
    def exit_code(self) -> int:
        if self.stopped_by.startswith("signal:"):
            return 128 + int(getattr(signal, self.stopped_by.split(":", 1)[1]))
        return 0


StepCallback = Callable[["Trainer", dict[str, float]], None]


class Trainer:
    """Builds model, data, optimizer and schedule from a :class:`TrainingConfig` and trains.

    ``resume``: a checkpoint path, ``"auto"`` (``output_dir/last.pt`` if it exists, else a fresh
    start) or None. ``step_callbacks`` run on every rank after each optimizer step with the step's
    local losses (tests use them to interrupt a run; :meth:`request_stop` ends it cleanly).
    """

    _resume_state: Optional[dict[str, Any]]  # the checkpoint being resumed, until it is loaded

    def __init__(
        self,
        config: TrainingConfig,
        output_dir: str | os.PathLike | None = None,
        resume: Optional[str | os.PathLike] = None,
        dist_ctx: Optional[DistContext] = None,
        step_callbacks: Sequence[StepCallback] = (),
        handle_signals: bool = True,
    ):
        self.started = time.monotonic()
        self.config = config  # replaced below by the resolved copy
        cfg = config.train
        self.ctx = dist_ctx or init_distributed(cfg.device)
        self.output_dir = Path(output_dir or cfg.output_dir or "runs/train")
        if self.ctx.is_main:  # a run killed while writing a checkpoint left a temp file: gone at the next start
            for stale in remove_stale_temp_files(self.output_dir):
                log.info("removed %s, left by a checkpoint write that was killed", stale)
        self.step_callbacks = list(step_callbacks)
        self.handle_signals = handle_signals
        self._stop_reason: Optional[str] = None
        self._signals_seen = 0

        self.device = self.ctx.device
        # What train.amp / train.num_threads resolve to here, and why: logged, and stored in the
        # checkpoint (the config keeps "auto", the choice of this machine at this start).
        self.runtime = resolve_runtime(cfg.amp, cfg.num_threads, self.device.type)
        if self.runtime["num_threads"] is not None:
            torch.set_num_threads(self.runtime["num_threads"])
        if self.ctx.is_main:
            for name in ("amp", "num_threads"):
                log.info("train.%s=%s: %s (%s)", name, getattr(cfg, name), self.runtime[name],
                         self.runtime[f"{name}_reason"])
        self.amp_dtype = self._amp_dtype(self.runtime["amp"])

        # Same initial weights on every rank (DDP broadcasts rank 0's anyway), then per-rank streams.
        seed_everything(cfg.seed)
        resume_path = self._build_model(config, resume)
        # The config this run stores: the user's, with the architecture the model actually has.
        self.config = TrainingConfig(
            model=config.model.replace(text_config=dict(self.model.config.text_config)),
            data=config.data, train=config.train,
        )
        from ..losses import CoupAlignLoss
        from ..model import build_tokenizer

        self.tokenizer = build_tokenizer(self.model.config)
        self.loss_fn = CoupAlignLoss(self.model.config)
        seed_everything(cfg.seed + 1000 * self.ctx.rank)

        self._build_data()
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.scheduler = PolyLR(self.optimizer, cfg.end_lr, self.decay_steps, cfg.poly_power, cfg.warmup_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.ddp_model: nn.Module = self.model
        if self.ctx.is_distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )

        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.step_in_epoch = 0  # optimizer steps done in the current epoch
        self.best_oiou: Optional[float] = None
        self.elapsed_before = 0.0  # training seconds of earlier (interrupted) runs
        self.history: list[dict[str, Any]] = []
        self.last_val: dict[str, float] = {}
        self._writer = None
        if self._resume_state is not None:
            assert resume_path is not None  # the state was read from it
            self._load(self._resume_state, resume_path)
            self._resume_state = None

    # ---- set-up -----------------------------------------------------------------------------------
    def _build_model(self, config: TrainingConfig, resume: Optional[str | os.PathLike]) -> Optional[Path]:
        """``self.model`` on the run's device: the resumed checkpoint's architecture and weights, or
        the config's model (weights from ``init_from`` when set). Returns the checkpoint resumed from."""
        from ..model import CoupAlign, CoupAlignConfig

        resume_path = self._resolve_resume(resume)
        self._resume_state = read_checkpoint(resume_path) if resume_path is not None else None
        if self._resume_state is not None:
            # The architecture is the checkpoint's (its text_config is filled in even when the run
            # started from a pretrained BERT), and every weight comes from it: no pretrained files.
            model_config = CoupAlignConfig.from_dict(self._resume_state["config"]).replace(
                image_pretrained=None, text_pretrained=False)
        else:
            model_config = dataclasses.replace(config.model)  # the model fills in text_config
        self.model: CoupAlign = CoupAlign(model_config).to(self.device)
        self._inherited_vocabulary: Optional[GroundingVocabulary] = None  # the init_from model's
        if self._resume_state is None and config.train.init_from:
            self._init_weights_from(config.train.init_from)
        if self.ctx.is_distributed and self.device.type == "cuda":
            # LAVT's SyncBatchNorm (the SegHead's BatchNorms); it keeps the parameter objects.
            # (It returns the model object itself, its BatchNorm children replaced.)
            self.model = cast("CoupAlign", nn.SyncBatchNorm.convert_sync_batchnorm(self.model))
        return resume_path

    def _amp_dtype(self, amp: str) -> Optional[torch.dtype]:
        """Autocast dtype: bf16, or fp16 (with the GradScaler) on GPUs; torch autocasts on the CPU too,
        which only pays off on CPUs with bf16/fp16 matrix units."""
        if amp == "none":
            return None
        if self.device.type != "cuda" and self.ctx.is_main and not (amp == "bf16" and read_cpu_info().has_bf16):
            log.warning("train.amp=%s on %s: CPU autocast is slower than float32 unless the CPU has "
                        "%s matrix units, which this one lacks (train.amp=auto chooses from the CPU)",
                        amp, self.device, amp)
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _init_weights_from(self, path: str | os.PathLike) -> None:
        """``train.init_from``: this run's model starts from another checkpoint's weights."""
        from ..model.positional import resample_position_tables

        state = read_checkpoint(path)
        own = self.model.state_dict()
        # Another input size (a higher-resolution stage) changes only the position tables' grids:
        # those are resampled. Another window_size reshapes the same Swin tables but is another
        # attention pattern, so the shape check below refuses it.
        theirs = state["model"]
        resampled: list[str] = []
        if state.get("config", {}).get("window_size") == self.model.config.window_size:
            theirs, resampled = resample_position_tables(self.model, theirs)
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        reshaped = sorted(k for k in set(own) & set(theirs) if own[k].shape != theirs[k].shape)
        if missing or unexpected or reshaped:
            raise ValueError(
                f"train.init_from {path}: its model is not this config's architecture (missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {reshaped[:5]}); "
                f"init_from needs the same model config up to loss weights and image_size"
            )
        self.model.load_state_dict(theirs)
        self._inherited_vocabulary = vocabulary_from_checkpoint(state)
        if self.ctx.is_main:
            log.info("train.init_from: model weights from %s (step %s of that run)", path, state.get("step", "?"))
            if resampled:
                log.info("train.init_from: position tables resampled to image_size %d: %s",
                         self.model.config.image_size, ", ".join(resampled))

    def _resolve_resume(self, resume: Optional[str | os.PathLike]) -> Optional[Path]:
        if resume is None:
            return None
        if str(resume) == "auto":
            path = self.output_dir / "last.pt"
            if not path.is_file():
                if self.ctx.is_main:
                    log.info("--resume: no %s yet, starting fresh", path)
                return None
            return path
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        return path

    def _build_data(self) -> None:
        from ..data.transforms import ReferTransform
        from .datasets import build_datasets

        cfg, data = self.config.train, self.config.data
        if data.synthesize is not None:
            self._synthesize_if_missing(data.synthesize)
        transform = ReferTransform(self.model.config.image_size, self.tokenizer, self.model.config.max_tokens)
        # data.epoch_sentences sets the epoch's items; data.val_from_train, the validation set.
        self.train_set, self.val_set = build_datasets(data, transform, cfg.seed)
        self.grounding_vocabulary = training_vocabulary(self.train_set, self._inherited_vocabulary)
        self.batch_size = cfg.per_process_batch(self.ctx.world_size)
        self.global_batch = self.batch_size * self.ctx.world_size * cfg.grad_accum
        self.sampler = ResumableDistributedSampler(
            self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank, seed=cfg.seed,
            shuffle=True, drop_last=True,
        )
        self.steps_per_epoch = self.sampler.num_samples // (self.batch_size * cfg.grad_accum)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.train_set)} items, fewer than one global batch of "
                f"{self.global_batch}: lower train.batch_size or use more data"
            )
        budgets = []
        if cfg.max_steps is not None:
            budgets.append(cfg.max_steps)
        if cfg.epochs is not None:
            budgets.append(cfg.epochs * self.steps_per_epoch)
        self.total_steps: Optional[int] = min(budgets) if budgets else None
        if cfg.decay_steps is not None:
            self.decay_steps = cfg.decay_steps
        elif cfg.decay_epochs is not None:
            self.decay_steps = steps_for(cfg.decay_epochs, self.steps_per_epoch)
        elif self.total_steps is not None:
            self.decay_steps = self.total_steps
        else:
            raise ValueError("with only train.max_minutes as budget, give decay_steps or decay_epochs")

    def _synthesize_if_missing(self, synthesize: dict[str, Any]) -> None:
        data = self.config.data
        refs = Path(data.data_root) / data.dataset / f"refs({data.split_by}).p"
        if self.ctx.is_main and not refs.is_file():
            from ..data import synthetic, tabletop

            world = tabletop if data.dataset == "tabletop" else synthetic  # coupalign sim's world, or synth's
            log.info("data.synthesize: %s is absent; generating %s", refs, synthesize)
            world.generate(data.data_root, **synthesize)
        barrier(self.ctx)

    # ---- checkpoints ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return dict(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            step=self.step,
            step_in_epoch=self.step_in_epoch,
            best_oiou=self.best_oiou,
            val_metrics=self.last_val,
            elapsed_s=self.elapsed(),
            world_size=self.ctx.world_size,
            runtime=dict(self.runtime),
            global_batch_size=self.global_batch,
            train_config=self.config.to_dict(),
            grounding_vocabulary=self.grounding_vocabulary.to_state(),
        )

    def save(self, name: str = "last.pt", rng: Optional[list[dict[str, Any]]] = None) -> Optional[Path]:
        """Write ``output_dir/name`` on rank 0 (every rank must call: the RNG states are gathered)."""
        rng = rng if rng is not None else all_gather_object(rng_state(), self.ctx)
        if not self.ctx.is_main:
            return None
        path = save_checkpoint(self.output_dir / name, self.model, self.tokenizer, rng=rng, **self._state())
        log.info("saved %s (step %d)", path, self.step)
        return path

    def _load(self, state: dict[str, Any], path: Path) -> None:
        if "optimizer" not in state or "step" not in state:
            raise ValueError(f"{path} holds no training state (optimizer, step): it cannot be resumed")
        if state.get("global_batch_size") not in (None, self.global_batch):
            raise ValueError(
                f"{path} was trained with global batch {state['global_batch_size']}, this run has "
                f"{self.global_batch}: the same schedule needs the same global batch (change "
                "batch_size/grad_accum to match)"
            )
        ckpt_cfg = state.get("train_config", {})
        diff = _diff(ckpt_cfg, self.config.to_dict())
        if diff and self.ctx.is_main:
            log.warning("config differs from the checkpoint's in %s", ", ".join(diff))
        self.model.load_state_dict(state["model"])
        self.grounding_vocabulary = self.grounding_vocabulary.union(vocabulary_from_checkpoint(state))
        self.optimizer.load_state_dict(state["optimizer"])
        def schedule() -> tuple:
            sch = self.scheduler
            return sch.end_lr, sch.decay_steps, sch.power, sch.warmup_steps, list(sch.base_lrs)

        wanted = schedule()
        self.scheduler.load_state_dict(state["scheduler"])
        stored = schedule()
        if stored != wanted and self.ctx.is_main:
            log.warning("the learning-rate schedule continues as the checkpoint's (end_lr, decay_steps, "
                        "power, warm-up, base lr = %s), not this config's %s", stored, wanted)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_oiou = state.get("best_oiou")
        self.last_val = state.get("val_metrics") or {}
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        rng = state.get("rng") or []
        if len(rng) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank])
        else:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: reseeding",
                        len(rng), self.ctx.world_size)
            seed_everything(self.config.train.seed + 1000 * self.ctx.rank + self.step)
        if self.ctx.is_main:
            log.info("resumed from %s at epoch %d, step %d (%d in epoch), lr %.3g",
                     path, self.epoch, self.step, self.step_in_epoch, self.lr)

    # ---- the loop ---------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def request_stop(self, reason: str = "request") -> None:
        """End the run after the current step (a checkpoint is written)."""
        self._stop_reason = self._stop_reason or reason

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._signals_seen += 1
        if self._signals_seen > 1:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        log.warning("%s: finishing this step, writing a checkpoint and stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)
        self.request_stop(f"signal:{signal.Signals(signum).name}")

    def _budget_reached(self) -> bool:
        cfg = self.config.train
        if self.total_steps is not None and self.step >= self.total_steps:
            return True
        return cfg.max_minutes is not None and self.elapsed() >= 60.0 * cfg.max_minutes

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        """This epoch's batches from ``start_step`` on: order fixed by (seed, epoch)."""
        cfg = self.config.train
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.sampler.set_start(start_step * cfg.grad_accum * self.batch_size)
        # The loader's own generator (workers' base seed) keeps the global RNG out of data loading.
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler, collate_fn=collate,
            num_workers=self.config.data.num_workers, drop_last=True, generator=gen,
            pin_memory=self.device.type == "cuda", worker_init_fn=ignore_stop_signals,
        )

    def fit(self) -> TrainResult:
        old_handlers = self._install_signal_handlers()
        try:
            self._start_outputs()
            stopped_by = self._train_loop()
            broadcast_buffers(self.model, self.ctx)  # every rank ends with the checkpoint's model
            if stopped_by == "budget" and self.val_set is not None and self.last_val.get("step") != self.step:
                self.evaluate()
            self.save("last.pt")
            if self.ctx.is_main:
                self._write_curves()
        finally:
            self._restore_signal_handlers(old_handlers)
            if self._writer is not None:
                self._writer.close()
        if self.ctx.is_main:
            log.info("stopped at step %d (%s) after %.1f min; best val oIoU %s", self.step, stopped_by,
                     self.elapsed() / 60, "n/a" if self.best_oiou is None else f"{self.best_oiou:.2f}")
        return TrainResult(self.step, self.epoch, self.best_oiou, dict(self.last_val), stopped_by,
                           self.output_dir)

    def _train_loop(self) -> str:
        from tqdm.auto import tqdm

        cfg = self.config.train
        if self.ctx.is_main:
            log.info(
                "global batch %d = %d per process x %d processes x %d accumulation; %d steps/epoch; "
                "%s; lr %.3g -> %.3g over %d steps; device %s, amp %s",
                self.global_batch, self.batch_size, self.ctx.world_size, cfg.grad_accum,
                self.steps_per_epoch,
                f"{self.total_steps} steps" if self.total_steps else "no step limit",
                cfg.lr, cfg.end_lr, self.decay_steps, self.device, self.runtime["amp"],
            )
            print(f"global batch size: {self.global_batch} (= {self.batch_size} per process x "
                  f"{self.ctx.world_size} processes x {cfg.grad_accum} accumulation steps)", flush=True)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.ctx.is_main,
                   desc="train", unit="step", dynamic_ncols=True)
        sums = torch.zeros(len(LOGGED_KEYS) + 1, dtype=torch.float64, device=self.device)  # values, count
        window_start, window_samples = time.monotonic(), 0
        try:
            while True:
                if any_rank(self._budget_reached() if self.ctx.is_main else False, self.ctx):
                    return "budget"
                loader = self._loader(self.epoch, self.step_in_epoch)
                batches = iter(loader)
                while self.step_in_epoch < self.steps_per_epoch:
                    micro = [next(batches) for _ in range(cfg.grad_accum)]
                    losses = self.train_step(micro)
                    self.step += 1
                    self.step_in_epoch += 1
                    window_samples += self.global_batch
                    sums += torch.tensor([losses[k] for k in LOGGED_KEYS] + [1.0], dtype=torch.float64,
                                         device=self.device)
                    for callback in self.step_callbacks:
                        callback(self, losses)
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        rate = window_samples / max(time.monotonic() - window_start, 1e-9)
                        self._log_train(sums, rate, bar)
                        sums.zero_()
                        window_start, window_samples = time.monotonic(), 0
                    epoch_end = self.epoch + 1 if self.step_in_epoch == self.steps_per_epoch else None
                    if epoch_end is not None:
                        self.epoch, self.step_in_epoch = epoch_end, 0
                    stop = any_rank(self._stop_reason is not None or
                                    (self._budget_reached() if self.ctx.is_main else False), self.ctx)
                    # A stop signal skips the evaluation: torchrun kills a rank 30 s after SIGTERM,
                    # and the checkpoint must be written within that.
                    signalled = stop and broadcast_object(self._stop_reason or "", self.ctx).startswith("signal:")
                    if self.val_set is not None and cfg.eval_every.due(self.step, epoch_end) and not signalled:
                        self.evaluate()
                    if stop:
                        reason = broadcast_object(self._stop_reason or "budget", self.ctx)
                        return reason
                    if cfg.checkpoint_every.due(self.step, epoch_end):
                        self.save("last.pt")
                    if epoch_end is not None:
                        break
        finally:
            bar.close()

    def train_step(self, micro_batches: Sequence[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns this rank's mean losses
        and the gradient norm."""
        cfg = self.config.train
        model = self.ddp_model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = {k: 0.0 for k in LOSS_KEYS}
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            last = i == n - 1
            # DDP (the distributed case) skips the gradient all-reduce until the last micro-batch.
            ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
            sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    out = model(batch["pixel_values"].to(self.device, non_blocking=True),
                                batch["input_ids"].to(self.device, non_blocking=True),
                                batch["attention_mask"].to(self.device, non_blocking=True))
                    losses = self.loss_fn(out, batch["target"].to(self.device, non_blocking=True))
                self.scaler.scale(losses["loss"] / n).backward()
            for k in LOSS_KEYS:
                totals[k] += float(losses[k].detach()) / n
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and self.amp_dtype != torch.float16:
            # The gradients are all-reduced, so every rank sees the same norm and skips together.
            log.warning("step %d: non-finite gradient norm (%s); update skipped", self.step + 1, grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)  # skips by itself on fp16 overflow
        self.scaler.update()
        self.scheduler.step()
        # Before clipping; an fp16 overflow step (skipped by the scaler) counts as 0 in the log.
        totals["grad_norm"] = grad_norm if math.isfinite(grad_norm) else 0.0
        return totals

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation (``coupalign_core.evaluation.evaluate``, reduced over ranks) with best.pt,
        TensorBoard, metrics.jsonl, the curves and an overlay grid written on rank 0."""
        from ..evaluation import evaluate as run_evaluation

        assert self.val_set is not None
        data, cfg = self.config.data, self.config.train
        t0 = time.monotonic()
        broadcast_buffers(self.model, self.ctx)
        with preserved_rng():
            try:
                result = run_evaluation(
                    self.model, self.tokenizer, self.val_set,
                    batch_size=data.val_batch_size or self.batch_size, device=self.device,
                    distributed=self.ctx.is_distributed, num_workers=data.num_workers,
                    num_examples=cfg.overlay_samples if self.ctx.is_main else 0,
                    progress=self.ctx.is_main, desc=f"val step {self.step}",
                )
            except RuntimeError as e:
                if self._stop_reason is None:
                    raise
                # A stop signal also reached the evaluation's loader workers (same process group)
                # and killed them: skip this validation, the checkpoint matters more.
                log.warning("validation at step %d interrupted by %s (%s); skipped", self.step,
                            self._stop_reason, e)
                return {}
        metrics = {k: float(v) for k, v in result["metrics"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for kind, m in result.get("by_kind", {}).items():
            metrics[f"oIoU/{kind}"] = float(m["oIoU"])
        accuracy = result.get("presence", {}).get("no_target_accuracy")
        if accuracy is not None:
            metrics["no_target_accuracy"] = float(accuracy)
        # Every rank has the same reduced numbers; rank 0's copy is the one all act on (best.pt
        # is a collective call).
        metrics = broadcast_object(metrics, self.ctx)
        metrics["step"] = self.step
        self.last_val = metrics
        improved = "oIoU" in metrics and (self.best_oiou is None or metrics["oIoU"] > self.best_oiou)
        if improved:
            self.best_oiou = metrics["oIoU"]
            if cfg.select_checkpoint == "best":  # "last": the run's model is last.pt, no split chose it
                self.save("best.pt")
        if self.ctx.is_main:
            log.info("step %d: val oIoU %.2f mIoU %.2f (best %.2f) in %.1f s", self.step,
                     metrics.get("oIoU", float("nan")), metrics.get("mIoU", float("nan")),
                     self.best_oiou if self.best_oiou is not None else float("nan"), time.monotonic() - t0)
            self._record({"split": "val", "epoch": self.epoch, **metrics})
            for k, v in metrics.items():
                if k != "step":
                    self.writer.add_scalar(f"val/{k}", v, self.step)
            if result.get("examples"):
                from .plots import plot_overlay_grid

                plot_overlay_grid(result["examples"], self.output_dir / "overlays" / f"step_{self.step:07d}.png",
                                  title=f"step {self.step}: val oIoU {metrics.get('oIoU', float('nan')):.2f}"
                                        "  (green: ground truth, red: prediction)")
            self._write_curves()
        return metrics

    # ---- outputs (rank 0) -------------------------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tb"), purge_step=self.step or None)
        return self._writer

    def _start_outputs(self) -> None:
        if not self.ctx.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.yaml").write_text(self.config.to_yaml())
        path = self.output_dir / "metrics.jsonl"
        if path.is_file() and self.step > 0:  # resumed: keep the rows up to the checkpoint
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= self.step]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        log.info("run folder %s (%.1f M parameters)", self.output_dir,
                 sum(p.numel() for p in self.model.parameters()) / 1e6)

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _log_train(self, sums: torch.Tensor, samples_per_s: float, bar) -> None:
        all_reduce_sum(sums, self.ctx)  # every rank calls: sums over ranks
        if not self.ctx.is_main:
            return
        count = max(float(sums[-1]), 1.0)
        means = {k: float(sums[i]) / count for i, k in enumerate(LOGGED_KEYS)}
        row = {"split": "train", "step": self.step, "epoch": self.epoch, "lr": self.lr,
               "samples_per_s": samples_per_s, "elapsed_s": self.elapsed(), **means}
        self._record(row)
        for k, v in means.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self.writer.add_scalar("train/lr", self.lr, self.step)
        self.writer.add_scalar("train/samples_per_s", samples_per_s, self.step)
        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{self.lr:.2e}", samples_s=f"{samples_per_s:.1f}")

    def _write_curves(self) -> None:
        from .plots import plot_training_curves

        if self.history:
            plot_training_curves(self.history, self.output_dir / "curves.png")

    # ---- signals ----------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
