"""The record contract: events and labels as JSON, joined examples as Arrow.

Events (user-named topic) are JSON objects::

    {"id": "u1-42", "ts": 1700000000.5, "features": {"price": 9.5, "country": "FR"},
     "served_version": 3, "prediction": 0.81}

Labels (user-named topic)::

    {"id": "u1-42", "ts": "2023-11-14T22:13:20Z", "label": true}

``id`` (a non-empty string or an integer, kept as a string) and ``ts`` (seconds since
the epoch as a number, or an ISO-8601 string; when absent the Kafka record timestamp
is used) live under :attr:`RecordSchema.id_field` / :attr:`RecordSchema.ts_field`.
``features`` must hold every declared feature with its declared type; undeclared
features are ignored. ``served_version`` and ``prediction`` are optional. A record
that breaks the contract decodes to a :class:`Reject` with a :class:`Reason` (it goes
to the dead-letter topic); decoding never raises.

Joined examples travel on ``<name>.examples`` as one Arrow IPC stream per message, with
the columns of :func:`example_schema`.

This module is pure: no Kafka client, no topology import.
"""

from __future__ import annotations

import enum
import math
import reprlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import repeat
from operator import itemgetter
from typing import Any, Callable, Literal, Mapping, Sequence, get_args

import orjson
import pyarrow as pa

from ct_stream.errors import CodecError, TopologyError
from ct_stream.native import module as _native

__all__ = [
    "FeatureType",
    "LabelType",
    "Reason",
    "RecordSchema",
    "Event",
    "Label",
    "Reject",
    "decode_event",
    "decode_label",
    "decode_events",
    "decode_labels",
    "encode_event",
    "encode_label",
    "OUTCOMES",
    "FIXED_COLUMNS",
    "EXAMPLE_VERSION_KEY",
    "example_schema",
    "encode_examples",
    "decode_examples",
    "examples_to_batch",
]

FeatureType = Literal["float", "int", "bool", "str"]
LabelType = Literal["binary", "multiclass", "regression"]

OUTCOMES: tuple[str, ...] = ("joined", "expired", "correction")
"""What a joined example is: a label met its event, an event expired without a label
(it carries the default label), or a later label corrected an earlier example."""

FIXED_COLUMNS: tuple[str, ...] = (
    "id", "event_ts", "label_ts", "label", "outcome", "served_version", "prediction",
    "source_partition", "source_offset",
)
"""The example columns before the feature columns; no feature may use these names."""

EXAMPLE_VERSION_KEY = b"ct_stream.example_version"

_FEATURE_CODES: dict[str, int] = {"float": 0, "int": 1, "bool": 2, "str": 3}
_RESERVED_JSON_KEYS = ("features", "served_version", "prediction", "label")
_INT64_MAX = 2**63 - 1
_ISO_MAX_LEN = 64
_DETAIL_MAX = 200


