"""The CPU probe's rule and measurement, with given timings (no model, no real clock)."""

from __future__ import annotations

import numpy as np
import pytest

from coupalign_core.inference.backends.base import BackendOutput, InferenceBackend
from coupalign_core.inference.options import SegmenterOptions
from coupalign_core.inference.probe import (
    Candidate,
    ProbeResult,
    Timing,
    cpu_candidates,
    measure,
    select,
    thread_options,
)

TORCH1, TORCH2 = Candidate("torch", 1), Candidate("torch", 2)
ORT1, ORT2 = Candidate("onnxruntime", 1, "cpu"), Candidate("onnxruntime", 2, "cpu")
OV1 = Candidate("onnxruntime", 1, "openvino")


def test_the_lowest_p90_of_the_steady_candidates_wins():
    # torch on two threads has the best median but collapses now and then (a busy CPU): not chosen
    timings = {TORCH2: Timing(8.0, 60.0, 10), ORT1: Timing(11.0, 12.0, 10), OV1: Timing(10.0, 13.0, 10)}
    choice, why = select(timings)
    assert choice == ORT1
    assert "lowest p90 (12.0 ms" in why and "unsteady, left out: torch eager, 2 threads" in why


def test_candidates_dropped_during_the_measurement_do_not_compete():
    # torch on two threads was dropped after 3 runs (hopeless): its 3 lucky runs do not count
    assert select({TORCH2: Timing(30.0, 31.0, 3), ORT1: Timing(6.0, 8.5, 20)})[0] == ORT1


def test_more_threads_must_pay_clearly():
    assert select({ORT1: Timing(20.0, 22.0, 10), ORT2: Timing(17.0, 19.0, 10)})[0] == ORT1
    choice, why = select({ORT1: Timing(20.0, 22.0, 10), ORT2: Timing(17.0, 19.0, 10)})
    assert "was not 1.25x faster at p90" in why
    assert select({ORT1: Timing(20.0, 22.0, 10), ORT2: Timing(11.0, 12.0, 10)})[0] == ORT2


def test_without_a_steady_candidate_the_lowest_p90_still_wins():
    choice, why = select({TORCH1: Timing(10.0, 40.0, 10), ORT1: Timing(12.0, 30.0, 10)})
    assert choice == ORT1 and "no candidate was steady" in why
    with pytest.raises(ValueError):
        select({})


class FakeBackend(InferenceBackend):
    """Advances a fake clock by its cost per call."""

    name = "fake"
    device = "cpu"
    precision = "fp32"
    image_size = 8
    max_tokens = 4

    def __init__(self, clock: list[float], cost_ms: float):
        self.clock, self.cost_ms, self.calls = clock, cost_ms, 0

    def __call__(self, images, input_ids, attention_mask) -> BackendOutput:
        self.calls += 1
        self.clock[0] += self.cost_ms / 1e3
        return BackendOutput(np.zeros((1, 1, 8, 8), np.float32), None)


def test_measure_drops_hopeless_candidates_and_keeps_to_its_budget():
    now = [0.0]
    fast, slow = FakeBackend(now, 10.0), FakeBackend(now, 500.0)
    inputs = (np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))
    samples = measure({ORT1: fast, ORT2: slow}, inputs, rounds=10, warmup=1, budget_s=15.0, clock=lambda: now[0])
    assert len(samples[ORT1]) == 10 and samples[ORT1][0] == pytest.approx(10.0)
    assert len(samples[ORT2]) == 3 and slow.calls == 4  # 1 warm-up + 3 timed, then dropped
    now[0] = 0.0
    samples = measure({ORT1: FakeBackend(now, 6000.0)}, inputs, rounds=10, warmup=0, budget_s=15.0,
                      clock=lambda: now[0])
    assert len(samples[ORT1]) == 3  # 18 s after 3 rounds: over the budget


def test_candidates_and_threads():
    assert cpu_candidates(True, ["OpenVINOExecutionProvider", "CPUExecutionProvider"], (1, 2)) == [
        TORCH1, TORCH2, ORT1, ORT2, OV1, Candidate("onnxruntime", 2, "openvino")]
    assert cpu_candidates(False, ["CPUExecutionProvider"], (1,)) == [ORT1]
    assert thread_options(SegmenterOptions(num_threads=3)) == (3,)
    assert thread_options(SegmenterOptions())[0] == 1


def test_probe_result_round_trips_through_json():
    result = ProbeResult(ORT1, "why", {ORT1: Timing(1.0, 1.2, 10), TORCH1: Timing(2.0, 2.1, 10)}, {"cpu": "x"},
                         "today", ["openvino left out"])
    again = ProbeResult.from_dict(result.to_dict())
    assert again.choice == ORT1 and again.timings == result.timings and again.notes == result.notes
    assert "| onnxruntime cpu, 1 thread | 1.00 | 1.20 | 1.20 | 10 | **chosen** |" in again.table()
