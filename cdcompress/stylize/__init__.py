"""Universal style transfer (WCT, AdaIN) with any saved model, untiled or exactly tiled at bounded memory.

Names load on first use. The package is also callable: ``cdcompress.stylize(model, content, style)``
is :func:`cdcompress.stylize.pipeline.stylize`, whichever of the two a caller reached first.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports

_EXPORTS = {
    "adain_map": ".adain", "Backend": ".backend", "TorchBackend": ".backend",
    "DEFAULT_LEVELS": ".settings", "METHODS": ".settings",
    "StylizeJob": ".pipeline", "TilingPlan": ".pipeline", "as_backend": ".pipeline", "make_job": ".pipeline",
    "plan_tiling": ".pipeline", "scratch_bytes": ".pipeline", "stylize": ".pipeline", "untiled_bytes": ".pipeline",
    "LevelGeometry": ".tiling", "level_geometry": ".tiling", "parse_memory": ".tiling",
    "AffineMap": ".wct", "FeatureStats": ".wct", "wct_map": ".wct",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)


class _CallablePackage(types.ModuleType):
    """``cdcompress.stylize`` names both this package and the API function; calling the package stylizes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.stylize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from .adain import adain_map as adain_map
    from .backend import Backend as Backend
    from .backend import TorchBackend as TorchBackend
    from .pipeline import StylizeJob as StylizeJob
    from .pipeline import TilingPlan as TilingPlan
    from .pipeline import as_backend as as_backend
    from .pipeline import make_job as make_job
    from .pipeline import plan_tiling as plan_tiling
    from .pipeline import scratch_bytes as scratch_bytes
    from .pipeline import stylize as stylize
    from .pipeline import untiled_bytes as untiled_bytes
    from .settings import DEFAULT_LEVELS as DEFAULT_LEVELS
    from .settings import METHODS as METHODS
    from .tiling import LevelGeometry as LevelGeometry
    from .tiling import level_geometry as level_geometry
    from .tiling import parse_memory as parse_memory
    from .wct import AffineMap as AffineMap
    from .wct import FeatureStats as FeatureStats
    from .wct import wct_map as wct_map
