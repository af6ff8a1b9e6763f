"""Export errors: user-caused problems reported by the CLI as one ``error: ...`` line, exit code 2."""

from __future__ import annotations

from ..core.errors import CDCompressError


class ExportError(CDCompressError):
    """A bad profile, a failed parity check, a broken bundle or a missing export dependency."""


class TensorRTUnavailable(ExportError):
    """TensorRT engines were requested where tensorrt or a CUDA GPU is missing."""
