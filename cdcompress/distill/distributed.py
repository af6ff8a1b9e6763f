"""Data-parallel training across processes and nodes (torchrun): gloo on CPU, NCCL on GPU.

The recipe's batch is the *global* batch: each of N processes computes ``batch / N`` samples of
the same deterministic step (see :meth:`cdcompress.data.batches.CropSampler.shard`). The trained modules
of a stage run under :class:`~torch.nn.parallel.DistributedDataParallel` (bucketed gradient
all-reduce overlapping the backward pass); BatchNorm layers can be synchronised so their batch
statistics cover the global batch, as in one process. Only rank 0 writes checkpoints, logs,
samples and reports; a resumed or restarted job reads rank 0's checkpoint and hands it to every
process, so nodes need not share a file system for checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes (no-op for a single process)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    # Keys of a restarted worker group must not meet those its killed predecessor left in torchrun's store: gloo
    # otherwise reads a dead peer's address and fails to connect (seen under load). One prefix per attempt.
    store, process_rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"cdcompress/attempt-{restart_count()}/", store),
                            rank=process_rank, world_size=world)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def restart_count() -> int:
    """How often torchrun has restarted this worker group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarted() -> bool:
    return restart_count() > 0


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


@contextmanager
def node_main_first() -> Iterator[None]:
    """The first process of each node runs the block first (node-local files, e.g. bundled photos)."""
    if local_rank() != 0:
        barrier()
    yield
    if local_rank() == 0:
        barrier()


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (e.g. the checkpoint only rank 0's node holds)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- DistributedDataParallel


class _TaskStep(nn.Module):
    """The trained modules of a stage as one module whose forward is the task's loss computation.

    DDP must see the forward that uses the parameters it reduces; the task calls its modules
    itself, so this shell registers them (without moving or copying them) and forwards to the task.
    """

    def __init__(self, losses: Any, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.trained = nn.ModuleDict(dict(modules))
        self._losses = losses

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self._losses(batch)


def data_parallel(losses: Any, modules: Mapping[str, nn.Module], device: torch.device) -> nn.Module:
    """``losses`` (batch -> loss terms) under DistributedDataParallel over the parameters of ``modules``."""
    from torch.nn.parallel import DistributedDataParallel

    step = _TaskStep(losses, modules)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids)


# ----------------------------------------------------------------------------- synchronised BatchNorm


class ProcessSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device and backend.

    PyTorch's :class:`~torch.nn.SyncBatchNorm` runs on GPUs only; this one reduces with autograd-aware
    all-reduces (gloo or NCCL), so its backward is the global batch's too. Used on CPU; in evaluation
    mode, or in a single process, it is a plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), local_count]))
        count, mean = sums[-1], sums[:-1] / sums[-1]
        centred = input - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count  # two passes, as a single process computes it
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var, alpha=factor)


def has_batchnorm(modules: Iterable[nn.Module]) -> bool:
    return any(isinstance(m, _BatchNorm) for module in modules for m in module.modules())


def _synced_copy(bn: _BatchNorm, device: torch.device) -> _BatchNorm:
    """A synchronised BatchNorm sharing ``bn``'s parameters and buffers (the optimiser keeps working on them)."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else ProcessSyncBatchNorm
    synced = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    synced.weight, synced.bias = bn.weight, bn.bias
    synced.running_mean, synced.running_var = bn.running_mean, bn.running_var
    synced.num_batches_tracked = bn.num_batches_tracked
    synced.train(bn.training)
    return synced


@contextmanager
def synced_batchnorm(modules: Iterable[nn.Module], device: torch.device) -> Iterator[int]:
    """Within the block every BatchNorm inside ``modules`` is synchronised over processes; yields how many.

    The layers are swapped in place for synchronised ones that share their tensors, and swapped
    back on exit, so saved and exported models hold plain BatchNorm layers with the trained values.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for module in modules:
        for parent in module.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm | ProcessSyncBatchNorm):
                    setattr(parent, name, _synced_copy(child, device))
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, original in reversed(swapped):
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)


def collective_device() -> torch.device:
    """Where this process's collectives take their tensors: its GPU under NCCL (which rejects host tensors), else
    the host (gloo)."""
    if dist.is_available() and dist.is_initialized() and str(dist.get_backend()).lower() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Average logged loss terms over processes so rank 0 reports the global batch's loss."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (tensor / world_size()).tolist(), strict=True))
