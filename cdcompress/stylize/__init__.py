"""Universal style transfer (WCT, AdaIN) with any saved model, untiled or exactly tiled at bounded memory."""

from .adain import adain_map
from .backend import Backend, TorchBackend
from .pipeline import DEFAULT_LEVELS, METHODS, as_backend, stylize
from .tiling import LevelGeometry, level_geometry, parse_memory
from .wct import AffineMap, FeatureStats, wct_map

__all__ = [
    "DEFAULT_LEVELS",
    "METHODS",
    "AffineMap",
    "Backend",
    "FeatureStats",
    "LevelGeometry",
    "TorchBackend",
    "adain_map",
    "as_backend",
    "level_geometry",
    "parse_memory",
    "stylize",
    "wct_map",
]
