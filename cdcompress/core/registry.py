"""Named plug-ins: a registry per axis (architecture, importance, objective, teacher source, data source).

A recipe never evaluates code: it names a plug-in as ``name`` or ``{name: ..., kwargs: {...}}``, and
the name is looked up here. User code joins a registry with a decorator when the *user* imports it
(``--import mypkg.models`` on the CLI, or an ordinary ``import`` in Python), so a file on disk can
select among registered factories but can never make cdcompress import or call anything else.
An explicit ``import: package.module:callable`` in a recipe is the one other door, and it is opened
by the recipe author, not by a model file.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .errors import CDCompressError

T = TypeVar("T")


class RegistryError(CDCompressError):
    """A plug-in name that is not registered, or a plug-in reference that is malformed."""


class Registry(Generic[T]):
    """``name -> factory`` for one plug-in axis, filled by the :meth:`register` decorator.

    ``builtins`` names the modules that register this axis's built-in entries; they are imported on
    the first lookup, so a package can load lazily and still find them, wherever the lookup happens.
    ``provides`` lists the names those modules register, so :meth:`check` can accept a built-in name
    without importing torch (a recipe validates in a fraction of a second); a test holds the list true.
    """

    def __init__(self, axis: str, builtins: tuple[str, ...] = (), provides: tuple[str, ...] = ()) -> None:
        self.axis = axis
        self._builtins = builtins
        self.provides = frozenset(provides)
        self._entries_: dict[str, T] = {}

    @property
    def _entries(self) -> dict[str, T]:
        while self._builtins:  # each provider registers into _entries_ as it is imported
            module, self._builtins = self._builtins[0], self._builtins[1:]
            importlib.import_module(module)
        return self._entries_

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries_ and not _same_definition(self._entries_[name], obj):
                raise RegistryError(f"{self.axis} {name!r} is already registered; pick another name")
            self._entries_[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"unknown {self.axis} {name!r}{hint}; registered: {', '.join(sorted(self._entries)) or 'none'}"
                                f" (user plug-ins register with @{self.axis.upper().replace(' ', '_')}S.register and are"
                                " imported with --import MODULE)")
        return self._entries[name]

    def check(self, name: str) -> None:
        """Raise :class:`RegistryError` unless ``name`` is registered; a built-in name answers without imports."""
        if name not in self.provides:
            self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)


def _same_definition(old: object, new: object) -> bool:
    """The same object, or the same definition re-executed (a reloaded module): replacing it is safe."""
    def where(obj: object) -> tuple[object, object]:
        return getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)

    return old is new or (where(old) == where(new) and where(old)[1] is not None)


def split_reference(ref: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{name: ..., kwargs: {...}}`` -> ``(name, kwargs)``."""
    if isinstance(ref, str):
        return ref, {}
    if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
        unknown = set(ref) - {"name", "kwargs"}
        if unknown:
            raise RegistryError(f"plug-in reference {dict(ref)!r}: unknown key(s) {sorted(unknown)}; use name and kwargs")
        kwargs = ref.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise RegistryError(f"plug-in reference {dict(ref)!r}: kwargs must be a mapping")
        return ref["name"], dict(kwargs)
    raise RegistryError(f"plug-in reference {ref!r}: expected a name or {{name: ..., kwargs: {{...}}}}")


def build(registry: Registry[Callable[..., Any]], ref: str | Mapping[str, Any], **extra: Any) -> Any:
    """Look ``ref`` up in ``registry`` and call it with its kwargs (and ``extra``)."""
    name, kwargs = split_reference(ref)
    factory = registry.get(name)
    _check_arguments(factory, {**kwargs, **extra}, f"{registry.axis} {name!r}")
    return factory(**kwargs, **extra)


def accepted(factory: Callable[..., Any], candidates: Mapping[str, Any]) -> dict[str, Any]:
    """The ``candidates`` that ``factory`` names as parameters: standard context (a level, a seed, a recipe's
    lambdas) is offered to every plug-in and taken by those that want it."""
    params = inspect.signature(factory).parameters
    return {k: v for k, v in candidates.items() if k in params}


def _check_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Unknown keyword arguments become one line naming the accepted ones, not a TypeError mid-run."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise RegistryError(f"{what} takes no option(s) {unknown}; it accepts {accepted or 'none'}")


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


ARCHITECTURE_TAG = "_cdcompress_architecture"


class ArchitectureRegistry(Registry[Callable[..., Any]]):
    """Factories of teacher-shaped modules. A module built through a registered factory remembers
    ``{name, kwargs}``, so a saved student can name the factory that rebuilds it (the name is looked up
    here on load; nothing named in a file is ever imported)."""

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        add = super().register

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
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

            add(name)(tagged)
            return factory if isinstance(factory, type) else tagged

        return decorate


ARCHITECTURES = ArchitectureRegistry("architecture", builtins=("cdcompress.models.unet", "cdcompress.models.resae"),
                                     provides=("unet-encoder", "unet-decoder", "resae-encoder", "resae-decoder"))
"""``name -> factory(**kwargs) -> nn.Module`` of the *teacher's* shapes; a model file may name one."""

# The other axes live here too, not beside their built-ins, so validating a recipe that names them needs no torch.
IMPORTANCES: Registry[Callable[..., Any]] = Registry("importance", builtins=("cdcompress.surgery.slim",),
                                                     provides=("l1", "l2", "taylor", "random"))
"""``name -> factory(**kwargs) -> importance(group) -> scores``; a torch-pruning ``Importance`` fits as is."""
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective", builtins=("cdcompress.distill.objectives",),
                                                    provides=("reconstruction", "style-transfer", "feature-kd"))
"""``name -> factory(**kwargs) -> objective``; ``feature-kd`` gives ``None`` (embedding loss only)."""
TEACHER_SOURCES: Registry[Callable[..., Any]] = Registry(
    "teacher source", builtins=("cdcompress.distill.teachers",),
    provides=("model", "cd-release", "wct-pytorch", "wct-vgg19", "torchvision", "builtin", "import"))
"""``name -> loader(path, level, spec) -> Teacher``: where a recipe's teacher comes from."""
DATA_SOURCES: Registry[Callable[..., Any]] = Registry(
    "data source", builtins=("cdcompress.data.batches", "cdcompress.tasks.denoise"), provides=("images", "noisy-pairs"))
"""``name -> factory(paths, batch_size, resize, crop, seed, **kwargs) -> training data`` for recipes:
a sampler, an iterable of batches or a factory of one (see :func:`cdcompress.data.batches.batches`)."""