class Reason(str, enum.Enum):
    """Why a record went to the dead-letter topic.

    - ``undecodable``: not a JSON object (bad UTF-8, bad JSON, or JSON that is not an
      object). orjson rejects ``NaN``/``Infinity`` literals and numbers that overflow a
      double, so those records are undecodable too.
    - ``missing_field``: a required field (id, ts without a Kafka timestamp, features,
      label) or a declared feature is absent or null.
    - ``bad_type``: a value of the wrong type: an id that is not a non-empty string or
      an integer, a bool where a number is expected, a non-integral float for an
      ``int`` feature, an unparsable ts string, ...
    - ``non_finite``: NaN or +-inf in a number. Since orjson never produces one from
      JSON text, this is defensive.
    - ``too_large``: the record's bytes exceed ``max_record_bytes``, a string feature,
      id or class is longer than ``max_string_length``, or a number's absolute value
      exceeds ``max_abs_value`` (integers are also bounded by the int64 range).
    - ``unknown_id``: not produced by the codec; the joiner uses it for a label whose
      event never arrived within the join window.
    - ``late``: not produced by the codec; the joiner uses it for a record older than
      the grace period behind its partition's newest timestamp.
    - ``expired``: not produced by the codec; the joiner uses it for an event whose
      label did not come within ``max_label_delay`` when ``timeout_policy`` is ``dlq``.
    """

    UNDECODABLE = "undecodable"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    NON_FINITE = "non_finite"
    TOO_LARGE = "too_large"
    UNKNOWN_ID = "unknown_id"
    LATE = "late"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class RecordSchema:
    """The record contract: declared features (name -> type), label type, the JSON
    field names of id and ts, and size limits. Invalid values raise
    :class:`~ct_stream.errors.TopologyError`.

    Feature order is the declared order; it is the order of :attr:`Event.features`
    and of the feature columns of :func:`example_schema`.
    """

    features: Mapping[str, FeatureType]
    label_type: LabelType
    id_field: str = "id"
    ts_field: str = "ts"
    max_record_bytes: int = 1_048_576
    max_string_length: int = 4096
    max_abs_value: float = 1e15
    _plan: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)
    _int_limit: int = field(init=False, repr=False, compare=False)
    _example_schema: pa.Schema = field(init=False, repr=False, compare=False)
    _native_decoder: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        allowed_types = "'float', 'int', 'bool' or 'str'"
        if not isinstance(self.features, Mapping) or not self.features:
            raise TopologyError("features", self.features,
                                f"a non-empty mapping of feature name -> {allowed_types}")
        plan = []
        for name, ftype in self.features.items():
            where = f"features.{name}"
            if not isinstance(name, str) or not name:
                raise TopologyError(where, name, "a non-empty string feature name")
            if name in FIXED_COLUMNS:
                raise TopologyError(where, name,
                                    "a name other than the fixed example columns " + ", ".join(FIXED_COLUMNS))
            code = _FEATURE_CODES.get(ftype) if isinstance(ftype, str) else None
            if code is None:
                raise TopologyError(where, ftype, allowed_types)
            plan.append((name, code))
        if self.label_type not in get_args(LabelType):
            raise TopologyError("label_type", self.label_type, "'binary', 'multiclass' or 'regression'")
        for key in ("id_field", "ts_field"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise TopologyError(key, value, "a non-empty JSON field name")
            if value in _RESERVED_JSON_KEYS:
                raise TopologyError(key, value, "a field name other than " + ", ".join(_RESERVED_JSON_KEYS))
        if self.id_field == self.ts_field:
            raise TopologyError("ts_field", self.ts_field, "a field name other than id_field")
        for key in ("max_record_bytes", "max_string_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise TopologyError(key, value, "an integer > 0")
        mav = self.max_abs_value
        if not isinstance(mav, (int, float)) or isinstance(mav, bool) or not math.isfinite(mav) or mav <= 0:
            raise TopologyError("max_abs_value", mav, "a finite number > 0")
        set_ = object.__setattr__
        set_(self, "features", dict(self.features))
        set_(self, "max_abs_value", float(mav))
        set_(self, "_plan", tuple(plan))
        set_(self, "_int_limit", min(int(mav), _INT64_MAX))
        set_(self, "_example_schema", _build_example_schema(self))
        set_(self, "_native_decoder", None if _native is None else _native.Decoder(
            [n for n, _ in plan], [c for _, c in plan], self.label_type, self.id_field, self.ts_field,
            self.max_record_bytes, self.max_string_length, self.max_abs_value, self._int_limit, Event, Label))


@dataclass(slots=True)
class Event:
    """A decoded prediction event. ``features`` holds the declared features only, in
    schema order; ``ts`` is seconds since the epoch."""

    id: str
    ts: float
    features: dict[str, float | int | bool | str]
    served_version: int | None = None
    prediction: float | str | None = None


@dataclass(slots=True)
class Label:
    """A decoded label: ``bool`` (binary), ``str`` (multiclass) or ``float`` (regression)."""

    id: str
    ts: float
    label: bool | str | float


@dataclass(slots=True, frozen=True)
class Reject:
    """A record that breaks the contract: the reason and a short human message."""

    reason: Reason
    detail: str


# --------------------------------------------------------------------------- helpers

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlong = 40
_short.maxlist = 5
_short.maxdict = 4
_short.maxlevel = 2

_JSON_TYPE_NAMES = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str",
                    list: "list", dict: "object"}


def _got(value: Any) -> str:
    name = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    if value is None:
        return name
    return f"{name} {_short.repr(value)}"


def _reject(reason: Reason, detail: str) -> Reject:
    if len(detail) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - 3] + "..."
    return Reject(reason, detail)


