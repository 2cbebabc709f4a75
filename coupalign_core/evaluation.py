"""Evaluation engine: the paper's test protocol (section 4.1, LAVT's ``test.py``) for one model.

Used by ``coupalign eval`` (through :func:`evaluate_checkpoint`) and by the trainer's validation
(through :func:`evaluate`)::

    from coupalign_core.evaluation import evaluate
    result = evaluate(model, tokenizer, dataset, batch_size=16, distributed=ctx.is_distributed)
    result["metrics"]["oIoU"]

``evaluate(model, tokenizer, dataset, *, batch_size=8, resolution="input", threshold=0.5,
presence_threshold=0.5, device=None, distributed=None, num_workers=0, shuffle_expressions=False,
seed=0, num_examples=0, progress=True, desc="eval") -> dict``

* ``model``: a CoupAlign, possibly DDP-wrapped (its ``.module`` is used, so no DDP hook runs);
  its mode is restored afterwards, so the trainer can call this mid-training.
* ``dataset``: a map-style data set of *raw* items (``ReferDataset(..., transform=None)``): dicts with
  ``image`` (H,W,3) uint8, ``mask`` (H,W) bool, ``sentence``, and optionally ``kind`` and
  ``no_target``. ``sentences="all"`` scores every sentence of every ref (the test protocol);
  ``"random"`` scores one sentence per ref (LAVT's training-time validation).
* ``distributed``: shard the samples over the ranks of the initialised process group (rank r takes
  samples r, r + W, r + 2W, ...: no padding, so no sample is counted twice) and merge the
  per-sample results on every rank. ``None``: on when a process group of more than one rank is up.
  Every rank must call ``evaluate`` and gets the same result.

Protocol and choices:

* Inference under ``torch.inference_mode`` in batches (the model has no batch-dependent layer in
  eval mode, so batching does not change the masks). A pixel is foreground when
  ``sigmoid(logit) >= threshold`` (0.5; LAVT's argmax over two classes is the same rule up to
  exact ties, and ``presence_score`` counts foreground pixels the same way).
* ``resolution="input"`` (default, LAVT): the prediction at the model's input size S×S against the
  ground truth resized to S×S with nearest neighbour (the same ``ReferTransform`` as training).
  ``"original"``: logits upsampled bilinearly to each image's original size, against the original
  mask. The result says which one was used.
* **No-target expressions** (synthetic: a thing that is not in the image; empty mask) are *excluded
  from the mask metrics*: with an empty ground truth IoU is 0 whatever the model does (an empty
  prediction has U = 0, which the protocol scores as 0), so including them would only lower every
  number by a constant share and reward nothing. They are scored by the presence score instead:
  ``presence`` reports the share of no-target expressions with ``presence_score < presence_threshold``
  (correctly rejected) and, on expressions with a target, the found rate (``score >= threshold``).
* On data with expression kinds (the synthetic benchmark), ``by_kind`` holds ``RISMetrics.compute()``
  per kind and for the combined group ``"ordinal+relation"`` (the hardest kinds, which need the
  sentence's word order and spatial words).
* ``shuffle_expressions=True`` is the control that proves the model reads the sentence: every
  target sample is scored with the sentence of a sample *from another image* (a fixed-seed
  derangement, see :func:`shuffled_sources`), so a model that ignores the text keeps its score and
  one that reads it collapses.

Result::

    {"metrics": RISMetrics.compute() over samples with a target,
     "by_kind": {kind: compute(), ..., "ordinal+relation": compute()}   # {} without kinds
     "presence": {"no_target_n", "no_target_accuracy" (% rejected, None without no-target samples),
                  "target_n", "found_rate" (% found), "threshold"},
     "resolution": "input" | "original", "image_size": S, "threshold": 0.5,
     "shuffle_expressions": bool, "num_sentences": all samples scored (targets + no-target),
     "examples": [...]}   # the first ``num_examples`` samples of rank 0, for overlay pictures:
                          # {"image" (S,S,3) uint8, "pred"/"target" (S,S) bool, "sentence", "kind", "iou"}
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.collate import collate
from .data.refer import ReferDataset
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, ReferTransform
from .metrics import RISMetrics
from .model.modeling import presence_score

log = logging.getLogger(__name__)

RESOLUTIONS = ("input", "original")
COMBINED_GROUPS: dict[str, tuple[str, ...]] = {"ordinal+relation": ("ordinal", "relation")}


# ---- the shuffled-expressions control ------------------------------------------------------------
def shuffled_sources(image_ids: Sequence[Any], seed: int) -> list[int]:
    """A permutation ``src`` of range(n) with ``image_ids[src[i]] != image_ids[i]`` for every i.

    Samples are grouped by image, the groups and the samples inside them are put in a seeded random
    order and laid out one after another; sample j then takes the sentence of sample j + m (cyclic),
    m being the largest group. A group is a contiguous run of at most m samples, so j and j + m never
    fall in the same image as long as n >= 2m. Every sentence is used exactly once.
    """
    n = len(image_ids)
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(i)
    largest = max(len(g) for g in groups.values())
    if n < 2 * largest:
        raise ValueError(
            f"cannot shuffle expressions across images: {largest} of the {n} expressions with a "
            f"target are on one image (need at most half)"
        )
    order = list(groups.values())
    rng.shuffle(order)
    layout = [i for g in order for i in rng.permutation(g).tolist()]
    src = [0] * n
    for j, i in enumerate(layout):
        src[i] = layout[(j + largest) % n]
    return src


class _EvalItems(Dataset):
    """``dataset`` restricted to ``indices``, with sentences replaced where ``sentence_of`` says,
    passed through the paper's transform."""

    def __init__(self, dataset, indices: Sequence[int], transform: ReferTransform,
                 sentence_of: Optional[dict[int, str]] = None):
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform
        self.sentence_of = sentence_of or {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        item = self.dataset[index]
        if not isinstance(item, dict) or not {"image", "mask", "sentence"} <= item.keys():
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(
                f"evaluation needs raw items with image, mask and sentence (a ReferDataset with "
                f"transform=None); item {index} has {keys}"
            )
        item = dict(item)
        item.setdefault("kind", None)
        item["no_target"] = bool(item.get("no_target", False))
        if index in self.sentence_of:
            item["sentence"] = self.sentence_of[index]
        return self.transform(item)


def _sentence_sources(dataset, seed: int) -> dict[int, str]:
    """index -> sentence it is scored with under the shuffled-expressions control (targets only)."""
    indices, image_ids, sentences = [], [], []
    for index in tqdm(range(len(dataset)), desc="reading sentences", unit="item", leave=False,
                      disable=not _is_main()):
        item = dataset[index]
        if item.get("no_target", False):
            continue  # no-target samples keep their sentence: they are scored by presence only
        indices.append(index)
        image_ids.append(item.get("image_id", index))
        sentences.append(item["sentence"])
    src = shuffled_sources(image_ids, seed)
    return {index: sentences[src[k]] for k, index in enumerate(indices)}


# ---- helpers ---------------------------------------------------------------------------------------
def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _denormalise(pixel_values: torch.Tensor) -> np.ndarray:
    """(3, S, S) ImageNet-normalised -> (S, S, 3) uint8 RGB, for overlay pictures."""
    x = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _presence_summary(scores: np.ndarray, no_target: np.ndarray, threshold: float) -> dict[str, Any]:
    rejected = scores[no_target] < threshold
    found = scores[~no_target] >= threshold
    return {
        "no_target_n": int(no_target.sum()),
        "no_target_accuracy": 100.0 * float(rejected.mean()) if rejected.size else None,
        "target_n": int((~no_target).sum()),
        "found_rate": 100.0 * float(found.mean()) if found.size else None,
        "threshold": threshold,
    }


# ---- the engine ------------------------------------------------------------------------------------
class _InputSpec(Protocol):
    """What evaluation reads of a model's config (``CoupAlignConfig``, or a stand-in's)."""

    image_size: int
    max_tokens: int


@dataclass
class _Tally:
    """What one rank accumulates over its batches: mask metrics of the samples with a target,
    presence scores and no-target flags of all samples, and the first overlay examples."""

    resolution: str
    threshold: float
    num_examples: int  # 0 on every rank but 0
    metrics: RISMetrics = field(default_factory=RISMetrics)
    scores: list[float] = field(default_factory=list)
    no_target_flags: list[bool] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: dict[str, Any], logits: torch.Tensor, presence_logits: Optional[torch.Tensor],
            device: torch.device) -> None:
        """One batch: logits (B, 1, S, S) float, presence_logits (B,) or None."""
        self.scores += presence_score(logits, presence_logits).cpu().tolist()
        flags = [bool(f) for f in batch["no_target"]]
        self.no_target_flags += flags
        keep = [i for i, f in enumerate(flags) if not f]  # samples with a target
        if not keep:
            return
        self._update_metrics(batch, logits, keep, device)
        if len(self.examples) < self.num_examples:
            self._add_examples(batch, logits, keep)

    def _update_metrics(self, batch: dict[str, Any], logits: torch.Tensor, keep: list[int],
                        device: torch.device) -> None:
        kinds = [batch["kind"][i] for i in keep]
        if self.resolution == "input":
            pred = logits[keep, 0].sigmoid() >= self.threshold  # (K, S, S)
            gt = batch["target"][keep].to(device) > 0.5  # (K, S, S)
            self.metrics.update(pred, gt, group=kinds)
            return
        for i, kind in zip(keep, kinds):
            gt = torch.from_numpy(batch["mask"][i]).to(device)  # (H, W) original size
            up = F.interpolate(logits[i : i + 1], size=gt.shape, mode="bilinear", align_corners=False)  # (1, 1, H, W)
            self.metrics.update(up[0, 0].sigmoid() >= self.threshold, gt, group=kind)

    def _add_examples(self, batch: dict[str, Any], logits: torch.Tensor, keep: list[int]) -> None:
        ious = self.metrics.ious()[-len(keep):]
        for k, i in enumerate(keep[: self.num_examples - len(self.examples)]):
            self.examples.append({
                "image": _denormalise(batch["pixel_values"][i]),
                "pred": (logits[i, 0].sigmoid() >= self.threshold).cpu().numpy(),
                "target": batch["target"][i].numpy() > 0.5,
                "sentence": batch["sentence"][i],
                "kind": batch["kind"][i],
                "iou": float(ious[k]),
            })

    def merge_ranks(self, world: int) -> None:
        """Every rank ends with the metrics, scores and flags of all ranks."""
        self.metrics.all_reduce()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (self.scores, self.no_target_flags))
        self.scores = [s for part, _ in gathered for s in part]
        self.no_target_flags = [f for _, part in gathered for f in part]

    def by_kind(self) -> dict[str, Any]:
        """Metrics per expression kind and per combined group; {} on data without kinds."""
        if not self.metrics.groups():
            return {}
        by_kind = self.metrics.breakdown()
        for name, members in COMBINED_GROUPS.items():
            if any(m in by_kind for m in members):
                by_kind[name] = self.metrics.compute(group=members)
        return by_kind

    def presence(self, threshold: float) -> dict[str, Any]:
        return _presence_summary(np.asarray(self.scores, dtype=np.float64),
                                 np.asarray(self.no_target_flags, dtype=bool), threshold)


