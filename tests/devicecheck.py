"""Device bugs caught on a CPU-only machine: a virtual CUDA device, placement hooks and checked collectives.

CI has no GPU, so a tensor created on the CPU by default and combined with GPU tensors, a module left on
the CPU, or a collective handed a CPU tensor under NCCL would only fail on the first GPU run. Inside
:func:`virtual_cuda` every tensor placed on ``cuda`` is an :class:`OnDevice` wrapper that computes on the
CPU but reports ``cuda:0``, and every operation that mixes devices raises as CUDA would ("Expected all
tensors to be on the same device"). Unlike ``FakeTensorMode`` the numbers are real, so ``.item()``, a
backward pass, an optimiser step and a whole recipe run work. :func:`placement_hooks` names the module
whose input sat on the wrong device; :func:`checked_collectives` asserts that every ``torch.distributed``
collective gets tensors on its backend's device (NCCL: CUDA, gloo: CPU), in a real process group or in
a simulated one-process world of any size.

What this cannot catch: anything CUDA-specific below the dispatcher (kernels, cuDNN, AMP autocast, which
stays off because the wrapped tensors are CPU tensors underneath, GradScaler's CUDA kernels, NCCL itself,
DDP's own bucketed all-reduces, streams and memory); those need ``pytest --device cuda`` on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CPU = torch.device("cpu")
VIRTUAL = torch.device("cuda", 0)
#: Operations that legitimately take tensors on different devices (cross-device copies, CPU indices).
MIXING = {"copy_", "_to_copy", "_copy_from", "_copy_from_and_resize", "index", "index_put_", "_index_put_impl_",
          "lift_fresh", "lift_fresh_copy", "detach", "_has_compatible_shallow_copy_type"}


class OnDevice(torch.Tensor):
    """A CPU tensor (``elem``) that reports living on a virtual device; only :class:`_Placement` computes on it."""

    elem: torch.Tensor
    virtual: torch.device
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor, virtual: torch.device) -> OnDevice:
        out = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                  storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                  layout=elem.layout, device=elem.device,
                                                  requires_grad=elem.requires_grad)
        out.elem, out.virtual = elem, virtual
        return out

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.virtual

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return self.virtual.type == "cuda"

    def tolist(self) -> Any:  # CUDA tensors convert to lists (the wrapper has no storage of its own)
        return self.elem.tolist()

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"can't convert {self.virtual} device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    def __repr__(self) -> str:  # type: ignore[override]
        return f"OnDevice({self.elem!r}, device='{self.virtual}')"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise RuntimeError(f"a tensor on the virtual {VIRTUAL} escaped virtual_cuda() ({func})")


def device_of(tensor: torch.Tensor) -> torch.device:
    return tensor.virtual if isinstance(tensor, OnDevice) else tensor.device


def _normalise(device: Any) -> torch.device:
    device = device if isinstance(device, torch.device) else torch.device(device)
    return VIRTUAL if device.type == "cuda" else device


class _Placement(TorchDispatchMode):
    """Runs every operation on the CPU while tracking, and checking, where each tensor claims to be."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        placed = {device_of(t) for t in tensors if t.dim() > 0 or isinstance(t, OnDevice)}
        if len(placed) > 1 and name not in MIXING:
            found = ", ".join(sorted(map(str, placed)))
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{found}! (virtual CUDA check in {func})")
        target = self._target(name, args, kwargs, placed)
        elems = {id(t.elem): t for t in tensors if isinstance(t, OnDevice)}
        run_args, run_kwargs = tree_map(lambda t: t.elem if isinstance(t, OnDevice) else t, (args, kwargs))
        if "device" in run_kwargs and run_kwargs["device"] is not None:
            run_kwargs["device"] = CPU
        out = func(*run_args, **run_kwargs)

        def wrap(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            if id(value) in elems:  # an in-place result: the caller's own tensor
                return elems[id(value)]
            return OnDevice(value, target) if target.type == "cuda" else value

        return tree_map(wrap, out)

    @staticmethod
    def _target(name: str, args: Any, kwargs: dict, placed: set[torch.device]) -> torch.device:
        if kwargs.get("device") is not None:
            return _normalise(kwargs["device"])
        if name in ("copy_", "index_put_", "_index_put_impl_", "index"):
            return device_of(args[0])
        if name in ("_to_copy",):
            return device_of(args[0])
        return next(iter(placed)) if len(placed) == 1 else CPU


def _indexed(value: Any) -> Any:
    if isinstance(value, str) and value == "cuda":
        return VIRTUAL
    if isinstance(value, torch.device) and value.type == "cuda" and value.index is None:
        return VIRTUAL
    return value


#: Factories that build their tensor below the dispatcher's Python modes: built on the host, then moved.
_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)