def _bad_type(where: str, expected: str, value: Any) -> Reject:
    return _reject(Reason.BAD_TYPE, f"{where}: expected {expected}, got {_got(value)}")


def _missing(where: str) -> Reject:
    return Reject(Reason.MISSING_FIELD, f"{where}: missing")


def _out_of_range(where: str, value: float | int, limit: float | int) -> Reject:
    if value != value or value in (math.inf, -math.inf):
        return _reject(Reason.NON_FINITE, f"{where}: expected a finite number, got {value!r}")
    return _reject(Reason.TOO_LARGE, f"{where}: |{_short.repr(value)}| exceeds {limit!r}")


def _too_long(where: str, value: str, limit: int) -> Reject:
    return _reject(Reason.TOO_LARGE, f"{where}: string of length {len(value)} exceeds {limit}")


def _load(value: Any, schema: RecordSchema) -> dict[str, Any] | Reject:
    if value is None:
        return Reject(Reason.UNDECODABLE, "record has no value (null)")
    try:
        size = len(value)
    except TypeError:
        return _reject(Reason.UNDECODABLE, f"record value is not bytes: {type(value).__name__}")
    if size > schema.max_record_bytes:
        return _reject(Reason.TOO_LARGE, f"record is {size} bytes; max_record_bytes is {schema.max_record_bytes}")
    try:
        obj = orjson.loads(value)
    except (orjson.JSONDecodeError, ValueError, TypeError) as e:
        return _reject(Reason.UNDECODABLE, f"not JSON: {e}")
    if type(obj) is not dict:
        return _bad_object(obj)
    return obj


def _bad_object(obj: Any) -> Reject:
    return _reject(Reason.UNDECODABLE, f"expected a JSON object, got {_got(obj)}")


def _id(obj: dict[str, Any], schema: RecordSchema) -> str | Reject:
    where = schema.id_field
    v = obj.get(where)
    t = type(v)
    if t is str:
        if not v:
            return _bad_type(where, "a non-empty string or an integer", v)
        if len(v) > schema.max_string_length:
            return _too_long(where, v, schema.max_string_length)
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if v is None:
        return _missing(where)
    return _bad_type(where, "a non-empty string or an integer", v)


def _ts(obj: dict[str, Any], schema: RecordSchema, kafka_ts_ms: int | None) -> float | Reject:
    where = schema.ts_field
    v = obj.get(where)
    t = type(v)
    if t is float or t is int:
        if v - v == 0:  # finite (NaN and inf give NaN)
            return float(v)
        return _out_of_range(where, v, schema.max_abs_value)
    if v is None:
        if kafka_ts_ms is None or isinstance(kafka_ts_ms, bool) or not isinstance(kafka_ts_ms, (int, float)) \
                or not kafka_ts_ms > 0:
            return _reject(Reason.MISSING_FIELD, f"{where}: missing and the record has no Kafka timestamp")
        return kafka_ts_ms / 1000.0
    if t is str:
        return _parse_iso(where, v)
    return _bad_type(where, "seconds since the epoch or an ISO-8601 string", v)


def _parse_iso(where: str, text: str) -> float | Reject:
    if len(text) > _ISO_MAX_LEN or not text:
        return _bad_type(where, "an ISO-8601 timestamp", text)
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except (ValueError, OverflowError, TypeError):
        return _bad_type(where, "an ISO-8601 timestamp", text)


def _features(obj: dict[str, Any], schema: RecordSchema) -> dict[str, float | int | bool | str] | Reject:
    feats = obj.get("features")
    if type(feats) is not dict:
        if feats is None:
            return _missing("features")
        return _bad_type("features", "an object", feats)
    out: dict[str, float | int | bool | str] = {}
    m = schema.max_abs_value
    il = schema._int_limit
    maxlen = schema.max_string_length
    for name, code in schema._plan:
        v = feats.get(name)
        t = type(v)
        if code == 0:  # float
            if t is float:
                if -m <= v <= m:
                    out[name] = v
                    continue
                return _out_of_range("features." + name, v, m)
            if t is int:
                if -m <= v <= m:
                    out[name] = float(v)
                    continue
                return _out_of_range("features." + name, v, m)
            if v is None:
                return _missing("features." + name)
            return _bad_type("features." + name, "float", v)
        if code == 1:  # int
            if t is int:
                if -il <= v <= il:
                    out[name] = v
                    continue
                return _out_of_range("features." + name, v, il)
            if t is float:
                if -il <= v <= il:
                    if v.is_integer():
                        out[name] = int(v)
                        continue
                    return _bad_type("features." + name, "int", v)
                return _out_of_range("features." + name, v, il)
            if v is None:
                return _missing("features." + name)
            return _bad_type("features." + name, "int", v)
        if code == 2:  # bool
            if t is bool:
                out[name] = v
                continue
            if v is None:
                return _missing("features." + name)
            return _bad_type("features." + name, "bool", v)
        # str
        if t is str:
            if len(v) <= maxlen:
                out[name] = v
                continue
            return _too_long("features." + name, v, maxlen)
        if v is None:
            return _missing("features." + name)
        return _bad_type("features." + name, "str", v)
    return out


