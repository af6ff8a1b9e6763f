"""Data-parallel training across processes (torchrun): gloo on CPU, NCCL on GPU.

The recipe's batch is the *global* batch: each of N processes computes ``batch / N`` samples of
the same deterministic step (see :meth:`cdcompress.data.CropSampler.shard`) and gradients are
averaged after backward, so N processes reproduce the single-process run within float tolerance.
Only rank 0 writes checkpoints, logs, samples and reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes (no-op for a single process)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes shared files); the others follow once it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Mean of each gradient over processes (what DDP computes, without wrapping the task's modules)."""
    world = world_size()
    if world == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Average logged loss terms over processes so rank 0 reports the global batch's loss."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (tensor / world_size()).tolist(), strict=True))