class _IndexedCuda(TorchFunctionMode):
    """``cuda`` without an index means "the current device", which PyTorch asks the (absent) driver for:
    name it ``cuda:0`` before any kernel sees it, and make ``.cuda()`` a ``.to(cuda:0)``."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.device:
            return func(*args, **kwargs)
        if func is torch.Tensor.cuda:
            return _move(args[0], VIRTUAL, None)
        if func is torch.Tensor.cpu:
            return _move(args[0], CPU, None)
        if func is torch.Tensor.to:
            return _tensor_to(*args, **kwargs)
        args, kwargs = tree_map(_indexed, (args, kwargs))
        if func in _FROM_DATA and kwargs.get("device") is not None:
            device = kwargs.pop("device")
            return func(*args, **kwargs).to(device)
        return func(*args, **kwargs)


def _tensor_to(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``Tensor.to`` as on a GPU: the same tensor when nothing changes, else a copy on the (virtual) device."""
    if args and isinstance(args[0], torch.Tensor):
        device, dtype = device_of(args[0]), args[0].dtype
    else:
        device, dtype, _, _ = torch._C._nn._parse_to(*tree_map(_indexed, args), **tree_map(_indexed, kwargs))
    return _move(tensor, _normalise(device) if device is not None else device_of(tensor), dtype,
                 bool(kwargs.get("copy", False)))


def _move(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None, copy: bool = False) -> torch.Tensor:
    dtype = dtype or tensor.dtype
    if device_of(tensor) == device and tensor.dtype == dtype and not copy:
        return tensor
    return torch.ops.aten._to_copy.default(tensor, dtype=dtype, device=device)


def _to_host(value: Any) -> Any:
    """What a GPU checkpoint pickles to, as CPU tensors (``torch.save`` cannot pickle the wrappers)."""
    if isinstance(value, OnDevice):
        return value.elem.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _to_host(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


@contextlib.contextmanager
def virtual_cuda() -> Iterator[torch.device]:
    """Within the block ``cuda`` is a virtual device: see the module docstring. Yields that device."""
    real_save = torch.save
    shallow = torch._has_compatible_shallow_copy_type
    with contextlib.ExitStack() as stack:
        # module.to() onto or off the virtual device makes new Parameters (a wrapper shallow-copied into a CPU
        # Parameter would lose its data); a move to where a parameter already is keeps it, as on a GPU
        def compatible(input: torch.Tensor, from_: torch.Tensor) -> bool:
            wrapped = isinstance(input, OnDevice) or isinstance(from_, OnDevice)
            return input is from_ or (not wrapped and shallow(input, from_))

        stack.enter_context(mock.patch("torch._has_compatible_shallow_copy_type", compatible))
        for name, value in (("is_available", lambda: True), ("device_count", lambda: 1),
                            ("current_device", lambda: 0), ("set_device", lambda _d: None),
                            ("get_rng_state_all", lambda: []), ("set_rng_state_all", lambda _s: None),
                            ("synchronize", lambda *_a: None), ("is_bf16_supported", lambda *_a: True),
                            ("_lazy_init", lambda: None), ("get_rng_state", lambda *_a: torch.empty(0, dtype=torch.uint8)),
                            ("set_rng_state", lambda *_a: None), ("manual_seed", lambda _s: None),
                            ("manual_seed_all", lambda _s: None)):
            stack.enter_context(mock.patch(f"torch.cuda.{name}", value))
        # the optimisers' graph-capture check asks the accelerator API for a stream: no accelerator, no capture
        stack.enter_context(mock.patch("torch.accelerator.current_accelerator", lambda *_a, **_k: None))
        stack.enter_context(mock.patch("torch.save", lambda obj, *a, **k: real_save(_to_host(obj), *a, **k)))
        stack.enter_context(_IndexedCuda())
        stack.enter_context(_Placement())
        yield VIRTUAL


# ----------------------------------------------------------------------------- placement hooks


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def placement_hooks(*models: nn.Module) -> Iterator[list[str]]:
    """Every submodule with parameters asserts that each tensor input lives on its parameters' device.

    Yields the names of the modules that ran (a test can check that the hooks saw the computation)."""
    ran: list[str] = []
    handles = []

    def check(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            own = next(module.parameters(recurse=False), None)
            if own is None:
                return
            where = device_of(own)
            for index, tensor in enumerate(_tensors((args, kwargs))):
                if tensor.dim() > 0 and device_of(tensor) != where:
                    raise AssertionError(f"module {name} ({type(module).__name__}) has its parameters on {where} but "
                                         f"got input {index} on {device_of(tensor)}")
            ran.append(name)

        return hook

    for model in models:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(check(name or type(model).__name__), with_kwargs=True))
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- collectives

#: The ``torch.distributed`` collectives the wrapper checks (each tensor argument, lists included).
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "all_to_all", "all_to_all_single")