def _served_version(obj: dict[str, Any], schema: RecordSchema) -> int | None | Reject:
    v = obj.get("served_version")
    if v is None:
        return None
    if type(v) is int and v >= 0:
        if v <= schema._int_limit:
            return v  # type: ignore[no-any-return]
        return _out_of_range("served_version", v, schema._int_limit)
    return _bad_type("served_version", "an integer >= 0", v)


def _prediction(obj: dict[str, Any], schema: RecordSchema) -> float | str | None | Reject:
    v = obj.get("prediction")
    if v is None:
        return None
    t = type(v)
    if schema.label_type == "multiclass":
        if t is str:
            if len(v) <= schema.max_string_length:
                return v  # type: ignore[no-any-return]
            return _too_long("prediction", v, schema.max_string_length)
        if t is int:
            return str(v)
        return _bad_type("prediction", "a class (str or int)", v)
    if t is float or t is int:
        m = schema.max_abs_value
        if -m <= v <= m:
            return float(v)
        return _out_of_range("prediction", v, m)
    if t is bool:
        return 1.0 if v else 0.0
    return _bad_type("prediction", "a number", v)


def _label(obj: dict[str, Any], schema: RecordSchema) -> bool | str | float | Reject:
    v = obj.get("label")
    t = type(v)
    lt = schema.label_type
    if lt == "binary":
        if t is bool:
            return v  # type: ignore[no-any-return]
        if (t is int or t is float) and (v == 0 or v == 1):
            return v == 1
    elif lt == "multiclass":
        if t is str:
            if not v:
                return _bad_type("label", "a non-empty class name or an integer", v)
            if len(v) <= schema.max_string_length:
                return v  # type: ignore[no-any-return]
            return _too_long("label", v, schema.max_string_length)
        if t is int:
            return str(v)
    else:
        if t is float or t is int:
            m = schema.max_abs_value
            if -m <= v <= m:
                return float(v)
            return _out_of_range("label", v, m)
    if v is None:
        return _missing("label")
    expected = {"binary": "a bool (or 0/1)", "multiclass": "a class (str or int)",
                "regression": "a number"}[lt]
    return _bad_type("label", expected, v)


# ---------------------------------------------------------------------- JSON codec

def decode_event(value: bytes | None, schema: RecordSchema, kafka_ts_ms: int | None = None) -> Event | Reject:
    """Decode one event record; never raises.

    ``kafka_ts_ms`` (the Kafka record timestamp) is used when the record has no ts.

    >>> s = RecordSchema(features={"age": "int", "country": "str"}, label_type="binary")
    >>> decode_event(b'{"id": 7, "ts": 1700000000, "features": {"age": 31, "country": "FR"}}', s)
    Event(id='7', ts=1700000000.0, features={'age': 31, 'country': 'FR'}, served_version=None, prediction=None)
    >>> decode_event(b'{"id": "a", "ts": 1, "features": {"age": "x", "country": "FR"}}', s)
    Reject(reason=<Reason.BAD_TYPE: 'bad_type'>, detail="features.age: expected int, got str 'x'")
    """
    obj = _load(value, schema)
    if type(obj) is Reject:
        return obj
    rid = _id(obj, schema)  # type: ignore[arg-type]
    if type(rid) is Reject:
        return rid
    ts = _ts(obj, schema, kafka_ts_ms)  # type: ignore[arg-type]
    if type(ts) is Reject:
        return ts
    feats = _features(obj, schema)  # type: ignore[arg-type]
    if type(feats) is Reject:
        return feats
    sv = _served_version(obj, schema)  # type: ignore[arg-type]
    if type(sv) is Reject:
        return sv
    pred = _prediction(obj, schema)  # type: ignore[arg-type]
    if type(pred) is Reject:
        return pred
    return Event(rid, ts, feats, sv, pred)  # type: ignore[arg-type]


