"""Latency benchmark of the Segmenter: per-stage and end-to-end percentiles, FPS, peak memory.

Numbers are what a caller of ``Segmenter.batch`` sees (the timings every result carries), so
pre- and post-processing at the camera's resolution are included. ``benchmark_interleaved``
runs several Segmenters round-robin in one process: on a shared or throttling machine, load
changes hit every backend alike, which keeps their ratio honest.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

# The machine record moved to coupalign_core.machine; importable here for callers of the old place.
from ..machine import machine_info as machine_info

STAGES = ("preprocess", "inference", "postprocess", "total")
DEFAULT_TEXT = "the red cup on the left of the table"


def parse_image_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size must look like WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {text!r}")
    return w, h


def synthetic_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic (H,W,3) uint8 RGB frame: smooth gradients plus noise, like a camera image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width, 1), yy / max(height, 1), 0.5 + 0.5 * np.sin(xx / 23 + yy / 31)], axis=-1)
    noisy = base * 200 + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
    }


# ---- memory --------------------------------------------------------------------------------------
def reset_peak_memory(device: str) -> None:
    """Start a fresh peak: CUDA allocator stats, or the process's RSS high-water mark (Linux)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # "5" resets VmHWM (Documentation/filesystems/proc.rst); harmless where unsupported
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: str) -> dict[str, float]:
    """GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS of the whole process."""
    out: dict[str, float] = {}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    out["peak_rss_mb"] = float(hwm)
    return out


# ---- runs ----------------------------------------------------------------------------------------
def _summarise(samples: dict[str, list[float]], batch_size: int, memory: dict[str, float],
               describe: str) -> dict[str, Any]:
    stages = {stage: percentiles(samples[stage]) for stage in STAGES}
    median_total = stages["total"]["median"]
    pre_post = [p + q for p, q in zip(samples["preprocess"], samples["postprocess"])]
    return {
        "backend": describe,
        "runs": len(samples["total"]),
        "batch_size": batch_size,
        "stages_ms": stages,
        "fps": 1000.0 * batch_size / median_total if median_total > 0 else float("inf"),
        "pre_post_share": float(np.median(np.asarray(pre_post) / np.asarray(samples["total"]))),
        "memory": memory,
    }


def benchmark_interleaved(
    segmenters: Mapping[str, Any],
    image: np.ndarray,
    text: str = DEFAULT_TEXT,
    runs: int = 50,
    warmup: int = 5,
    batch_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Round-robin benchmark of several Segmenters on the same frame; one result dict per name.

    Peak memory is the process's (all segmenters are resident together on the CPU); on the GPU
    ``max_memory_allocated`` is reset before each segmenter's run, so it is per backend.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    images, texts = [image] * batch_size, [text] * batch_size
    for seg in segmenters.values():
        for _ in range(warmup):
            seg.batch(images, texts)
    reset_peak_memory(device)
    samples: dict[str, dict[str, list[float]]] = {name: {stage: [] for stage in STAGES} for name in segmenters}
    gpu_peaks: dict[str, float] = {name: 0.0 for name in segmenters}
    for _ in tqdm(range(runs), desc="benchmark", unit="round", disable=not progress):
        for name, seg in segmenters.items():
            if device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            timings = seg.batch(images, texts)[0].timings
            for stage in STAGES:
                samples[name][stage].append(timings[stage])
            if device.startswith("cuda") and torch.cuda.is_available():
                gpu_peaks[name] = max(gpu_peaks[name], torch.cuda.max_memory_allocated() / 2**20)
    memory = peak_memory_mb("cpu")
    results = {}
    for name, seg in segmenters.items():
        mem = dict(memory)
        if device.startswith("cuda") and torch.cuda.is_available():
            mem["cuda_max_allocated_mb"] = gpu_peaks[name]
        results[name] = _summarise(samples[name], batch_size, mem, seg.describe())
    return results


def benchmark(segmenter, image: np.ndarray, text: str = DEFAULT_TEXT, runs: int = 50, warmup: int = 5,
              batch_size: int = 1, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """One Segmenter (see ``benchmark_interleaved``)."""
    return benchmark_interleaved({"run": segmenter}, image, text, runs, warmup, batch_size, device, progress)["run"]


# ---- reports -------------------------------------------------------------------------------------
def format_table(results: Mapping[str, Mapping[str, Any]], baseline: Optional[str] = None) -> str:
    """Markdown table: stage medians, end-to-end median/p90/p99, FPS, memory, speed-up."""
    base = results[baseline]["stages_ms"]["total"]["median"] if baseline is not None and baseline in results else None
    head = ("| backend | pre ms | infer ms | post ms | total median ms | p90 ms | p99 ms | FPS | pre+post % "
            "| peak mem MB |" + (" speed-up |" if base else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        s = r["stages_ms"]
        mem = r["memory"].get("cuda_max_allocated_mb", r["memory"].get("peak_rss_mb", float("nan")))
        row = (
            f"| {name} | {s['preprocess']['median']:.2f} | {s['inference']['median']:.2f} | "
            f"{s['postprocess']['median']:.2f} | {s['total']['median']:.2f} | {s['total']['p90']:.2f} | "
            f"{s['total']['p99']:.2f} | {r['fps']:.1f} | {100 * r['pre_post_share']:.1f} | {mem:.0f} |"
        )
        if base:
            row += f" {base / s['total']['median']:.2f}x |"
        lines.append(row)
    return "\n".join(lines)


def format_stages(result: Mapping[str, Any]) -> str:
    """Markdown table of one result: median, p90 and p99 of every stage, in ms."""
    lines = ["| stage | median ms | p90 ms | p99 ms |", "|---|---|---|---|"]
    for stage in STAGES:
        s = result["stages_ms"][stage]
        lines.append(f"| {stage} | {s['median']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
