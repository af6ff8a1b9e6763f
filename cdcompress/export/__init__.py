"""Deployment: verified ONNX bundles, TensorRT engines, and a runtime that stylizes from a bundle.

``export_bundle`` writes per-level encoder/decoder graphs checked against PyTorch; ``OnnxBackend``
runs them behind the stylization ``Backend`` protocol. onnx/onnxruntime and tensorrt are optional
dependencies, imported only when used.
"""

from .bundle import ExportResult, export_bundle
from .errors import ExportError, TensorRTUnavailable
from .manifest import read_manifest
from .profiles import ExportProfile, available_profiles, load_profile
from .runtime import OnnxBackend

__all__ = [
    "ExportError",
    "ExportProfile",
    "ExportResult",
    "OnnxBackend",
    "TensorRTUnavailable",
    "available_profiles",
    "export_bundle",
    "load_profile",
    "read_manifest",
]