def decode_label(value: bytes | None, schema: RecordSchema, kafka_ts_ms: int | None = None) -> Label | Reject:
    """Decode one label record; never raises.

    >>> s = RecordSchema(features={"x": "float"}, label_type="binary")
    >>> decode_label(b'{"id": "a", "ts": "2023-11-14T22:13:20Z", "label": 1}', s)
    Label(id='a', ts=1700000000.0, label=True)
    """
    obj = _load(value, schema)
    if type(obj) is Reject:
        return obj
    rid = _id(obj, schema)  # type: ignore[arg-type]
    if type(rid) is Reject:
        return rid
    ts = _ts(obj, schema, kafka_ts_ms)  # type: ignore[arg-type]
    if type(ts) is Reject:
        return ts
    label = _label(obj, schema)  # type: ignore[arg-type]
    if type(label) is Reject:
        return label
    return Label(rid, ts, label)  # type: ignore[arg-type]


def _check_lengths(values: Sequence[Any], kafka_ts_ms: Sequence[int | None] | None) -> None:
    if kafka_ts_ms is not None and len(kafka_ts_ms) != len(values):
        raise ValueError(f"kafka_ts_ms has {len(kafka_ts_ms)} timestamps for {len(values)} values")


# Batches of at least this many records first try the columnar check below.
_COLUMNAR_MIN = 16
_NONE = type(None)


def _parse_all(values: Sequence[bytes | None], schema: RecordSchema) -> list[dict[str, Any]] | None:
    """Every value parsed, when all are bytes under the size limit and JSON objects; else None."""
    if set(map(type, values)) != {bytes} or max(map(len, values)) > schema.max_record_bytes:
        return None
    try:
        objs = list(map(orjson.loads, values))
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if set(map(type, objs)) != {dict}:
        return None
    return objs


def _parse_common(values: Sequence[bytes | None],
                  schema: RecordSchema) -> tuple[list[dict[str, Any]], list[str], list[float]] | None:
    """The parsed objects of a batch with their ids and timestamps, when every record is a
    JSON object, every id a non-empty string (or every one an integer) and every ts a
    number; else None."""
    objs = _parse_all(values, schema)
    if objs is None:
        return None
    get = dict.get
    ids = list(map(get, objs, repeat(schema.id_field)))
    kinds = set(map(type, ids))
    if kinds == {str}:
        lengths = list(map(len, ids))
        if min(lengths) == 0 or max(lengths) > schema.max_string_length:
            return None
    elif kinds == {int}:
        ids = list(map(str, ids))
    else:
        return None
    ts = list(map(get, objs, repeat(schema.ts_field)))
    kinds = set(map(type, ts))
    if kinds != {float}:  # orjson never gives a NaN or an infinity: every float is finite
        if not kinds <= {float, int}:
            return None
        ts = list(map(float, ts))
    return objs, ids, ts


def _in_range(values: Sequence[Any], limit: float) -> bool:
    return bool(max(values) <= limit and min(values) >= -limit)


