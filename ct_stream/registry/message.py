"""The signed model-update message of the ``<name>.models`` topic: encode, sign, verify.

Pure code: no Kafka, no environment variables, no clock reads (``created_at`` is given by
the caller), no global state. The HMAC key is passed in as bytes.

>>> import hashlib
>>> art = b'{"kind": "demo"}'
>>> u = ModelUpdate(name="clicks", version=2, parent_version=1, action="promote",
...                 created_at=1700000000.0, artifact_format="ct_stream.linear/1",
...                 artifact_sha256=hashlib.sha256(art).hexdigest(), artifact_inline=art,
...                 lineage={"examples_offsets": {0: 42}, "snapshot": None})
>>> value = sign(u, b"secret")
>>> verify(value, b"secret") == u
True
>>> try:
...     verify(value, b"wrong key")
... except VerificationError as e:
...     print(e.reason)
bad_signature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import orjson

from ct_stream.errors import RegistryError, VerificationError

__all__ = [
    "ACTIONS", "FORMATS", "MESSAGE_KIND", "Action", "ArtifactFormat", "ArtifactRef", "ModelUpdate",
    "champion_version", "champion_with_artifact", "check_successor", "decode",
    "encode_unsigned", "path_from_uri", "read_artifact_file", "sign", "signed_bytes", "verify",
    "verify_with_artifact",
]

Action = Literal["promote", "canary", "rollback"]
ArtifactFormat = Literal["ct_stream.linear/1", "river.pickle"]
ACTIONS: tuple[str, ...] = get_args(Action)
FORMATS: tuple[str, ...] = get_args(ArtifactFormat)

#: The ``kind`` tag of an encoded message; bump on format changes.
MESSAGE_KIND = "ct_stream.registry.ModelUpdate/1"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = frozenset({"kind", "name", "version", "parent_version", "action", "created_at",
                       "artifact", "metrics", "gate_report", "lineage", "topology_hash",
                       "package_version", "signature"})
# Optional: present only when set, so a message without it signs the same bytes as before.
_OPTIONAL_KEYS = frozenset({"champion_artifact"})
_ARTIFACT_KEYS = frozenset({"format", "sha256", "inline", "uri"})
_LINEAGE_KEYS = frozenset({"examples_offsets", "snapshot"})
_SNAPSHOT_KEYS = frozenset({"path", "sha256"})
_INT64 = 2**63


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_value(what: str, value: Any) -> Any:
    """A deep copy of ``value`` restricted to what JSON round-trips exactly (tuples -> lists)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise RegistryError(what, value, "an integer in the signed 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RegistryError(what, value, "a finite number (JSON has no NaN/inf)")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(f"{what}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RegistryError(f"{what} key", k, "a string")
            out[k] = _json_value(f"{what}.{k}", v)
        return out
    raise RegistryError(what, type(value).__name__, "JSON values: dict, list, str, int, float, "
                        "bool, None")


def _check_sha(what: str, value: Any) -> None:
    if not (isinstance(value, str) and _HEX64.fullmatch(value)):
        raise RegistryError(what, value, "64 lowercase hex digits (sha256)")


def path_from_uri(uri: str) -> str:
    """The local path of a ``file://`` URI (the only scheme accepted).

    >>> path_from_uri("file:///data/models/clicks-v3-0123456789ab.json")
    '/data/models/clicks-v3-0123456789ab.json'
    """
    if not isinstance(uri, str):
        raise RegistryError("artifact_uri", uri, "a file:// URI")
    parts = urlparse(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/") \
            or parts.params or parts.query or parts.fragment:
        raise RegistryError("artifact_uri", uri, "a file:// URI with an absolute path")
    return url2pathname(unquote(parts.path))


def read_artifact_file(path: str) -> bytes:
    """The default reader of ``file://`` artifacts: the whole file's bytes."""
    return Path(path).read_bytes()


def _check_lineage(lineage: Any) -> dict[str, Any]:
    if not isinstance(lineage, dict) or set(lineage) != _LINEAGE_KEYS:
        raise RegistryError("lineage", lineage, "a dict with exactly examples_offsets and snapshot")
    offsets = lineage["examples_offsets"]
    if not isinstance(offsets, dict):
        raise RegistryError("lineage.examples_offsets", offsets, "a dict {partition: offset}")
    clean: dict[int, int] = {}
    for p, o in offsets.items():
        if not (_is_int(p) and 0 <= p < 2**31):
            raise RegistryError("lineage.examples_offsets partition", p, "an int >= 0")
        if not (_is_int(o) and 0 <= o < _INT64):
            raise RegistryError(f"lineage.examples_offsets[{p}]", o, "an int offset >= 0")
        clean[p] = o
    snap = lineage["snapshot"]
    if snap is not None:
        if not isinstance(snap, dict) or set(snap) != _SNAPSHOT_KEYS:
            raise RegistryError("lineage.snapshot", snap, "None or a dict with exactly path and sha256")
        if not (isinstance(snap["path"], str) and snap["path"]):
            raise RegistryError("lineage.snapshot.path", snap["path"], "a non-empty string")
        _check_sha("lineage.snapshot.sha256", snap["sha256"])
        snap = {"path": snap["path"], "sha256": snap["sha256"]}
    return {"examples_offsets": dict(sorted(clean.items())), "snapshot": snap}


def _check_artifact(prefix: str, fmt: Any, sha256: Any, inline: Any, uri: Any) -> bytes | None:
    """Check an artifact's fields (``prefix`` + ``format``, ``sha256``, ``inline``, ``uri`` in
    errors); return the inline bytes as ``bytes`` (``None`` for a URI)."""
    if fmt not in FORMATS:
        raise RegistryError(f"{prefix}format", fmt, " | ".join(FORMATS))
    _check_sha(f"{prefix}sha256", sha256)
    if (inline is None) == (uri is None):
        raise RegistryError(prefix.rstrip("_."), (inline is not None, uri),
                            f"exactly one of {prefix}inline and {prefix}uri")
    if inline is None:
        path_from_uri(uri)
        return None
    if not isinstance(inline, (bytes, bytearray, memoryview)):
        raise RegistryError(f"{prefix}inline", type(inline).__name__, "bytes")
    return bytes(inline)


def _artifact_json(fmt: str, sha256: str, inline: bytes | None, uri: str | None) -> dict[str, Any]:
    """An artifact object of the message: inline bytes as base64, or the URI."""
    return {"format": fmt, "sha256": sha256,
            "inline": None if inline is None else base64.b64encode(inline).decode("ascii"), "uri": uri}


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact a message names besides its own: its format, sha256, and either its
    bytes (``inline``) or a ``file://`` URI (a canary's ``champion_artifact``). Invalid
    fields raise :class:`~ct_stream.errors.RegistryError`."""

    format: ArtifactFormat
    sha256: str
    inline: bytes | None = None
    uri: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inline", _check_artifact("champion_artifact.", self.format, self.sha256,
                                                           self.inline, self.uri))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (inline bytes as base64), as the message's ``artifact`` field."""
        return _artifact_json(self.format, self.sha256, self.inline, self.uri)


@dataclass(frozen=True)
class ModelUpdate:
    """One model version announced on the ``<name>.models`` topic.

    Exactly one of ``artifact_inline`` (the artifact's bytes) and ``artifact_uri`` (a
    ``file://`` URI) is set; ``artifact_sha256`` is the hex sha256 of those bytes.
    ``lineage`` is ``{"examples_offsets": {partition: next offset}, "snapshot": None |
    {"path": str, "sha256": hex}}``. ``metrics`` and ``gate_report`` (``GateReport.to_dict()``)
    must be JSON values (finite floats; tuples become lists). Invalid fields raise
    :class:`~ct_stream.errors.RegistryError`.

    ``champion_artifact`` (a ``canary`` only): the artifact of the champion the canary
    runs beside (version ``parent_version``). The topic is compacted by model name, so
    once a canary is published the champion's own update may be gone; with this a node
    or trainer that starts then still gets both (:func:`champion_with_artifact`).

    >>> ModelUpdate(name="m", version=1, parent_version=None, action="promote", created_at=0.0,
    ...             artifact_format="ct_stream.linear/1", artifact_sha256="0" * 64,
    ...             artifact_uri="file:///tmp/m.json").action
    'promote'
    """

    name: str
    version: int
    parent_version: int | None
    action: Action
    created_at: float
    artifact_format: ArtifactFormat
    artifact_sha256: str
    artifact_inline: bytes | None = None
    artifact_uri: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate_report: dict[str, Any] | None = None
    lineage: dict[str, Any] = field(
        default_factory=lambda: {"examples_offsets": {}, "snapshot": None})
    topology_hash: str | None = None
    package_version: str | None = None
    champion_artifact: ArtifactRef | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name):
            raise RegistryError("name", self.name, "a non-empty string")
        if not (_is_int(self.version) and 0 <= self.version < _INT64):
            raise RegistryError("version", self.version, "an int >= 0")
        if self.parent_version is not None and not (
                _is_int(self.parent_version) and 0 <= self.parent_version < self.version):
            raise RegistryError("parent_version", self.parent_version,
                                f"None or an int >= 0 and < version ({self.version})")
        if self.action not in ACTIONS:
            raise RegistryError("action", self.action, " | ".join(ACTIONS))
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, (int, float)) \
                or not math.isfinite(self.created_at):
            raise RegistryError("created_at", self.created_at, "a finite number (seconds since epoch)")
        object.__setattr__(self, "created_at", float(self.created_at))
        object.__setattr__(self, "artifact_inline", _check_artifact(
            "artifact_", self.artifact_format, self.artifact_sha256, self.artifact_inline, self.artifact_uri))
        if not isinstance(self.metrics, dict):
            raise RegistryError("metrics", self.metrics, "a dict")
        object.__setattr__(self, "metrics", _json_value("metrics", self.metrics))
        if self.gate_report is not None:
            if not isinstance(self.gate_report, dict):
                raise RegistryError("gate_report", self.gate_report, "None or a dict (GateReport.to_dict())")
            object.__setattr__(self, "gate_report", _json_value("gate_report", self.gate_report))
        object.__setattr__(self, "lineage", _check_lineage(self.lineage))
        for name in ("topology_hash", "package_version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RegistryError(name, value, "None or a string")
        if self.champion_artifact is not None:
            if not isinstance(self.champion_artifact, ArtifactRef):
                raise RegistryError("champion_artifact", type(self.champion_artifact).__name__,
                                    "None or an ArtifactRef")
            if self.action != "canary" or self.parent_version is None:
                raise RegistryError("champion_artifact", self.action,
                                    "only on a canary with a parent_version (the champion it runs beside)")

    def to_dict(self, signature: str | None = None) -> dict[str, Any]:
        """The message as a JSON-able dict (inline artifact base64, partitions as strings;
        ``champion_artifact`` only when set)."""
        message = {
            "kind": MESSAGE_KIND,
            "name": self.name,
            "version": self.version,
            "parent_version": self.parent_version,
            "action": self.action,
            "created_at": self.created_at,
            "artifact": _artifact_json(self.artifact_format, self.artifact_sha256, self.artifact_inline,
                                       self.artifact_uri),
            "metrics": self.metrics,
            "gate_report": self.gate_report,
            "lineage": {
                "examples_offsets": {str(p): o for p, o in self.lineage["examples_offsets"].items()},
                "snapshot": self.lineage["snapshot"],
            },
            "topology_hash": self.topology_hash,
            "package_version": self.package_version,
            "signature": signature,
        }
        if self.champion_artifact is not None:
            message["champion_artifact"] = self.champion_artifact.to_dict()
        return message


def _canonical(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_SORT_KEYS)


def signed_bytes(message: dict[str, Any]) -> bytes:
    """The bytes the HMAC covers: the canonical JSON (sorted keys, no whitespace) of
    ``message`` without its ``signature`` field."""
    return _canonical({k: v for k, v in message.items() if k != "signature"})


def _hmac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _check_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise RegistryError("key", type(key).__name__ if key is not None else None,
                            "non-empty bytes (or insecure=True)")
    return bytes(key)


def sign(update: ModelUpdate, key: bytes) -> bytes:
    """The message value to publish: canonical JSON with an HMAC-SHA256 ``signature`` (hex)
    over :func:`signed_bytes`."""
    if not isinstance(update, ModelUpdate):
        raise RegistryError("update", type(update).__name__, "a ModelUpdate")
    message = update.to_dict()
    message["signature"] = _hmac(_check_key(key), signed_bytes(message))
    return _canonical(message)


def encode_unsigned(update: ModelUpdate) -> bytes:
    """INSECURE: the message value with ``"signature": null``, for ``--insecure`` setups only.

    :func:`verify` refuses it (reason ``unsigned``) unless called with ``insecure=True``.
    """
    if not isinstance(update, ModelUpdate):
        raise RegistryError("update", type(update).__name__, "a ModelUpdate")
    return _canonical(update.to_dict())


def _malformed(detail: str) -> VerificationError:
    return VerificationError("malformed", detail)


def decode(value: bytes) -> tuple[ModelUpdate, str | None]:
    """Parse a message value into ``(update, signature)`` WITHOUT checking signature or hash.

    Raises :class:`VerificationError` (``malformed``) when it is not a well-formed message.
    Use :func:`verify` for anything that will be loaded.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _malformed(f"value is {type(value).__name__}, not bytes")
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise _malformed(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise _malformed(f"top level is {type(msg).__name__}, not an object")
    if msg.get("kind") != MESSAGE_KIND:
        raise _malformed(f"kind is {msg.get('kind')!r}, not {MESSAGE_KIND!r}")
    if set(msg) - _OPTIONAL_KEYS != _TOP_KEYS:
        raise _malformed(f"fields missing {sorted(_TOP_KEYS - set(msg))}, "
                         f"unknown {sorted(set(msg) - _TOP_KEYS - _OPTIONAL_KEYS)}")
    signature = msg["signature"]
    if signature is not None and not (isinstance(signature, str) and _HEX64.fullmatch(signature)):
        raise _malformed("signature is not None or 64 lowercase hex digits")
    art = msg["artifact"]
    inline = _decode_artifact("artifact", art)
    champion = None
    if "champion_artifact" in msg:
        c = msg["champion_artifact"]
        c_inline = _decode_artifact("champion_artifact", c)
        try:
            champion = ArtifactRef(c["format"], c["sha256"], c_inline, c["uri"])
        except RegistryError as e:
            raise _malformed(str(e)) from None
    lineage = msg["lineage"]
    if isinstance(lineage, dict) and isinstance(lineage.get("examples_offsets"), dict):
        offsets = {}
        for p, o in lineage["examples_offsets"].items():
            if not (p.isascii() and p.isdigit()) or str(int(p)) != p:
                raise _malformed(f"lineage.examples_offsets partition {p!r} is not a decimal int")
            offsets[int(p)] = o
        lineage = {**lineage, "examples_offsets": offsets}
    try:
        update = ModelUpdate(
            name=msg["name"], version=msg["version"], parent_version=msg["parent_version"],
            action=msg["action"], created_at=msg["created_at"], artifact_format=art["format"],
            artifact_sha256=art["sha256"], artifact_inline=inline, artifact_uri=art["uri"],
            metrics=msg["metrics"], gate_report=msg["gate_report"], lineage=lineage,
            topology_hash=msg["topology_hash"], package_version=msg["package_version"],
            champion_artifact=champion)
    except RegistryError as e:
        raise _malformed(str(e)) from None
    if type(msg["created_at"]) is not float:
        raise _malformed("created_at is not a float")  # keeps the canonical form unique
    return update, signature


def _decode_artifact(what: str, art: Any) -> bytes | None:
    """Check the shape of an ``artifact`` object; return its inline bytes (``None`` for a URI)."""
    if not isinstance(art, dict) or set(art) != _ARTIFACT_KEYS:
        raise _malformed(f"{what} must be an object with exactly {sorted(_ARTIFACT_KEYS)}")
    inline = art["inline"]
    if inline is not None:
        if not isinstance(inline, str):
            raise _malformed(f"{what}.inline is not a base64 string")
        try:
            inline = base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed(f"{what}.inline is not valid base64") from None
    return inline  # type: ignore[no-any-return]


def _artifact_bytes(inline: bytes | None, uri: str | None, sha256: str,
                    read_file: Callable[[str], bytes]) -> bytes:
    """The artifact's bytes, inline or read from its ``file://`` URI, checked against ``sha256``
    (``missing_artifact`` when the file cannot be read, ``bad_hash`` when the digest differs)."""
    if inline is not None:
        data = inline
    else:
        path = path_from_uri(uri)  # type: ignore[arg-type]
        try:
            data = read_file(path)
        except OSError as e:
            raise VerificationError("missing_artifact", f"{path}: {e.strerror or e}") from None
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise VerificationError("missing_artifact", f"{path}: reader returned "
                                    f"{type(data).__name__}, not bytes")
        data = bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(digest, sha256):
        raise VerificationError("bad_hash", f"artifact sha256 {digest}, message says {sha256}")
    return data


def verify_with_artifact(value: bytes, key: bytes | None, *, insecure: bool = False,
                         read_file: Callable[[str], bytes] = read_artifact_file,
                         ) -> tuple[ModelUpdate, bytes]:
    """Verify a message value; return the update and its artifact's verified bytes.

    Order, each before the next and all before any artifact is deserialized:

    1. the value parses and has every field with the right type (else ``malformed``);
    2. the signature: an unsigned message is refused (``unsigned``) unless ``insecure``;
       a signed one must match the HMAC-SHA256 under ``key`` (else ``bad_signature``,
       compared with :func:`hmac.compare_digest`); with ``insecure`` and ``key=None`` the
       signature is not checked;
    3. the artifact: the inline bytes, or the ``file://`` file read through ``read_file``
       (``missing_artifact`` if it cannot be read), must have ``artifact_sha256``
       (else ``bad_hash``).
    """
    if key is not None:
        key = _check_key(key)
    elif not insecure:
        raise RegistryError("key", None, "non-empty bytes (or insecure=True)")
    update, signature = decode(value)
    if signature is None:
        if not insecure:
            raise VerificationError("unsigned", "the message has no signature and insecure is off")
    elif key is not None:
        expected = _hmac(key, signed_bytes(update.to_dict()))  # what is returned is what is signed
        if not hmac.compare_digest(expected, signature):
            raise VerificationError("bad_signature", "the HMAC-SHA256 does not match the key")
    return update, _artifact_bytes(update.artifact_inline, update.artifact_uri, update.artifact_sha256, read_file)


def champion_with_artifact(canary: ModelUpdate, read_file: Callable[[str], bytes] = read_artifact_file
                           ) -> tuple[ModelUpdate, bytes]:
    """The champion a VERIFIED canary runs beside, as an update of its own, and its
    artifact's bytes: version ``canary.parent_version``, action ``promote``, the canary's
    ``champion_artifact`` (its sha256 is covered by the canary's signature, and the bytes
    are checked against it like the main artifact's: ``missing_artifact`` or ``bad_hash``,
    :class:`VerificationError`), ``created_at`` the canary's; metrics, gate report and
    lineage are not carried (empty). For a node or trainer that starts after compaction
    removed the champion's own update. ``RegistryError`` when the canary carries none.

    >>> import hashlib
    >>> art = b'{"kind": "champion"}'
    >>> ref = ArtifactRef("ct_stream.linear/1", hashlib.sha256(art).hexdigest(), inline=art)
    >>> c = ModelUpdate(name="m", version=5, parent_version=4, action="canary", created_at=9.0,
    ...                 artifact_format="ct_stream.linear/1", artifact_sha256="1" * 64,
    ...                 artifact_uri="file:///m-v5.json", champion_artifact=ref)
    >>> u, data = champion_with_artifact(c)
    >>> u.version, u.action, data == art
    (4, 'promote', True)
    """
    ref = canary.champion_artifact
    if ref is None or canary.parent_version is None:
        raise RegistryError("champion_artifact", None, "an ArtifactRef (a canary published with its champion)")
    data = _artifact_bytes(ref.inline, ref.uri, ref.sha256, read_file)
    return ModelUpdate(name=canary.name, version=canary.parent_version, parent_version=None, action="promote",
                       created_at=canary.created_at, artifact_format=ref.format, artifact_sha256=ref.sha256,
                       artifact_inline=ref.inline, artifact_uri=ref.uri, topology_hash=canary.topology_hash,
                       package_version=canary.package_version), data


def verify(value: bytes, key: bytes | None, *, insecure: bool = False,
           read_file: Callable[[str], bytes] = read_artifact_file) -> ModelUpdate:
    """:func:`verify_with_artifact` without the artifact bytes (see there for the checks)."""
    return verify_with_artifact(value, key, insecure=insecure, read_file=read_file)[0]


def champion_version(update: ModelUpdate) -> int | None:
    """The champion after ``update``: its own version for ``promote``/``rollback``, its
    parent for a ``canary`` (a canary does not replace the champion)."""
    return update.parent_version if update.action == "canary" else update.version


def check_successor(previous: ModelUpdate | None, new: ModelUpdate) -> None:
    """Raise :class:`RegistryError` unless ``new`` may follow ``previous`` (the latest
    update of the same model, ``None`` if there is none).

    Rules: same name; ``new.version > previous.version``; for ``promote`` and ``canary``,
    ``new.parent_version`` is the current champion (:func:`champion_version` of
    ``previous``; ``None`` when there is no previous update); a ``rollback`` needs a
    previous update and names the restored version in ``parent_version``, which must be
    older than the current champion, or the champion itself when ``previous`` is a
    ``canary`` (rolling the canary back).

    >>> import dataclasses
    >>> a = ModelUpdate(name="m", version=1, parent_version=None, action="promote",
    ...                 created_at=0.0, artifact_format="ct_stream.linear/1",
    ...                 artifact_sha256="0" * 64, artifact_uri="file:///m.json")
    >>> check_successor(None, a)
    >>> check_successor(a, dataclasses.replace(a, version=2, parent_version=1))
    >>> try:
    ...     check_successor(a, dataclasses.replace(a, version=1))
    ... except RegistryError as e:
    ...     print(e)
    version: got 1; allowed: an int > 1 (the previous version)
    """
    if not isinstance(new, ModelUpdate) or not (previous is None or isinstance(previous, ModelUpdate)):
        raise RegistryError("update", (type(previous).__name__, type(new).__name__), "ModelUpdate")
    if previous is None:
        if new.action == "rollback":
            raise RegistryError("action", new.action, "promote | canary (no previous version)")
        if new.parent_version is not None:
            raise RegistryError("parent_version", new.parent_version, "None (no previous version)")
        return
    if new.name != previous.name:
        raise RegistryError("name", new.name, repr(previous.name))
    if new.version <= previous.version:
        raise RegistryError("version", new.version, f"an int > {previous.version} (the previous version)")
    champion = champion_version(previous)
    if new.action in ("promote", "canary"):
        if new.parent_version != champion:
            raise RegistryError("parent_version", new.parent_version, f"{champion} (the champion)")
    elif previous.action == "canary":  # ending a canary: back to the champion it ran beside (or older)
        if new.parent_version is None or champion is None or new.parent_version > champion:
            raise RegistryError("parent_version", new.parent_version,
                                f"the restored version: the champion ({champion}) or older")
    elif new.parent_version is None or champion is None or new.parent_version >= champion:
        raise RegistryError("parent_version", new.parent_version,
                            f"the restored version, older than the champion ({champion})")
