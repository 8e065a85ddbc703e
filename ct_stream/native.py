"""The native data path (docs/native.md): :data:`module` is ``ct_stream._native``, built
from ``native/`` (Rust) when cargo was present at install, or ``None``; every user falls
back to its Python code, which gives the same results.

In a source checkout (an editable install), a module older than a file under
``native/`` was built from other sources: importing warns (``pip install -e .``
rebuilds it), since an editable install does not rebuild the extension by itself."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

module: ModuleType | None
try:
    from ct_stream import _native as module
except ImportError:  # pragma: no cover - depends on the build
    module = None

__all__ = ["module", "stale_sources"]


def stale_sources(built: Path, crate: Path) -> list[Path]:
    """The files of the crate at ``crate`` (``Cargo.toml``, ``Cargo.lock``, ``src/``)
    changed after the module file ``built`` was written; empty when there is no crate
    there (an installed package has none)."""
    if not (crate / "Cargo.toml").is_file():
        return []
    built_at = built.stat().st_mtime
    files = [crate / "Cargo.toml", crate / "Cargo.lock", *sorted((crate / "src").rglob("*.rs"))]
    return [f for f in files if f.is_file() and f.stat().st_mtime > built_at]


if module is not None and module.__file__:
    _stale = stale_sources(Path(module.__file__), Path(__file__).resolve().parents[1] / "native")
    if _stale:
        warnings.warn(f"ct_stream._native is older than {', '.join(map(str, _stale))}: it was built from other "
                      "sources; run `pip install -e .` again to rebuild it", stacklevel=2)