def _events_columnar(values: Sequence[bytes | None], schema: RecordSchema) -> list[Event] | None:
    """The events of a batch, checked a field at a time across the batch (in C: ``map``,
    ``set``, ``min``/``max``) instead of record by record; None when any record is not in
    the common form (a number where the schema has one, no missing or extra feature, no
    conversion to make but int to float), and the caller decodes record by record.
    Gives exactly what :func:`decode_event` gives for each record (a property test checks)."""
    parsed = _parse_common(values, schema)
    if parsed is None:
        return None
    objs, ids, ts = parsed
    get = dict.get
    feats = list(map(get, objs, repeat("features")))
    plan = schema._plan
    if set(map(type, feats)) != {dict} or set(map(len, feats)) != {len(plan)}:
        return None  # a feature missing, or undeclared ones the events must not keep
    names = tuple(name for name, _ in plan)
    try:  # every declared name present, and (same count) no other key
        rows = list(map(itemgetter(*names), feats)) if len(names) > 1 else [(f[names[0]],) for f in feats]
    except KeyError:
        return None
    cols = list(zip(*rows))
    converted = False
    m, il, maxlen = schema.max_abs_value, schema._int_limit, schema.max_string_length
    for k, (_, code) in enumerate(plan):
        col = cols[k]
        kinds = set(map(type, col))
        if code == 0:  # float
            if not kinds <= {float, int} or not _in_range(col, m):  # ints compared before they are converted
                return None
            if kinds != {float}:
                cols[k] = tuple(map(float, col))
                converted = True
        elif code == 1:  # int
            if kinds != {int} or not _in_range(col, il):
                return None
        elif code == 2:  # bool
            if kinds != {bool}:
                return None
        elif kinds != {str} or max(map(len, col)) > maxlen:
            return None
    if converted:
        feats = [dict(zip(names, row)) for row in zip(*cols)]
    elif set(map(tuple, feats)) != {names}:  # the contract's dicts are in schema order
        feats = [dict(zip(names, row)) for row in rows]
    versions = list(map(get, objs, repeat("served_version")))
    kinds = set(map(type, versions))
    if kinds != {_NONE}:
        if not kinds <= {int, _NONE}:
            return None
        present = [v for v in versions if v is not None]
        if min(present) < 0 or max(present) > il:
            return None
    predictions = list(map(get, objs, repeat("prediction")))
    kinds = set(map(type, predictions))
    if kinds != {_NONE}:
        present = [v for v in predictions if v is not None]
        if schema.label_type == "multiclass":
            if not kinds <= {str, _NONE} or max(map(len, present)) > maxlen:
                return None
        elif not kinds <= {float, _NONE} or not _in_range(present, m):
            return None
    return list(map(Event, ids, ts, feats, versions, predictions))


def _labels_columnar(values: Sequence[bytes | None], schema: RecordSchema) -> list[Label] | None:
    """:func:`_events_columnar` for labels: exactly what :func:`decode_label` gives, or None."""
    parsed = _parse_common(values, schema)
    if parsed is None:
        return None
    objs, ids, ts = parsed
    labels = list(map(dict.get, objs, repeat("label")))
    kinds = set(map(type, labels))
    lt = schema.label_type
    if lt == "binary":
        if kinds != {bool}:
            return None
    elif lt == "multiclass":
        if kinds != {str}:
            return None
        lengths = list(map(len, labels))
        if min(lengths) == 0 or max(lengths) > schema.max_string_length:
            return None
    else:
        if not kinds <= {float, int} or not _in_range(labels, schema.max_abs_value):
            return None
        if kinds != {float}:
            labels = list(map(float, labels))
    return list(map(Label, ids, ts, labels))


def _decode_native(native: Callable[[list[Any]], tuple[list[Any], int]], values: Sequence[bytes | None],
                   schema: RecordSchema, kafka_ts_ms: Sequence[int | None] | None,
                   decode_one: Callable[..., Any]) -> tuple[list[Any], list[tuple[int, Reject]]]:
    """``values`` through the native decoder's batch method (a record or None per value,
    and how many are None), its None values decoded here with ``decode_one``: the
    records, and ``(index, reject)`` pairs."""
    decoded, n_missing = native(values if type(values) is list else list(values))
    if not n_missing:
        return decoded, []
    good: list[Any] = []
    rejects: list[tuple[int, Reject]] = []
    for i, r in enumerate(decoded):
        if r is None:
            r = decode_one(values[i], schema, None if kafka_ts_ms is None else kafka_ts_ms[i])
            if type(r) is Reject:
                rejects.append((i, r))
                continue
        good.append(r)
    return good, rejects


