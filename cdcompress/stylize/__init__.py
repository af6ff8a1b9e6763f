"""Universal style transfer (WCT, AdaIN) with any saved model, untiled or exactly tiled at bounded memory."""

from .adain import adain_map
from .backend import Backend, TorchBackend
from .pipeline import (
    DEFAULT_LEVELS,
    METHODS,
    StylizeJob,
    TilingPlan,
    as_backend,
    make_job,
    plan_tiling,
    scratch_bytes,
    stylize,
    untiled_bytes,
)
from .tiling import LevelGeometry, level_geometry, parse_memory
from .wct import AffineMap, FeatureStats, wct_map

__all__ = [
    "DEFAULT_LEVELS",
    "METHODS",
    "AffineMap",
    "Backend",
    "FeatureStats",
    "LevelGeometry",
    "StylizeJob",
    "TilingPlan",
    "TorchBackend",
    "adain_map",
    "as_backend",
    "level_geometry",
    "make_job",
    "parse_memory",
    "plan_tiling",
    "scratch_bytes",
    "stylize",
    "untiled_bytes",
    "wct_map",
]
