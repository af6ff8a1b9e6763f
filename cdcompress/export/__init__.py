"""Deployment: verified ONNX bundles, TensorRT engines, and a runtime that stylizes from a bundle.

``export_bundle`` writes per-level encoder/decoder graphs checked against PyTorch; ``OnnxBackend``
runs them behind the stylization ``Backend`` protocol. onnx/onnxruntime and tensorrt are optional
dependencies, imported only when used; the names here load on first use (no torch for listing profiles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_EXPORTS = {
    "ExportResult": ".bundle", "export_bundle": ".bundle", "read_manifest": ".manifest",
    "ExportError": ".errors", "TensorRTUnavailable": ".errors",
    "ExportProfile": ".profiles", "available_profiles": ".profiles", "load_profile": ".profiles",
    "OnnxBackend": ".runtime",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from .bundle import ExportResult as ExportResult
    from .bundle import export_bundle as export_bundle
    from .errors import ExportError as ExportError
    from .errors import TensorRTUnavailable as TensorRTUnavailable
    from .manifest import read_manifest as read_manifest
    from .profiles import ExportProfile as ExportProfile
    from .profiles import available_profiles as available_profiles
    from .profiles import load_profile as load_profile
    from .runtime import OnnxBackend as OnnxBackend