def decode_events(values: Sequence[bytes | None], schema: RecordSchema,
                  kafka_ts_ms: Sequence[int | None] | None = None) -> tuple[list[Event], list[tuple[int, Reject]]]:
    """Decode a batch of event records: the events, and ``(index, reject)`` pairs for
    the rest (index into ``values``). ``kafka_ts_ms``, when given, must be as long as
    ``values`` (``ValueError`` otherwise).

    With the native data path (``ct_stream._native``, built from ``native/`` when cargo
    is present), the records in the common form are decoded natively and the others
    record by record here. Without it, a batch of :data:`_COLUMNAR_MIN` records or more
    is first checked a field at a time across the batch; a batch with any record out of
    the common form (a reject, an ISO or missing ts, a conversion beyond int to float) is
    decoded record by record. The result is the same either way.
    """
    _check_lengths(values, kafka_ts_ms)
    native = schema._native_decoder
    if native is not None:
        return _decode_native(native.events, values, schema, kafka_ts_ms, decode_event)
    if len(values) >= _COLUMNAR_MIN:
        fast = _events_columnar(values, schema)
        if fast is not None:
            return fast, []
    events: list[Event] = []
    rejects: list[tuple[int, Reject]] = []
    for i, value in enumerate(values):
        r = decode_event(value, schema, None if kafka_ts_ms is None else kafka_ts_ms[i])
        if type(r) is Reject:
            rejects.append((i, r))
        else:
            events.append(r)  # type: ignore[arg-type]
    return events, rejects


def decode_labels(values: Sequence[bytes | None], schema: RecordSchema,
                  kafka_ts_ms: Sequence[int | None] | None = None) -> tuple[list[Label], list[tuple[int, Reject]]]:
    """Decode a batch of label records, like :func:`decode_events`."""
    _check_lengths(values, kafka_ts_ms)
    native = schema._native_decoder
    if native is not None:
        return _decode_native(native.labels, values, schema, kafka_ts_ms, decode_label)
    if len(values) >= _COLUMNAR_MIN:
        fast = _labels_columnar(values, schema)
        if fast is not None:
            return fast, []
    labels: list[Label] = []
    rejects: list[tuple[int, Reject]] = []
    for i, value in enumerate(values):
        r = decode_label(value, schema, None if kafka_ts_ms is None else kafka_ts_ms[i])
        if type(r) is Reject:
            rejects.append((i, r))
        else:
            labels.append(r)  # type: ignore[arg-type]
    return labels, rejects


def _dumps(obj: dict[str, Any], what: str) -> bytes:
    try:
        value = orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError) as e:
        raise CodecError(f"cannot encode {what} as JSON: {e}") from e
    # a copy of the exact size: measured with orjson 3.13, each bytes object orjson returns
    # keeps about 4 KB of memory, so a caller holding many encoded records (a producer's
    # backlog, generated test data) would hold 20x their size
    return bytes(memoryview(value))


def encode_event(event: Event, schema: RecordSchema) -> bytes:
    """The contract JSON of an event (no validation: :func:`decode_event` checks).

    >>> s = RecordSchema(features={"x": "float"}, label_type="regression")
    >>> encode_event(Event("a", 1.5, {"x": 2.0}, 3, 0.5), s)
    b'{"id":"a","ts":1.5,"features":{"x":2.0},"served_version":3,"prediction":0.5}'
    """
    obj: dict[str, Any] = {schema.id_field: event.id, schema.ts_field: event.ts, "features": event.features}
    if event.served_version is not None:
        obj["served_version"] = event.served_version
    if event.prediction is not None:
        obj["prediction"] = event.prediction
    return _dumps(obj, "event")


def encode_label(label: Label, schema: RecordSchema) -> bytes:
    """The contract JSON of a label (no validation: :func:`decode_label` checks)."""
    return _dumps({schema.id_field: label.id, schema.ts_field: label.ts, "label": label.label}, "label")


# --------------------------------------------------------------------- Arrow codec

_ARROW_FEATURE_TYPES = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}


def _build_example_schema(schema: RecordSchema) -> pa.Schema:
    label = {"binary": pa.bool_(), "multiclass": pa.string(), "regression": pa.float64()}[schema.label_type]
    prediction = pa.string() if schema.label_type == "multiclass" else pa.float64()
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("event_ts", pa.float64(), nullable=False),
        pa.field("label_ts", pa.float64(), nullable=True),
        pa.field("label", label, nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("served_version", pa.int64(), nullable=True),
        pa.field("prediction", prediction, nullable=True),
        pa.field("source_partition", pa.int32(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
    ]
    fields += [pa.field(name, _ARROW_FEATURE_TYPES[ftype], nullable=False)
               for name, ftype in schema.features.items()]
    return pa.schema(fields, metadata={EXAMPLE_VERSION_KEY: b"1"})


def example_schema(schema: RecordSchema) -> pa.Schema:
    """The Arrow schema of joined examples: the fixed columns (:data:`FIXED_COLUMNS`),
    then one column per declared feature, named by the feature. ``label_ts`` (null when
    expired), ``served_version`` and ``prediction`` are nullable."""
    return schema._example_schema


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in table.schema], schema=table.schema)
    return pa.RecordBatch.from_arrays([pa.concat_arrays(table.column(i).chunks) for i in range(table.num_columns)],
                                      schema=table.schema)


