"""What a bag replay measured, and the dict ``bag-eval --json`` writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class ReplayReport:
    """Counts, latencies and metrics of one replay; ``to_dict`` is what ``bag-eval --json`` writes."""

    bag: str
    frames: int = 0
    processed: int = 0
    with_ground_truth: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    metrics: Optional[dict[str, Any]] = None  # RISMetrics.compute(); None without ground truth
    stats: dict[str, Any] = field(default_factory=dict)  # PipelineStats.snapshot()
    out_bag: Optional[str] = None
    overlays: Optional[str] = None
    warnings: list[str] = field(default_factory=list)  # what of a damaged bag could not be read
    # 3D error (metres) of each found target with a ground-truth point; NaN where depth gave no point
    point_errors_m: list[float] = field(default_factory=list)

    def point_summary(self) -> dict[str, Any]:
        """The target point's error over found targets: median, p90 (of those with a point) and the
        shares within 2 and 5 cm (of all found targets: no point counts as a miss)."""
        if not self.point_errors_m:
            return {}
        errors = np.asarray(self.point_errors_m, dtype=np.float64)
        have = errors[np.isfinite(errors)]
        return {
            "point_n": int(errors.size), "point_estimated": int(have.size),
            "point_error_m_median": float(np.median(have)) if have.size else None,
            "point_error_m_p90": float(np.percentile(have, 90)) if have.size else None,
            "point_within_2cm": float(100.0 * (have <= 0.02).sum() / errors.size),
            "point_within_5cm": float(100.0 * (have <= 0.05).sum() / errors.size),
        }

    def latency_summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        if lat.size == 0:
            return {}
        return {
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p90": float(np.percentile(lat, 90)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "latency_ms_max": float(lat.max()),
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics or {})
        out.update(self.latency_summary())
        out.update(self.point_summary())
        out.update({
            "bag": self.bag, "frames": self.frames, "processed": self.processed,
            "with_ground_truth": self.with_ground_truth,
            "dropped": self.stats.get("dropped", {}), "rejected": self.stats.get("rejected", {}),
            "errors": self.stats.get("errors", 0), "out_bag": self.out_bag, "overlays": self.overlays,
            "warnings": list(self.warnings),
        })
        return out
