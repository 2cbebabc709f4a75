"""One process or many: process-group set-up from torchrun's environment, and a resumable sampler.

``coupalign train`` runs unchanged as a single process or under ``torchrun``; torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and :func:`init_distributed` reads them (NCCL
on GPUs, gloo on the CPU).

One machine, 8 GPUs (``--standalone`` picks a free port on localhost)::

    torchrun --standalone --nproc_per_node 8 \\
        -m coupalign_core.cli.main train --config training/configs/refcoco_paper.yaml --resume

Two machines with 8 GPUs each: run the same line on both, naming one reachable host:port as the
rendezvous endpoint (any free port on node 0; the id is any string shared by the two)::

    torchrun --nnodes 2 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint node0.example:29400 --rdzv_id coupalign-refcoco \\
        -m coupalign_core.cli.main train --config training/configs/refcoco_paper.yaml --resume

CPU processes on one machine (gloo; what the tests use)::

    torchrun --standalone --nproc_per_node 2 -m coupalign_core.cli.main train --config ...

``--resume`` continues from ``<output_dir>/last.pt`` when it exists and starts fresh otherwise, so
the same line also serves torchrun's ``--max-restarts`` (a restarted group picks up the last
checkpoint). The paper configs give ``global_batch_size: 16``; the per-process batch is derived from
it (16 / (world size x grad_accum)), so the paper's batch holds on 1, 2, 4, 8 or 16 processes.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group that torchrun describes in the environment, or run alone.

    ``device``: "auto" (a GPU when there is one), "cpu" or "cuda". Each process on a GPU machine
    uses GPU ``LOCAL_RANK``.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                "--nproc_per_node must not exceed the GPUs per machine"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size == 1:
        return DistContext(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=dev if use_cuda else None,
        )
    ctx = DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)
    log.info("rank %d/%d (local %d) on %s via %s", rank, world_size, local_rank, dev, backend)
    return ctx


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks, in place; a no-op for one process."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is True on at least one (all ranks must call it)."""
    if not ctx.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def ignore_stop_signals(worker_id: int) -> None:  # noqa: ARG001 - DataLoader worker_init_fn signature
    """``worker_init_fn`` for DataLoader workers: leave SIGTERM and SIGINT to the main process.

    torchrun stops a worker with ``killpg`` (the DataLoader's processes included) and a terminal's
    Ctrl-C reaches the whole process group; a loader worker that died of it would make the main
    process raise before it could write its checkpoint. The main process shuts its workers down
    itself when it exits, and they exit on their own when it dies.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step each rank still
    holds the statistics of its own last batch; evaluation and the final model must all use rank
    0's (the ones the checkpoint stores). On GPUs SyncBatchNorm keeps them equal anyway.
    """
    if not ctx.is_distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch.

    The order is a function of (seed, epoch) only (DistributedSampler's own rule), so a resumed run
    sees the same batches; ``set_start(n)`` skips this rank's first ``n`` samples of the epoch,
    i.e. the batches the interrupted run had already trained on. Works without a process group
    (``num_replicas=1, rank=0``).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, n: int) -> None:
        if not 0 <= n <= self.num_samples:
            raise ValueError(f"cannot skip {n} samples of an epoch of {self.num_samples}")
        self.start = n

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
