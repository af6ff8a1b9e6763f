"""Code the user names, and how cdcompress calls it: a recipe's ``import: package.module:callable``, the CLI's
``--import MODULE``, and the standard arguments a user's callable may take. The one door through which
cdcompress imports anything a user spelled out (never anything a model file says)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .errors import RegistryError


def accepted(factory: Callable[..., Any], candidates: Mapping[str, Any]) -> dict[str, Any]:
    """The ``candidates`` that ``factory`` names as parameters: standard context (a level, a seed, a recipe's
    lambdas) is offered to every plug-in and taken by those that want it."""
    params = inspect.signature(factory).parameters
    return {k: v for k, v in candidates.items() if k in params}


def import_callable(target: str) -> Callable[..., Any]:
    """``package.module:callable`` named explicitly by the user (a recipe's ``import:``, never a model file)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"import {target!r}: expected package.module:callable")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"import {target!r} failed ({exc}); check the module is installed and the name exists") from None
    if not callable(obj):
        raise RegistryError(f"import {target!r}: {type(obj).__name__} is not callable")
    return obj


def import_modules(names: list[str] | tuple[str, ...]) -> None:
    """Import user modules named on the command line (``--import``) so their plug-ins register."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise RegistryError(f"--import {name}: {exc}; check the module name and that it is on PYTHONPATH") from None
