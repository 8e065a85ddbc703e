"""Model artifacts of model-update messages: make, store (inline or ``file://``), load.

Only the JSON linear model (format ``ct_stream.linear/1``, the dict of
:meth:`~ct_stream.learn.linear.BatchLogisticRegression.state`) is implemented. River
pickles (``river.pickle``) are refused by :func:`load_artifact`.

>>> from ct_stream.learn.linear import BatchLogisticRegression
>>> data, sha = make_artifact(BatchLogisticRegression(2).state())
>>> inline, uri, sha2 = store_artifact(data, "/nonexistent", "clicks", 1)
>>> inline == data and uri is None and sha2 == sha
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson

from ct_stream.errors import LearnError, RegistryError, VerificationError
from ct_stream.learn.linear import STATE_KIND, BatchLogisticRegression
from ct_stream.registry.message import ModelUpdate

__all__ = ["INLINE_LIMIT", "LINEAR_FORMAT", "inline_size", "load_artifact", "make_artifact",
           "store_artifact"]

#: The artifact format of :func:`make_artifact`.
LINEAR_FORMAT = "ct_stream.linear/1"
#: Default limit, in bytes of base64 text, for an artifact carried inside the message.
INLINE_LIMIT = 900_000

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def make_artifact(model_state: dict[str, Any]) -> tuple[bytes, str]:
    """``(bytes, sha256 hex)`` of a :meth:`BatchLogisticRegression.state` dict (JSON,
    sorted keys).

    >>> data, sha = make_artifact(BatchLogisticRegression(1).state())
    >>> len(sha), data[:9]
    (64, b'{"block":')
    """
    if not isinstance(model_state, dict) or model_state.get("kind") != STATE_KIND:
        got = model_state.get("kind") if isinstance(model_state, dict) else type(model_state).__name__
        raise RegistryError('model_state["kind"]', got, repr(STATE_KIND))
    try:
        data = orjson.dumps(model_state, option=orjson.OPT_SORT_KEYS)
    except TypeError as e:
        raise RegistryError("model_state", str(e), "a JSON-able dict") from None
    return data, hashlib.sha256(data).hexdigest()


def inline_size(data: bytes) -> int:
    """Bytes ``data`` takes inside a message (base64).

    >>> inline_size(b"abcd")
    8
    """
    return 4 * ((len(data) + 2) // 3)


def store_artifact(data: bytes, data_dir: str | os.PathLike[str], name: str, version: int,
                   limit: int = INLINE_LIMIT) -> tuple[bytes | None, str | None, str]:
    """``(inline, uri, sha256)``: ``inline`` is ``data`` when its base64 form is at most
    ``limit`` bytes; otherwise ``data`` is written atomically (temporary file, fsync,
    rename) to ``<data_dir>/<name>-v<version>-<sha256[:12]>.json`` and ``uri`` is its
    ``file://`` URI. Exactly one of ``inline`` and ``uri`` is set.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise RegistryError("data", type(data).__name__, "bytes")
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise RegistryError("name", name, "letters, digits, '.', '_', '-' (not starting with '.' or '-')")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RegistryError("version", version, "an int >= 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise RegistryError("limit", limit, "an int >= 0")
    data = bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    if inline_size(data) <= limit:
        return data, None, sha
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{name}-v{version}-{sha[:12]}.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return None, final.resolve().as_uri(), sha


def load_artifact(update: ModelUpdate, data: bytes) -> BatchLogisticRegression:
    """The model of a VERIFIED update (``data`` from :func:`verify_with_artifact`).

    The sha256 of ``data`` is checked again (``bad_hash``); the format must be
    ``ct_stream.linear/1`` (:class:`RegistryError` otherwise: River pickles are not loaded);
    bytes that are not a model state raise :class:`VerificationError` (``malformed``).
    """
    if not isinstance(update, ModelUpdate):
        raise RegistryError("update", type(update).__name__, "a verified ModelUpdate")
    if update.artifact_format != LINEAR_FORMAT:
        raise RegistryError("artifact_format", update.artifact_format,
                            f"{LINEAR_FORMAT} (loading other formats is not implemented)")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RegistryError("data", type(data).__name__, "bytes")
    digest = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(digest, update.artifact_sha256):
        raise VerificationError("bad_hash", f"artifact sha256 {digest}, message says "
                                f"{update.artifact_sha256}")
    try:
        return BatchLogisticRegression.from_state(orjson.loads(data))
    except orjson.JSONDecodeError as e:
        raise VerificationError("malformed", f"artifact is not JSON: {e}") from None
    except LearnError as e:
        raise VerificationError("malformed", f"artifact is not a model state: {e}") from None
