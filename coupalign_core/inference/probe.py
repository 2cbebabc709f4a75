"""``backend="auto"`` on the CPU: the backend and thread count chosen by a short timed probe.

Which CPU configuration is fastest depends on the CPU, the model and the libraries, and differs
from one machine to the next (docs/benchmarks.md: OpenVINO beat onnxruntime's own kernels on one
CPU and lost to them on another; two torch threads halved the latency on an idle machine and
multiplied it by ten on a busy one). So on first use the candidates run a few frames each,
round-robin (a load change hits them alike), and the choice is cached per (machine fingerprint,
model hash, precision, candidates, library versions) in ``<cache_dir>/probe/``::

    outcome = probe_cpu(options, model=model, tokenizer=tokenizer)   # or onnx_path=...
    outcome.result.choice        # Candidate("onnxruntime", 1, "cpu")
    print(outcome.result.table())

Candidates: torch eager (with the model in memory), onnxruntime with its own CPU kernels, and
onnxruntime with OpenVINO's where installed, each on 1 thread and on every usable core (or on
``options.num_threads`` when that is set). The rule (:func:`select`) prefers a configuration that
stays steady to one that is fast on average: a busy CPU must not make the default collapse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .backends.base import InferenceBackend
from .cache import atomic_write_bytes, default_cache_dir, key_digest
from .options import SegmenterOptions

log = logging.getLogger(__name__)

PROBE_VERSION = 1  # bump when the protocol or the rule changes: old cached choices are then ignored
STABILITY = 1.5  # a candidate is steady when its p90 is at most this times its median
THREAD_MARGIN = 1.25  # more threads must beat the best one-thread p90 by this factor
PROBE_TEXT = "the red cup on the left of the table"


@dataclass(frozen=True, order=True)
class Candidate:
    """One CPU configuration: ``backend`` ("torch" or "onnxruntime"), threads, onnxruntime provider."""

    backend: str
    num_threads: int
    cpu_provider: str = ""  # onnxruntime: "cpu" (its own kernels) or "openvino"; "" for torch

    @property
    def name(self) -> str:
        what = "torch eager" if self.backend == "torch" else f"onnxruntime {self.cpu_provider}"
        return f"{what}, {self.num_threads} thread{'s' if self.num_threads != 1 else ''}"


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    runs: int

    @property
    def steady(self) -> bool:
        return self.p90_ms <= STABILITY * self.median_ms

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Timing":
        a = np.asarray(samples_ms, dtype=np.float64)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), int(a.size))


@dataclass
class ProbeResult:
    """What the probe measured, what it chose and why, where and when."""

    choice: Candidate
    reason: str
    timings: dict[Candidate, Timing]
    machine: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    notes: list[str] = field(default_factory=list)  # candidates left out, and why
    cached_at: Optional[str] = None  # the file it was read from or written to

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROBE_VERSION, "choice": asdict(self.choice), "reason": self.reason,
            "timings": [{"candidate": asdict(c), **asdict(t)} for c, t in self.timings.items()],
            "machine": self.machine, "date": self.date, "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProbeResult":
        timings = {}
        for row in d["timings"]:
            row = dict(row)
            cand = Candidate(**row.pop("candidate"))
            timings[cand] = Timing(**row)
        return cls(Candidate(**d["choice"]), d["reason"], timings, dict(d.get("machine", {})), d.get("date", ""),
                   list(d.get("notes", [])))

    def table(self) -> str:
        """Markdown: every candidate's median and p90, the chosen one marked."""
        lines = ["| candidate | median ms | p90 ms | p90/median | runs | |", "|---|---|---|---|---|---|"]
        for cand, t in sorted(self.timings.items(), key=lambda kv: kv[1].p90_ms):
            mark = "**chosen**" if cand == self.choice else ""
            lines.append(f"| {cand.name} | {t.median_ms:.2f} | {t.p90_ms:.2f} | {t.p90_ms / t.median_ms:.2f} "
                         f"| {t.runs} | {mark} |")
        return "\n".join(lines)


@dataclass
class ProbeOutcome:
    result: ProbeResult
    backend: Optional[InferenceBackend]  # the chosen backend, already built, when the probe ran now


