"""The native data path (docs/native.md): :data:`module` is ``ct_stream._native``, built
from ``native/`` (Rust) when cargo was present at install, or ``None``; every user falls
back to its Python code, which gives the same results."""

from __future__ import annotations

from types import ModuleType

module: ModuleType | None
try:
    from ct_stream import _native as module
except ImportError:  # pragma: no cover - depends on the build
    module = None

__all__ = ["module"]