def backend_device_type(backend: str) -> str:
    """Where a backend's collectives expect their tensors: NCCL on the GPU, gloo (and others) on the host."""
    return "cuda" if backend.lower() == "nccl" else "cpu"


def _simulate(name: str, world: int, args: tuple, kwargs: dict) -> None:
    """One process standing for ``world`` identical ones: a sum is ``world`` times the local value."""
    if name == "all_reduce":
        op = kwargs.get("op", args[1] if len(args) > 1 else dist.ReduceOp.SUM)
        if op == dist.ReduceOp.SUM:
            args[0].mul_(world)
    elif name == "all_gather":
        for out in args[0]:
            out.copy_(args[1])


@contextlib.contextmanager
def checked_collectives(simulate: tuple[str, int] | None = None) -> Iterator[list[tuple[str, str]]]:
    """Wrap the collectives so a tensor on the wrong device for the backend fails here, on any machine.

    ``simulate=("nccl", 2)`` also pretends this single process is one of two in an NCCL group (world size,
    backend and the collectives' results simulated), so a CPU-only test can drive NCCL code paths. Yields
    ``(collective, device)`` for every call seen."""
    seen: list[tuple[str, str]] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def backend() -> str:
        return simulate[0] if simulate else str(dist.get_backend())

    def wrapper(name: str) -> Callable[..., Any]:
        def collective(*args: Any, **kwargs: Any) -> Any:
            want = backend_device_type(backend())
            for tensor in _tensors((args, kwargs)):
                got = device_of(tensor)
                seen.append((name, str(got)))
                if got.type != want:
                    raise AssertionError(f"dist.{name} under {backend()} got a tensor on {got}; "
                                         f"{backend()} collectives need {want} tensors")
            if simulate:
                return _simulate(name, simulate[1], args, kwargs)
            return originals[name](*args, **kwargs)

        return collective

    with contextlib.ExitStack() as stack:
        for name in COLLECTIVES:
            stack.enter_context(mock.patch.object(dist, name, wrapper(name)))
        if simulate:
            stack.enter_context(mock.patch.object(dist, "is_initialized", lambda: True))
            stack.enter_context(mock.patch.object(dist, "get_world_size", lambda *_a, **_k: simulate[1]))
            stack.enter_context(mock.patch.object(dist, "get_rank", lambda *_a, **_k: 0))
            stack.enter_context(mock.patch.object(dist, "get_backend", lambda *_a, **_k: simulate[0]))
        yield seen