def _check_options(resolution: str, threshold: float, presence_threshold: float, batch_size: int) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if not 0.0 < threshold < 1.0 or not 0.0 < presence_threshold < 1.0:
        raise ValueError(f"thresholds must lie in (0, 1), got {threshold} and {presence_threshold}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _ranks(distributed: Optional[bool]) -> tuple[bool, int, int]:
    """(distributed, rank, world size); ``None`` turns sharding on when a group of > 1 rank is up."""
    group_up = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = group_up and dist.get_world_size() > 1
    if distributed and not group_up:
        raise RuntimeError("distributed=True but torch.distributed has no initialised process group")
    return (True, dist.get_rank(), dist.get_world_size()) if distributed else (False, 0, 1)


@contextmanager
def _eval_mode(net: torch.nn.Module) -> Iterator[None]:
    """``net`` in eval mode inside, its own mode afterwards (the trainer validates mid-training)."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    *,
    batch_size: int = 8,
    resolution: str = "input",
    threshold: float = 0.5,
    presence_threshold: float = 0.5,
    device: str | torch.device | None = None,
    distributed: Optional[bool] = None,
    num_workers: int = 0,
    shuffle_expressions: bool = False,
    seed: int = 0,
    num_examples: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Score ``model`` on every item of ``dataset`` (see the module docstring for the result)."""
    _check_options(resolution, threshold, presence_threshold, batch_size)
    net = getattr(model, "module", model)  # DDP -> the CoupAlign it wraps
    config = cast(_InputSpec, net.config)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    distributed, rank, world = _ranks(distributed)

    sentence_of = _sentence_sources(dataset, seed) if shuffle_expressions else None
    transform = ReferTransform(config.image_size, tokenizer, config.max_tokens,
                               keep_original=resolution == "original")
    shard = _EvalItems(dataset, range(rank, len(dataset), world), transform, sentence_of)
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")

    tally = _Tally(resolution, threshold, num_examples if rank == 0 else 0)
    with _eval_mode(net), torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not (progress and rank == 0), leave=False):
            images = batch["pixel_values"].to(device, non_blocking=True)
            out = net(images, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            tally.add(batch, out.logits.float(), out.presence_logits, device)
    if distributed:
        tally.merge_ranks(world)

    result: dict[str, Any] = {
        "metrics": tally.metrics.compute(),
        "by_kind": tally.by_kind(),
        "presence": tally.presence(presence_threshold),
        "resolution": resolution,
        "image_size": int(config.image_size),
        "threshold": threshold,
        "shuffle_expressions": bool(shuffle_expressions),
        "num_sentences": len(tally.scores),
        "examples": tally.examples,
    }
    log.info(
        "%s: oIoU %.2f mIoU %.2f over %d samples with a target (%d no-target) at %s resolution%s",
        desc, result["metrics"]["oIoU"], result["metrics"]["mIoU"], result["metrics"]["n"],
        result["presence"]["no_target_n"], resolution, ", expressions shuffled" if shuffle_expressions else "",
    )
    return result


class SplitScoringError(RuntimeError):
    """Scoring ``split`` failed; ``scored`` holds the results of the splits scored before it."""

    def __init__(self, split: str, scored: dict[str, dict[str, Any]], cause: Exception):
        before = f"after {', '.join(scored)} {'was' if len(scored) == 1 else 'were'} scored" if scored else "first"
        super().__init__(f"scoring split {split!r} failed ({before}): {type(cause).__name__}: {cause}")
        self.split = split
        self.scored = scored


def open_splits(
    data_root: str | os.PathLike,
    dataset: str,
    split_by: str,
    splits: Sequence[str],
    *,
    image_root: str | os.PathLike | None = None,
) -> dict[str, ReferDataset]:
    """Every requested split (every sentence of every ref), each opened and its first item read.

    Done for all splits before any is scored, so an unknown, empty or unreadable split fails at once,
    naming every such split, instead of after the splits before it have been scored."""
    if not splits:
        raise ValueError("no split to score")
    repeated = sorted({split for split in splits if list(splits).count(split) > 1})
    if repeated:
        raise ValueError(f"splits named more than once: {repeated}")
    opened: dict[str, ReferDataset] = {}
    problems: dict[str, list[str]] = {}  # message -> the splits it applies to
    for split in splits:
        try:
            data = ReferDataset(data_root, dataset, split_by, split, image_root=image_root, sentences="all")
            data[0]  # one image read and one mask decoded: the files are readable
        except (OSError, ValueError) as e:
            problems.setdefault(str(e), []).append(split)
            continue
        opened[split] = data
    if problems:
        bad = sum(len(names) for names in problems.values())
        detail = "; ".join(f"{', '.join(names)}: {message}" for message, names in problems.items())
        raise ValueError(f"{bad} of {len(splits)} splits cannot be scored (nothing was scored): {detail}")
    return opened


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    dataset: str,
    split_by: str,
    splits: Sequence[str],
    *,
    image_root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    on_split_scored: Callable[[str, dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``evaluate`` a checkpoint on each split (every sentence of every ref): split -> result.

    Every split is opened (:func:`open_splits`) before the model loads. ``on_split_scored(split,
    result)`` runs after each split, so a caller can keep what is done (``coupalign eval`` writes its
    report there); a split that fails raises :class:`SplitScoringError`, which carries the results
    of the splits scored before it."""
    from .checkpoint import load_model

    datasets = open_splits(data_root, dataset, split_by, splits, image_root=image_root)
    model, tokenizer, _ = load_model(checkpoint, map_location=device)
    results: dict[str, dict[str, Any]] = {}
    for split, data in datasets.items():
        log.info("%s", data)
        try:
            result = evaluate(model, tokenizer, data, device=device, desc=f"{dataset} {split}", **kwargs)
        except Exception as e:
            raise SplitScoringError(split, dict(results), e) from e
        results[split] = result
        if on_split_scored is not None:
            on_split_scored(split, result)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The printed report: one row per split, then the kind breakdown and the presence numbers."""
    any_result = next(iter(results.values()))
    where = (f"the model's input resolution ({any_result['image_size']}x{any_result['image_size']}, "
             "ground truth resized nearest: LAVT protocol)" if any_result["resolution"] == "input"
             else "the original image resolution (logits upsampled bilinearly)")
    lines = [f"Scored at {where}; foreground = sigmoid >= {any_result['threshold']}."]
    if any_result["shuffle_expressions"]:
        lines.append("CONTROL: expressions shuffled across images (the model should fail here).")
    header = (f"{'split':<18}{'n':>7}{'oIoU':>8}{'mIoU':>8}{'P@0.5':>8}{'P@0.7':>8}{'P@0.9':>8}"
              "   #IoU in [0,.1) [.1,.2) [.2,.3) [.3,.4) [.4,.5)")

    def row(name: str, m: dict[str, Any]) -> str:
        return (f"{name:<18}{m['n']:>7}{m['oIoU']:>8.2f}{m['mIoU']:>8.2f}{m['prec@0.5']:>8.2f}"
                f"{m['prec@0.7']:>8.2f}{m['prec@0.9']:>8.2f}   {m['iou_hist']}")

    lines += [header, "-" * len(header)]
    lines += [row(split, r["metrics"]) for split, r in results.items()]
    for split, r in results.items():
        if r["by_kind"]:
            lines += ["", f"by expression kind ({split}):", header.replace("split", "kind ", 1)]
            lines += [row(kind, m) for kind, m in r["by_kind"].items()]
    lines.append("")
    for split, r in results.items():
        p = r["presence"]
        acc = "n/a" if p["no_target_accuracy"] is None else f"{p['no_target_accuracy']:.2f}%"
        found = "n/a" if p["found_rate"] is None else f"{p['found_rate']:.2f}%"
        lines.append(
            f"presence ({split}, threshold {p['threshold']}): no-target rejected {acc} of "
            f"{p['no_target_n']}; targets found {found} of {p['target_n']}"
        )
    return "\n".join(lines)


def results_to_json(results: dict[str, dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """The ``--json`` layout: each split maps to its ``RISMetrics.compute()`` dict; the breakdowns
    sit under ``"by_kind"`` and ``"presence"`` (split -> ...), the settings under ``"meta"``."""
    any_result = next(iter(results.values()))
    out: dict[str, Any] = {split: r["metrics"] for split, r in results.items()}
    clash = sorted({"by_kind", "presence", "meta"} & set(out))
    if clash:
        raise ValueError(f"split names {clash} clash with the JSON report's own keys")
    out["by_kind"] = {split: r["by_kind"] for split, r in results.items() if r["by_kind"]}
    out["presence"] = {split: r["presence"] for split, r in results.items()}
    out["meta"] = {
        "resolution": any_result["resolution"],
        "image_size": any_result["image_size"],
        "threshold": any_result["threshold"],
        "shuffle_expressions": any_result["shuffle_expressions"],
        "num_sentences": {split: r["num_sentences"] for split, r in results.items()},
        **meta,
    }
    return out


__all__ = [
    "SplitScoringError", "evaluate", "evaluate_checkpoint", "format_table", "open_splits", "results_to_json",
    "shuffled_sources",
]
