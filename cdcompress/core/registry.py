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
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .errors import RegistryError
from .provenance import recorded

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> factory`` for one plug-in axis, filled by the :meth:`register` decorator.

    Built-ins register like user plug-ins, when the module that defines them is imported; every module that looks
    an axis up imports the modules of its built-ins first (a plain import, in the layer order of the package), so
    this module imports none of them. ``provides`` lists the built-in names, so :meth:`check` accepts one without
    importing torch (a recipe validates in a fraction of a second); a test holds the list true.
    """

    def __init__(self, axis: str, provides: tuple[str, ...] = ()) -> None:
        self.axis = axis
        self.provides = frozenset(provides)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries and not _same_definition(self._entries[name], obj):
                raise RegistryError(f"{self.axis} {name!r} is already registered; pick another name")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = sorted({*self._entries, *self.provides})  # built-ins count before their module is imported
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"unknown {self.axis} {name!r}{hint}; registered: {', '.join(known) or 'none'}"
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


class ArchitectureRegistry(Registry[Callable[..., Any]]):
    """Factories of teacher-shaped modules, each :func:`~cdcompress.core.provenance.recorded`: a module built
    through one remembers ``{name, kwargs}``, so a saved student can name the factory that rebuilds it."""

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            tagged = self.add(name, factory)
            return factory if isinstance(factory, type) else tagged

        return decorate

    def add(self, name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``factory`` (a class too) under ``name``; returns the recording factory to call."""
        tagged = recorded(name, factory)
        super().register(name)(tagged)
        return tagged


# Every axis is declared here, not beside its built-ins, so validating a recipe that names them needs no torch.
ARCHITECTURES = ArchitectureRegistry("architecture", provides=("unet-encoder", "unet-decoder", "resae-encoder",
                                                               "resae-decoder"))
"""``name -> factory(**kwargs) -> nn.Module`` of the *teacher's* shapes; a model file may name one."""
IMPORTANCES: Registry[Callable[..., Any]] = Registry("importance", provides=("l1", "l2", "taylor", "random"))
"""``name -> factory(**kwargs) -> importance(group) -> scores``; a torch-pruning ``Importance`` fits as is."""
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective", provides=("reconstruction", "style-transfer", "feature-kd"))
"""``name -> factory(**kwargs) -> objective``; ``feature-kd`` gives ``None`` (embedding loss only)."""
TEACHER_SOURCES: Registry[Callable[..., Any]] = Registry(
    "teacher source", provides=("model", "cd-release", "wct-pytorch", "wct-vgg19", "torchvision", "builtin", "bundled", "import"))
"""``name -> loader(path, level, spec) -> Teacher``: where a recipe's teacher comes from."""
DATA_SOURCES: Registry[Callable[..., Any]] = Registry("data source", provides=("images", "noisy-pairs"))
"""``name -> factory(paths, batch_size, resize, crop, seed, **kwargs) -> training data`` for recipes:
a sampler, an iterable of batches or a factory of one (see :func:`cdcompress.data.batches.batches`)."""
