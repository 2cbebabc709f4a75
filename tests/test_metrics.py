"""RISMetrics on hand-made masks: oIoU/mIoU/prec@X/histogram, empty unions, batches, groups, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coupalign_core.metrics import RISMetrics


def mask(h: int, w: int, on: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    for r, c in on:
        m[r, c] = True
    return m


def row_mask(n_on: int, width: int = 10) -> np.ndarray:
    """(1, width) mask with the first n_on pixels set."""
    m = np.zeros((1, width), dtype=bool)
    m[0, :n_on] = True
    return m


def test_single_pair_by_hand():
    pred = mask(2, 2, [(0, 0), (0, 1)])
    gt = mask(2, 2, [(0, 1), (1, 1)])
    m = RISMetrics()
    m.update(pred, gt)  # I = 1, U = 3
    r = m.compute()
    assert r["oIoU"] == pytest.approx(100 / 3)
    assert r["mIoU"] == pytest.approx(100 / 3)
    assert r["n"] == 1
    assert all(r[f"prec@0.{t}"] == 0.0 for t in range(5, 10))
    assert r["iou_hist"] == [0, 0, 0, 1, 0]  # 0.333 in [0.3, 0.4)


def test_oiou_differs_from_miou_and_precision_thresholds_are_inclusive():
    m = RISMetrics()
    gt = row_mask(10)
    m.update(row_mask(5), gt)  # IoU exactly 0.5 -> counts for prec@0.5
    m.update(row_mask(7), gt)  # exactly 0.7
    m.update(row_mask(9), gt)  # exactly 0.9
    big_gt = np.ones((10, 10), dtype=bool)
    big_pred = np.zeros((10, 10), dtype=bool)
    big_pred[:1] = True  # I = 10, U = 100: IoU 0.1 -> hist bin [0.1, 0.2)
    m2 = RISMetrics()
    for p, g in ((row_mask(5), gt), (row_mask(7), gt), (row_mask(9), gt)):
        m2.update(p, g)
    r = m.compute()
    assert r["oIoU"] == pytest.approx(100 * 21 / 30)
    assert r["mIoU"] == pytest.approx(100 * 2.1 / 3)
    assert r["prec@0.5"] == pytest.approx(100.0)
    assert r["prec@0.6"] == pytest.approx(200 / 3)
    assert r["prec@0.7"] == pytest.approx(200 / 3)
    assert r["prec@0.8"] == pytest.approx(100 / 3)
    assert r["prec@0.9"] == pytest.approx(100 / 3)
    assert r["iou_hist"] == [0, 0, 0, 0, 0]
    m.update(big_pred, big_gt)
    r = m.compute()
    assert r["oIoU"] == pytest.approx(100 * 31 / 130)  # dominated by the big object
    assert r["mIoU"] == pytest.approx(100 * 2.2 / 4)
    assert r["iou_hist"] == [0, 1, 0, 0, 0]
    assert r["n"] == 4


def test_empty_union_counts_as_zero_iou():
    m = RISMetrics()
    empty = np.zeros((4, 4), dtype=bool)
    m.update(empty, empty)  # U = 0 -> IoU 0, adds nothing to oIoU
    r = m.compute()
    assert r == {"oIoU": 0.0, "mIoU": 0.0, "prec@0.5": 0.0, "prec@0.6": 0.0, "prec@0.7": 0.0,
                 "prec@0.8": 0.0, "prec@0.9": 0.0, "n": 1, "iou_hist": [1, 0, 0, 0, 0]}
    full = np.ones((4, 4), dtype=bool)
    m.update(full, full)
    r = m.compute()
    assert r["oIoU"] == pytest.approx(100.0)  # Σ I / Σ U = 16 / 16
    assert r["mIoU"] == pytest.approx(50.0)
    assert r["prec@0.9"] == pytest.approx(50.0)


def test_no_samples_gives_zeros():
    r = RISMetrics().compute()
    assert r["n"] == 0 and r["oIoU"] == 0.0 and r["mIoU"] == 0.0 and r["iou_hist"] == [0] * 5


def test_batch_equals_singles_and_tensors_equal_arrays():
    rng = np.random.default_rng(0)
    preds = rng.random((6, 9, 7)) > 0.5
    gts = rng.random((6, 9, 7)) > 0.6
    gts[2] = False
    preds[2] = False  # one empty union in the batch
    batch, singles, tensors = RISMetrics(), RISMetrics(), RISMetrics()
    batch.update(preds, gts)
    for p, g in zip(preds, gts):
        singles.update(p, g)
    tensors.update(torch.from_numpy(preds), torch.from_numpy(gts))
    assert batch.compute() == singles.compute() == tensors.compute()
    assert batch.compute()["n"] == 6
    expected = [(p & g).sum() / (p | g).sum() if (p | g).any() else 0.0 for p, g in zip(preds, gts)]
    np.testing.assert_allclose(batch.ious(), expected)


def test_shape_and_dtype_errors():
    m = RISMetrics()
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        m.update(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(4, 4\)"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        m.update(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="boolean"):
        m.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        m.update(np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 4), bool))
    with pytest.raises(ValueError, match="3 group labels for a batch of 2"):
        m.update(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool), group=["a", "b", "c"])
    assert len(m) == 0  # failed updates add nothing


def test_groups_breakdown_and_combined_group():
    m = RISMetrics()
    gt = row_mask(10)
    m.update(np.stack([row_mask(10), row_mask(5)]), np.stack([gt, gt]), group=["attribute", "ordinal"])
    m.update(row_mask(2), gt, group="relation")
    m.update(row_mask(8), gt)  # unlabelled: only in the overall numbers
    assert m.groups() == ["attribute", "ordinal", "relation"]
    assert m.compute()["n"] == 4
    assert m.compute(group="attribute")["oIoU"] == pytest.approx(100.0)
    combined = m.compute(group={"ordinal", "relation"})
    assert combined["n"] == 2
    assert combined["oIoU"] == pytest.approx(100 * 7 / 20)
    assert combined["iou_hist"] == [0, 0, 1, 0, 0]
    assert set(m.breakdown()) == {"attribute", "ordinal", "relation"}
    assert m.compute(group="missing")["n"] == 0


def test_merging_two_halves_equals_one_whole():
    rng = np.random.default_rng(1)
    preds = rng.random((20, 8, 8)) > 0.4
    gts = rng.random((20, 8, 8)) > 0.5
    kinds = [["attribute", "ordinal", "relation", None][i % 4] for i in range(20)]
    whole, first, second = RISMetrics(), RISMetrics(), RISMetrics()
    whole.update(preds, gts, group=kinds)
    first.update(preds[:7], gts[:7], group=kinds[:7])
    second.update(preds[7:], gts[7:], group=kinds[7:])
    # through a JSON round trip, as a rank or a worker would send its state
    restored = RISMetrics.from_state(json.loads(json.dumps(second.state())))
    merged = first.merge(restored)
    assert merged.compute() == whole.compute()
    assert merged.breakdown() == whole.breakdown()
    # mIoU is not recoverable from two halves' summaries: the per-sample state is what makes it exact
    assert merged.compute()["mIoU"] == pytest.approx(100 * whole.ious().mean())


def test_all_reduce_without_process_group_is_a_no_op():
    m = RISMetrics()
    m.update(row_mask(5), row_mask(10))
    assert m.all_reduce() is m and m.compute()["n"] == 1


def _all_reduce_worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = RISMetrics()
        gt = row_mask(10)
        for n_on in range(rank, 10, world):  # rank 0: 0,2,4,6,8; rank 1: 1,3,5,7,9
            m.update(row_mask(n_on), gt, group="even" if n_on % 2 == 0 else "odd")
        results[rank] = m.all_reduce().compute()
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_gloo_processes(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    mp.start_processes(_all_reduce_worker, args=(2, str(tmp_path / "rendezvous"), results), nprocs=2,
                       join=True, start_method="spawn")
    whole = RISMetrics()
    for n_on in range(10):
        whole.update(row_mask(n_on), row_mask(10))
    assert results[0] == results[1] == whole.compute()


def test_reset_forgets_every_sample():
    m = RISMetrics()
    m.update(np.ones((2, 4, 4), bool), np.ones((2, 4, 4), bool), group=["a", "b"])
    m.reset()
    assert len(m) == 0 and m.groups() == [] and m.compute()["n"] == 0
    m.update(np.zeros((3, 3), bool), np.ones((3, 3), bool))
    assert len(m) == 1 and m.compute()["oIoU"] == 0.0
