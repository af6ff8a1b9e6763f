"""A module remembers the registered factory that built it: ``{name, kwargs}``, so a saved student can name the
factory that rebuilds its teacher (the name is looked up on load; nothing named in a file is ever imported).

Built-in architectures tag themselves with :func:`recorded` without importing the registry that lists them;
user factories registered with ``@ARCHITECTURES.register`` are tagged the same way."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

ARCHITECTURE_TAG = "_cdcompress_architecture"


def recorded(name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """``factory`` whose products carry ``{name, kwargs}`` (kwargs ``None`` when not JSON-portable)."""
    if getattr(factory, "_cdcompress_records", None) == name:
        return factory

    @functools.wraps(factory)
    def tagged(*args: Any, **kwargs: Any) -> Any:
        module = factory(*args, **kwargs)
        try:
            json.dumps(kwargs)
            portable = not args
        except (TypeError, ValueError):
            portable = False
        setattr(module, ARCHITECTURE_TAG, {"name": name, "kwargs": kwargs if portable else None})
        return module

    tagged._cdcompress_records = name  # type: ignore[attr-defined]
    return tagged
