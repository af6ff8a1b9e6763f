"""Safe reading of external weight files (``.pth`` / ``.pt`` / ``.safetensors``).

External files are untrusted: torch pickles are opened with ``weights_only=True`` so a file that
would need to run code to unpickle is refused, never executed. Every failure becomes one
:class:`~cdcompress.core.errors.CheckpointError` line that names the file and what to do.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..core.errors import CheckpointError

#: Keys under which training scripts commonly nest the state dict.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain-tensor state dict from a torch or safetensors file, refusing pickled code.

    Accepts a bare state dict or one nested under a common key (``{"epoch": 20, "model": {...}}``,
    as in the paper's release).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path (and run `cdcompress convert` for released weights)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unsafe pickle"
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused, the file needs code to unpickle ({_unsafe_global(exc)}); "
                "re-save it as a plain state_dict of tensors or as .safetensors"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason}); re-download or re-save it") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: truncated or not a torch checkpoint ({_first_line(exc)}); re-download or re-save it"
        ) from None
    return _as_state_dict(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(exc)}); re-create it") from None


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _as_state_dict(obj[key], path)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"{path}: holds no state dict of tensors (found {type(obj).__name__}); save `model.state_dict()` instead"
    )


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatch."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"unexpected {_few(extra)}")
        raise CheckpointError(f"{source}: keys do not fit the architecture ({'; '.join(parts)}); check the model/level")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: shape mismatch at {key}: file has {tuple(got.shape)}, architecture needs "
                f"{tuple(want.shape)}; check the widths/level in the spec"
            )
    module.load_state_dict(dict(state), strict=True)


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _unsafe_global(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "global" in line:
            return line.strip().rstrip(".")[:160]
    return "unsupported global"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