# ---- the rule ------------------------------------------------------------------------------------
def select(timings: Mapping[Candidate, Timing]) -> tuple[Candidate, str]:
    """The candidate to use, and why.

    0. Candidates that ``measure`` dropped (fewer runs: over 3x the best median) do not compete.
    1. Only steady candidates (p90 ≤ ``STABILITY`` × median) compete, unless none is steady.
    2. The lowest p90 wins: a robot feels the slow frames, not the average.
    3. More than one thread must beat the best one-thread candidate's p90 by ``THREAD_MARGIN``:
       extra threads wait on cores that the rest of the robot also uses, and a probe on an idle
       machine does not see the load that comes later.
    """
    if not timings:
        raise ValueError("the probe measured no candidate")
    most = max(t.runs for t in timings.values())
    finished = {c: t for c, t in timings.items() if t.runs == most}  # the others were dropped as hopeless
    steady = {c: t for c, t in finished.items() if t.steady}
    pool = steady or finished
    best = min(pool, key=lambda c: (pool[c].p90_ms, c.num_threads, pool[c].median_ms))
    why = f"lowest p90 ({pool[best].p90_ms:.1f} ms, median {pool[best].median_ms:.1f} ms)"
    why += " of the steady candidates" if steady else "; no candidate was steady (p90 > 1.5x median)"
    unsteady = sorted(c.name for c in finished if c not in steady)
    if steady and unsteady:
        why += f"; unsteady, left out: {', '.join(unsteady)}"
    if best.num_threads > 1:
        single = {c: t for c, t in pool.items() if c.num_threads == 1}
        if single:
            one = min(single, key=lambda c: single[c].p90_ms)
            if pool[best].p90_ms * THREAD_MARGIN > single[one].p90_ms:
                return one, (f"{one.name}: {best.name} was not {THREAD_MARGIN}x faster at p90 "
                             f"({pool[best].p90_ms:.1f} vs {single[one].p90_ms:.1f} ms), so one thread "
                             "leaves the other cores to the rest of the machine")
    return best, f"{best.name}: {why}"


# ---- the measurement -----------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(backends: Mapping[Candidate, InferenceBackend], inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
            rounds: int = 20, warmup: int = 2, budget_s: float = 10.0, min_runs: int = 3, drop_factor: float = 3.0,
            clock: Callable[[], float] = time.perf_counter) -> dict[Candidate, list[float]]:
    """Milliseconds per call of each backend, round-robin. torch candidates run with their thread
    count set around each call.

    Bounded on a busy machine: after ``min_runs`` rounds a candidate whose median is over
    ``drop_factor`` times the best median stops (it cannot win), and no round starts after
    ``budget_s``."""
    def call(cand: Candidate, backend: InferenceBackend) -> float:
        with _torch_threads(cand.num_threads if cand.backend == "torch" else None):
            t0 = clock()
            backend(*inputs)
            return (clock() - t0) * 1e3

    for cand, backend in backends.items():
        for _ in range(warmup):
            call(cand, backend)
    samples: dict[Candidate, list[float]] = {c: [] for c in backends}
    running = dict(backends)
    start = clock()
    for i in range(rounds):
        for cand, backend in running.items():
            samples[cand].append(call(cand, backend))
        if i + 1 < min_runs:
            continue
        if clock() - start > budget_s:
            break
        best = min(float(np.median(samples[c])) for c in running)
        running = {c: b for c, b in running.items() if float(np.median(samples[c])) <= drop_factor * best}
    return samples


def thread_options(options: SegmenterOptions) -> tuple[int, ...]:
    """1 and every usable core, or the thread count the options fix."""
    from ..machine import usable_cores

    if options.num_threads is not None:
        return (options.num_threads,)
    return tuple(sorted({1, usable_cores()}))


def cpu_candidates(has_torch: bool, providers: Sequence[str], threads: Sequence[int]) -> list[Candidate]:
    kinds: list[tuple[str, str]] = [("torch", "")] if has_torch else []
    if "CPUExecutionProvider" in providers:
        kinds.append(("onnxruntime", "cpu"))
    if "OpenVINOExecutionProvider" in providers:
        kinds.append(("onnxruntime", "openvino"))
    return [Candidate(b, n, p) for b, p in kinds for n in threads]


def probe_path(options: SegmenterOptions, model_key: str, candidates: Sequence[Candidate],
               machine: Mapping[str, Any]) -> Path:
    from ..machine import machine_fingerprint

    key = key_digest({
        "version": PROBE_VERSION, "machine": machine_fingerprint(dict(machine)), "model": model_key,
        "batch": "dynamic" if options.dynamic_batch else options.batch_size, "opset": options.opset,
        "exporter": options.exporter,
        "candidates": [asdict(c) for c in candidates],
    })
    return Path(options.cache_dir or default_cache_dir()) / "probe" / f"cpu-{key[:24]}.json"