def encode_examples(batch: pa.RecordBatch | pa.Table) -> bytes:
    """One Arrow IPC stream holding ``batch`` as a single record batch (a table's
    chunks are combined).

    >>> s = RecordSchema(features={"x": "float"}, label_type="binary")
    >>> b = examples_to_batch([{"id": "a", "event_ts": 1.0, "label_ts": 2.0, "label": True,
    ...     "outcome": "joined", "source_partition": 0, "source_offset": 5, "x": 0.5}], s)
    >>> decode_examples(encode_examples(b), s).equals(b)
    True
    """
    if isinstance(batch, pa.Table):
        batch = _one_batch(batch)
    elif not isinstance(batch, pa.RecordBatch):
        raise CodecError(f"expected a pyarrow RecordBatch or Table, got {type(batch).__name__}")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _describe(f: pa.Field) -> str:
    return f"{f.name!r} {f.type}{'' if f.nullable else ' not null'}"


def _schema_difference(expected: pa.Schema, got: pa.Schema) -> str | None:
    for i in range(max(len(expected), len(got))):
        e = expected.field(i) if i < len(expected) else None
        g = got.field(i) if i < len(got) else None
        if e is None:
            return f"column {i}: expected no column, got {_describe(g)}"  # type: ignore[arg-type]
        if g is None:
            return f"column {i}: expected {_describe(e)}, got no column"
        if not e.equals(g):
            return f"column {i}: expected {_describe(e)}, got {_describe(g)}"
    ev = (expected.metadata or {}).get(EXAMPLE_VERSION_KEY)
    gv = (got.metadata or {}).get(EXAMPLE_VERSION_KEY)
    if ev != gv:
        return f"metadata {EXAMPLE_VERSION_KEY.decode()}: expected {ev!r}, got {gv!r}"
    return None


def decode_examples(data: bytes, schema: RecordSchema | None = None) -> pa.RecordBatch:
    """Read an Arrow IPC stream of examples into one record batch. Raises
    :class:`~ct_stream.errors.CodecError` on bytes that are not a valid stream and,
    when ``schema`` is given, on columns that differ from :func:`example_schema`."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            table = reader.read_all()
        batch = _one_batch(table)
        batch.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError, OSError) as e:
        raise CodecError(f"examples message is not a valid Arrow IPC stream: {e}") from e
    if schema is not None:
        diff = _schema_difference(example_schema(schema), batch.schema)
        if diff is not None:
            raise CodecError(f"examples batch does not match the record schema: {diff}")
    return batch


def examples_to_batch(rows: Sequence[Mapping[str, Any]], schema: RecordSchema) -> pa.RecordBatch:
    """Build an example batch from dict rows (fixed column keys and feature names;
    ``label_ts``, ``served_version`` and ``prediction`` may be omitted for null).
    Raises :class:`~ct_stream.errors.CodecError` on a missing key, an ``outcome`` not
    in :data:`OUTCOMES`, a null in a non-nullable column or a value of the wrong type."""
    target = example_schema(schema)
    for i, row in enumerate(rows):
        outcome = row.get("outcome")
        if outcome not in OUTCOMES:
            raise CodecError(f"row {i}: outcome: got {outcome!r}; allowed: {', '.join(OUTCOMES)}")
    arrays = []
    for f in target:
        name = f.name
        if f.nullable:
            values = [row.get(name) for row in rows]
        else:
            values = []
            for i, row in enumerate(rows):
                v = row.get(name)
                if v is None:
                    raise CodecError(f"row {i}: {name}: missing or null; the column is not nullable")
                values.append(v)
        try:
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
            raise CodecError(f"column {name!r} ({f.type}): {e}") from e
    return pa.RecordBatch.from_arrays(arrays, schema=target)
