"""Universal style transfer (WCT, AdaIN) with any saved model, untiled or exactly tiled at bounded memory.

Names load on first use. The API function is ``cdcompress.stylize(model, content, style)``
(:func:`cdcompress.stylization.pipeline.stylize`); this package holds what it is made of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_EXPORTS = {
    "adain_map": ".adain", "Backend": ".backend", "TorchBackend": ".backend", "UntiledBackend": ".backend",
    "DEFAULT_LEVELS": ".settings", "METHODS": ".settings",
    "StylizeJob": ".job", "as_backend": ".job", "make_job": ".job",
    "TilingPlan": ".plan", "plan_tiling": ".plan", "scratch_bytes": ".plan", "untiled_bytes": ".plan",
    "stylize": ".pipeline",
    "LevelGeometry": ".tiling", "level_geometry": ".tiling", "parse_memory": ".tiling",
    "AffineMap": ".wct", "FeatureStats": ".wct", "wct_map": ".wct",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)



if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from .adain import adain_map as adain_map
    from .backend import Backend as Backend
    from .backend import TorchBackend as TorchBackend
    from .backend import UntiledBackend as UntiledBackend
    from .job import StylizeJob as StylizeJob
    from .job import as_backend as as_backend
    from .job import make_job as make_job
    from .pipeline import stylize as stylize
    from .plan import TilingPlan as TilingPlan
    from .plan import plan_tiling as plan_tiling
    from .plan import scratch_bytes as scratch_bytes
    from .plan import untiled_bytes as untiled_bytes
    from .settings import DEFAULT_LEVELS as DEFAULT_LEVELS
    from .settings import METHODS as METHODS
    from .tiling import LevelGeometry as LevelGeometry
    from .tiling import level_geometry as level_geometry
    from .tiling import parse_memory as parse_memory
    from .wct import AffineMap as AffineMap
    from .wct import FeatureStats as FeatureStats
    from .wct import wct_map as wct_map