def probe_cpu(options: SegmenterOptions, *, model: Any = None, tokenizer: Any = None,
              onnx_path: Optional[str | os.PathLike[str]] = None, refresh: bool = False) -> ProbeOutcome:
    """The cached choice, or a probe now (``refresh`` probes again and rewrites the cache).

    ``model`` and ``tokenizer`` (a checkpoint in memory: torch and the onnxruntime export are
    candidates), or ``onnx_path`` (onnxruntime only). fp32 only: other precisions on the CPU run
    under torch (``choose_backend``).
    """
    from ..machine import machine_info
    from .backends.onnxruntime_backend import available_providers
    from .cache import model_sha256
    from .export import sha256_onnx

    if (model is None) == (onnx_path is None):
        raise ValueError("probe_cpu needs a model and tokenizer, or an onnx_path")
    machine = machine_info()
    candidates = cpu_candidates(model is not None, available_providers(), thread_options(options))
    if model is not None:
        model_key = options.model_sha256 or model_sha256(model)
    else:
        assert onnx_path is not None  # checked above
        model_key = sha256_onnx(onnx_path)
    path = probe_path(options, model_key, candidates, machine)
    if not refresh and path.is_file():
        try:
            result = ProbeResult.from_dict(json.loads(path.read_text()))
            result.cached_at = str(path)
            log.info("backend='auto': %s (probed %s; %s)", result.choice.name, result.date, path)
            return ProbeOutcome(result, None)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the unreadable probe cache %s (%s)", path, e)
    backends, notes = _build_candidates(candidates, options, model, tokenizer, onnx_path, model_key)
    if not backends:
        raise RuntimeError("backend='auto': no CPU candidate could be built: " + "; ".join(notes))
    some = next(iter(backends.values()))
    inputs = _probe_inputs(some, tokenizer if tokenizer is not None else _onnx_tokenizer(onnx_path))
    log.info("backend='auto': probing %d CPU configurations (%s)", len(backends), ", ".join(c.name for c in backends))
    started = time.perf_counter()
    samples = measure(backends, inputs)
    log.info("backend='auto': probe measured in %.1f s", time.perf_counter() - started)
    timings = {c: Timing.of(s) for c, s in samples.items()}
    choice, reason = select(timings)
    machine["load_average_1min_after"] = machine_info()["load_average_1min"]
    result = ProbeResult(choice, reason, timings, machine, time.strftime("%Y-%m-%d %H:%M:%S %Z"), notes, str(path))
    atomic_write_bytes(path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    log.info("backend='auto' chose %s", reason)
    return ProbeOutcome(result, backends[choice])


def _onnx_tokenizer(onnx_path: Any) -> Any:
    from .export import read_onnx_info

    return read_onnx_info(onnx_path).tokenizer


def _probe_inputs(backend: InferenceBackend, tokenizer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic batch at the graph's size: images (B,3,S,S), a 9-word sentence (B,T)."""
    batch = backend.batch_size or 1
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, backend.image_size, backend.image_size)).astype(np.float32)
    ids, mask = tokenizer([PROBE_TEXT] * batch, backend.max_tokens)
    return images, ids, mask


def _build_candidates(candidates: Sequence[Candidate], options: SegmenterOptions, model: Any, tokenizer: Any,
                      onnx_path: Any, model_key: str) -> tuple[dict[Candidate, InferenceBackend], list[str]]:
    """The candidates that can be built here; a note for each one that cannot (an export refused
    for a large model, a provider that fails to start)."""
    from .segmenter import _export, _onnxruntime_backend

    backends: dict[Candidate, InferenceBackend] = {}
    notes: list[str] = []
    graph: Optional[Path] = Path(onnx_path) if onnx_path is not None else None
    if model is not None and any(c.backend == "onnxruntime" for c in candidates):
        try:
            graph = _export(model, tokenizer, options.replace(model_sha256=options.model_sha256 or model_key))
        except Exception as e:  # a refused or failed export leaves torch as the candidate
            notes.append(f"onnxruntime left out: {str(e).splitlines()[0]}")
            graph = None
    for cand in candidates:
        try:
            if cand.backend == "torch":
                from .backends.torch_backend import TorchBackend

                backends[cand] = TorchBackend(model, device="cpu", precision="fp32")
            elif graph is not None:
                opts = options.replace(cpu_provider=cand.cpu_provider, num_threads=cand.num_threads)
                backends[cand] = _onnxruntime_backend(graph, "cpu", "fp32", opts)
        except Exception as e:
            notes.append(f"{cand.name} left out: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return backends, notes
