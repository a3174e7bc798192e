"""torch.distributed behind helpers that fall back to one process (world size 1, rank 0).

Nothing here calls ``torch.distributed`` unless a process group is initialised, so the
single-process code path is unchanged. ``init_from_env`` starts the group under ``torchrun``
(which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Gradients through gathers: :func:`all_gather_with_grad` is lightly's / SimCLR's ``GatherLayer``:
forward all-gathers the shards, backward all-reduces (sums) the gradient of the gathered tensor
and returns this rank's slice. When every rank computes a loss from the gathered tensor, rank r
thus receives ``sum_s dL_s / dx_r``; DistributedDataParallel then averages parameter gradients.
"""

from __future__ import annotations

import datetime
import gc
import os
import pickle
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes; 1 without a process group."""
    return tdist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (the only rank that logs, checkpoints and writes artifacts)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are in the environment (torchrun, or by hand)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Args:
        backend: ``gloo`` (CPU tensors) or ``nccl`` (CUDA tensors); None = ``gloo``, the backend
            for the CPU training this project does (``$RECSYS_CL_DIST_BACKEND`` overrides).
        timeout_s: collective timeout.

    Returns:
        True when a group was initialised (or already was), False for a plain single process.

    Raises:
        RuntimeError: torch.distributed is not available in this torch build.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not tdist.is_available():
        raise RuntimeError("RANK/WORLD_SIZE are set but this torch build has no torch.distributed")
    backend = backend or os.environ.get("RECSYS_CL_DIST_BACKEND", "gloo")
    tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def destroy() -> None:
    """Destroy the default process group, after collecting garbage: DDP wrappers left in reference
    cycles would otherwise free their reducers (and gloo work) after the group is gone, at interpreter
    exit, which can abort the process ("terminate called without an active exception")."""
    if is_initialized():
        gc.collect()
        tdist.destroy_process_group()


def shard_sizes(n: int) -> list[int]:
    """Rows of each rank when ``n`` rows are split contiguously (sizes differ by at most one)."""
    base, extra = divmod(n, world_size())
    return [base + (1 if r < extra else 0) for r in range(world_size())]


def shard(n: int) -> slice:
    """This rank's contiguous slice of ``n`` rows (see :func:`shard_sizes`; may be empty)."""
    sizes = shard_sizes(n)
    start = sum(sizes[: rank()])
    return slice(start, start + sizes[rank()])


class _GatherLayer(torch.autograd.Function):
    """all_gather in forward; all_reduce(sum) of the gradient and this rank's slice in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:  # type: ignore[override]
        g = torch.stack(grads)  # (W, n, ...)
        tdist.all_reduce(g)
        return g[tdist.get_rank()]


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, keeping this rank's autograd graph.

    Shards may differ in length by any amount (padded to the longest for the collective, then
    trimmed). Identity without a process group.

    Args:
        x: this rank's shard. Shape: (n_r, ...).
        sizes: every rank's n_r when known (saves one collective).

    Returns:
        All shards in rank order. Shape: (sum_r n_r, ...).
    """
    if world_size() == 1:
        return x
    sizes = sizes if sizes is not None else all_gather_sizes(x.shape[0])
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))]) if x.shape[0] < longest else x
    parts = _GatherLayer.apply(padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


@torch.no_grad()
def all_gather_sizes(n: int) -> list[int]:
    if world_size() == 1:
        return [n]
    out = [torch.zeros((), dtype=torch.long) for _ in range(world_size())]
    tdist.all_gather(out, torch.tensor(n, dtype=torch.long))
    return [int(t) for t in out]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); identity without a process group."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def all_equal(obj: Any) -> bool:
    """True when ``obj`` pickles identically on every rank (a cheap consistency check)."""
    if world_size() == 1:
        return True
    mine = pickle.dumps(obj)
    everyone: list[Any] = [None] * world_size()
    tdist.all_gather_object(everyone, mine)
    return all(o == mine for o in everyone)
