"""The declarative ``Topology``: one configuration object that flows through everything.

A topology is a Python file that defines ``topology = Topology(...)``::

    from ct_stream.topology import Topology

    topology = Topology(
        name="clicks",
        events_topic="clicks.events",
        labels_topic="clicks.labels",
        features={"price": "float", "country": "str"},
        label_type="binary",
        join={"max_label_delay": "30m", "grace": "10s"},
    )

Every field is checked when the object is built. A wrong value raises one
:class:`~ct_stream.errors.TopologyError` naming the dotted field, the value and what is
allowed. Nested sections (``join``, ``model``, ``drift``, ``retrain``, ``gate``,
``publish``, ``serving``) take either their dataclass or a plain ``dict``.

Durations are seconds (``int``/``float``) or strings with a unit: ``"250ms"``,
``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``. Byte sizes are integers or strings such as
``"900KB"``, ``"256MiB"``.

>>> t = Topology(name="demo", events_topic="e", labels_topic="l",
...              features={"x": "float"}, label_type="binary", join={"grace": "1m"})
>>> t.join.grace, t.examples_topic
(60.0, 'demo.examples')
>>> Topology(name="demo", events_topic="e", labels_topic="l", features={"x": "float"},
...          label_type="binary", join={"grace": -1})
Traceback (most recent call last):
...
ct_stream.errors.TopologyError: join.grace: got -1; allowed: a duration >= 0 (seconds, or a string like '30s', '5m', '2h', '7d')
"""

from __future__ import annotations

import dataclasses
import math
import re
import runpy
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from ct_stream.errors import TopologyError, TopologyLoadError
from ct_stream.records import FeatureType, LabelType, RecordSchema

__all__ = [
    "Topology",
    "JoinSpec",
    "ModelSpec",
    "DriftSpec",
    "RetrainSpec",
    "GateSpec",
    "PublishSpec",
    "ServingSpec",
    "load_topology",
    "parse_duration",
    "parse_bytes",
]

TimeoutPolicy = Literal["negative", "drop", "dlq"]
ConceptDetector = Literal["adwin", "page_hinkley", "kswin", "none"]
DataDriftMethod = Literal["psi", "ks", "none"]
GateMetric = Literal["log_loss", "accuracy", "mae", "rmse"]
Rollout = Literal["promote", "canary"]

_DURATION_HELP = "a duration >= 0 (seconds, or a string like '30s', '5m', '2h', '7d')"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BYTES_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
                "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


def parse_duration(value: Any, field_name: str = "duration") -> float:
    """Seconds from a number or a string with a unit (``ms``, ``s``, ``m``, ``h``, ``d``).

    >>> parse_duration("90s"), parse_duration("2h"), parse_duration(1.5)
    (90.0, 7200.0, 1.5)
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*", value)
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise TopologyError(field_name, value, _DURATION_HELP)
    return seconds


def parse_bytes(value: Any, field_name: str = "size") -> int:
    """Bytes from an integer or a string such as ``"900KB"`` or ``"256MiB"``.

    >>> parse_bytes("900KB"), parse_bytes("1MiB"), parse_bytes(10)
    (900000, 1048576, 10)
    """
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _BYTES_UNITS:
            size = int(m.group(1)) * _BYTES_UNITS[m.group(2).lower()]
    if size is None or size <= 0:
        raise TopologyError(field_name, value, "a size in bytes > 0 (an integer, or a string like '900KB', '256MiB')")
    return size


def _choice(field_name: str, value: Any, literal: Any) -> Any:
    options = typing.get_args(literal)
    if value not in options or isinstance(value, bool):
        raise TopologyError(field_name, value, "one of " + ", ".join(repr(o) for o in options))
    return value


def _positive_int(field_name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TopologyError(field_name, value, f"an integer >= {minimum}")
    return value


def _fraction(field_name: str, value: Any, *, open_low: bool = False, open_high: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)
    if not ok:
        lo = "0 <" if open_low else "0 <="
        hi = "< 1" if open_high else "<= 1"
        raise TopologyError(field_name, value, f"a number with {lo} x {hi}")
    return float(value)


def _bool(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TopologyError(field_name, value, "True or False")
    return value


def _optional(value: Any, check: Callable[[Any], Any]) -> Any:
    return None if value is None else check(value)


class _Spec:
    """Shared behaviour of the nested sections: build from a dict, validate, set."""

    _section = ""

    @classmethod
    def coerce(cls, value: Any, section: str) -> Any:
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            for key in value:
                if key not in allowed:
                    raise TopologyError(f"{section}.{key}", value[key], "a known key: " + ", ".join(allowed))
            return cls(**value)
        raise TopologyError(section, value, f"a {cls.__name__} or a dict with its keys")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class JoinSpec(_Spec):
    """How events wait for their labels (event time, per partition).

    ``max_label_delay``: how long an event waits for its label after its timestamp.
    ``grace``: how far behind the partition's newest timestamp a record may be and
    still be joined (older records go to the DLQ with reason ``late``).
    ``idle_timeout``: after this much wall-clock quiet, a partition's watermark moves
    with the clock so pending events still expire.
    ``timeout_policy``: what an expired event becomes: ``negative`` (an example with
    ``default_label``), ``drop`` (counted only) or ``dlq``.
    ``max_pending``: pending events per worker before the oldest expire early.
    ``max_remembered``: ids per worker kept after they closed (to catch duplicates and
    build corrections, for ``2 * max_label_delay + grace``) before the oldest are
    forgotten early.
    ``commit_interval``: seconds between transactions (micro-batch commits) at most: the
    joiner also commits as soon as its input has had no record for 0.1 s while examples wait.
    """

    max_label_delay: Any = "1h"
    grace: Any = "1m"
    idle_timeout: Any = "30s"
    timeout_policy: TimeoutPolicy = "negative"
    default_label: Any = None
    max_pending: int = 1_000_000
    max_remembered: int = 4_000_000
    commit_interval: Any = "1s"

    def __post_init__(self) -> None:
        s = "join"
        self._set("max_label_delay", parse_duration(self.max_label_delay, f"{s}.max_label_delay"))
        self._set("grace", parse_duration(self.grace, f"{s}.grace"))
        self._set("idle_timeout", parse_duration(self.idle_timeout, f"{s}.idle_timeout"))
        self._set("commit_interval", parse_duration(self.commit_interval, f"{s}.commit_interval"))
        if self.max_label_delay <= 0:
            raise TopologyError(f"{s}.max_label_delay", self.max_label_delay, "a duration > 0")
        if self.commit_interval <= 0:
            raise TopologyError(f"{s}.commit_interval", self.commit_interval, "a duration > 0")
        _choice(f"{s}.timeout_policy", self.timeout_policy, TimeoutPolicy)
        _positive_int(f"{s}.max_pending", self.max_pending)
        _positive_int(f"{s}.max_remembered", self.max_remembered)


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """The online model: a River estimator, or a function that returns a fresh one.

    ``estimator=None`` builds a default from the feature schema (see
    :meth:`Topology.build_model`). An estimator instance is cloned
    (``estimator.clone()``) for every fresh model.
    """

    estimator: Any = None
    name: str | None = None

    def __post_init__(self) -> None:
        est = self.estimator
        if est is not None and not (callable(est) or hasattr(est, "clone")):
            raise TopologyError("model.estimator", est, "a River estimator, a function returning one, or None")
        if self.name is not None and not (isinstance(self.name, str) and _NAME_RE.match(self.name)):
            raise TopologyError("model.name", self.name, "1-200 characters of A-Z a-z 0-9 . _ -")


@dataclass(frozen=True)
class DriftSpec(_Spec):
    """Drift detection: a River detector on the loss stream, and per-feature data drift.

    ``data_method``: ``psi`` (population stability index) or ``ks`` (Kolmogorov-Smirnov
    statistic) between a reference window and the current window, computed per batch.
    """

    concept_detector: ConceptDetector = "adwin"
    data_method: DataDriftMethod = "psi"
    data_threshold: float = 0.2
    reference_size: int = 10_000
    window_size: int = 5_000

    def __post_init__(self) -> None:
        _choice("drift.concept_detector", self.concept_detector, ConceptDetector)
        _choice("drift.data_method", self.data_method, DataDriftMethod)
        t = self.data_threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise TopologyError("drift.data_threshold", t, "a number > 0")
        _positive_int("drift.reference_size", self.reference_size, 10)
        _positive_int("drift.window_size", self.window_size, 10)


@dataclass(frozen=True)
class RetrainSpec(_Spec):
    """When to retrain from a snapshot of the recent window, and how big the window is.

    Each trigger can be turned off: ``every_examples=None``, ``every_seconds=None``,
    ``on_drift=False``. ``cooldown`` is the least time between two retrains.
    """

    every_examples: int | None = 100_000
    every_seconds: Any = "1h"
    on_drift: bool = True
    cooldown: Any = "5m"
    window_rows: int = 200_000
    window_bytes: Any = "256MiB"
    data_dir: str = "ct-stream-data"

    def __post_init__(self) -> None:
        s = "retrain"
        _optional(self.every_examples, lambda v: _positive_int(f"{s}.every_examples", v))
        self._set("every_seconds", _optional(self.every_seconds, lambda v: parse_duration(v, f"{s}.every_seconds")))
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise TopologyError(f"{s}.every_seconds", self.every_seconds, "a duration > 0, or None to turn it off")
        _bool(f"{s}.on_drift", self.on_drift)
        self._set("cooldown", parse_duration(self.cooldown, f"{s}.cooldown"))
        _positive_int(f"{s}.window_rows", self.window_rows, 100)
        self._set("window_bytes", parse_bytes(self.window_bytes, f"{s}.window_bytes"))
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise TopologyError(f"{s}.data_dir", self.data_dir, "a non-empty directory path")


@dataclass(frozen=True)
class GateSpec(_Spec):
    """Champion/challenger validation of every candidate on a temporal holdout.

    ``metric=None`` picks ``log_loss`` for binary and multiclass labels, ``mae`` for
    regression. A candidate must beat the champion with a paired test at ``alpha`` on at
    least ``min_samples`` holdout examples, and pass the guards (finite predictions,
    ``max_predict_latency`` per example, ``max_artifact_bytes``).
    """

    metric: GateMetric | None = None
    holdout_size: int = 5_000
    min_samples: int = 1_000
    alpha: float = 0.05
    max_predict_latency: Any = "1ms"
    max_artifact_bytes: Any = "64MiB"

    def __post_init__(self) -> None:
        s = "gate"
        _optional(self.metric, lambda v: _choice(f"{s}.metric", v, GateMetric))
        _positive_int(f"{s}.holdout_size", self.holdout_size, 10)
        _positive_int(f"{s}.min_samples", self.min_samples, 10)
        if self.min_samples > self.holdout_size:
            raise TopologyError(f"{s}.min_samples", self.min_samples, f"at most gate.holdout_size ({self.holdout_size})")
        _fraction(f"{s}.alpha", self.alpha, open_low=True, open_high=True)
        self._set("max_predict_latency", parse_duration(self.max_predict_latency, f"{s}.max_predict_latency"))
        self._set("max_artifact_bytes", parse_bytes(self.max_artifact_bytes, f"{s}.max_artifact_bytes"))


@dataclass(frozen=True)
class PublishSpec(_Spec):
    """How approved versions reach ``<name>.models``.

    Artifacts up to ``inline_max_bytes`` travel inside the message; larger ones are
    written under ``artifact_dir`` and referenced by a ``file://`` URI with their sha256.
    ``online_every``: how often the online model is offered to the gate as a candidate.
    """

    inline_max_bytes: Any = "900KB"
    artifact_dir: str = "ct-stream-data/artifacts"
    online_every: Any = "5m"

    def __post_init__(self) -> None:
        s = "publish"
        self._set("inline_max_bytes", parse_bytes(self.inline_max_bytes, f"{s}.inline_max_bytes"))
        if self.inline_max_bytes > 950_000:
            raise TopologyError(f"{s}.inline_max_bytes", self.inline_max_bytes,
                                "at most 950000 bytes (a Kafka message's default limit is 1 MB)")
        if not isinstance(self.artifact_dir, str) or not self.artifact_dir:
            raise TopologyError(f"{s}.artifact_dir", self.artifact_dir, "a non-empty directory path")
        self._set("online_every", parse_duration(self.online_every, f"{s}.online_every"))


@dataclass(frozen=True)
class ServingSpec(_Spec):
    """Serving-node policy: canary fraction, shadow scoring, automatic canary analysis.

    ``rollout``: ``promote`` (default) publishes an approved candidate as the new champion
    at once; ``canary`` publishes it as a canary (served to ``canary_fraction`` of request
    keys) once a champion exists, and the trainer promotes or rolls it back after
    ``canary_min_labels`` labelled examples of its served predictions (docs/trainer.md).
    Canary analysis needs serving nodes that log their predictions to the events topic.
    """

    canary_fraction: float = 0.05
    shadow: bool = False
    canary_min_labels: int = 1_000
    log_predictions: bool = True
    rollout: Rollout = "promote"

    def __post_init__(self) -> None:
        _choice("serving.rollout", self.rollout, Rollout)
        _fraction("serving.canary_fraction", self.canary_fraction)
        _bool("serving.shadow", self.shadow)
        _positive_int("serving.canary_min_labels", self.canary_min_labels)
        _bool("serving.log_predictions", self.log_predictions)


_SECTIONS: dict[str, type[_Spec]] = {
    "join": JoinSpec, "model": ModelSpec, "drift": DriftSpec, "retrain": RetrainSpec,
    "gate": GateSpec, "publish": PublishSpec, "serving": ServingSpec,
}


@dataclass(frozen=True)
class Topology:
    """One continuous-training pipeline: its topics, record contract and policies.

    ``features`` declares the feature schema (name -> ``"float"``, ``"int"``,
    ``"bool"`` or ``"str"``); ``label_type`` is ``"binary"``, ``"multiclass"`` or
    ``"regression"``. ``partitions`` and ``replication_factor`` apply to the topics
    ct-stream creates (examples, models, dlq, joiner-state) and, in the demo, to the
    events and labels topics. ``kafka`` is passed through to every Kafka client
    (SASL/SSL settings and the like); ``bootstrap.servers`` comes from the command line.
    """

    name: str
    events_topic: str
    labels_topic: str
    features: Mapping[str, FeatureType]
    label_type: LabelType
    id_field: str = "id"
    ts_field: str = "ts"
    partitions: int = 6
    replication_factor: int = 1
    max_record_bytes: Any = "1MiB"
    join: Any = field(default_factory=JoinSpec)
    model: Any = field(default_factory=ModelSpec)
    drift: Any = field(default_factory=DriftSpec)
    retrain: Any = field(default_factory=RetrainSpec)
    gate: Any = field(default_factory=GateSpec)
    publish: Any = field(default_factory=PublishSpec)
    serving: Any = field(default_factory=ServingSpec)
    kafka: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for key in ("name", "events_topic", "labels_topic"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
                raise TopologyError(key, value, "a Kafka topic name: 1-200 characters of A-Z a-z 0-9 . _ -")
        if self.events_topic == self.labels_topic:
            raise TopologyError("labels_topic", self.labels_topic, "a topic other than events_topic")
        for key in ("id_field", "ts_field"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise TopologyError(key, value, "a non-empty JSON field name")
        _positive_int("partitions", self.partitions)
        _positive_int("replication_factor", self.replication_factor)
        set_("max_record_bytes", parse_bytes(self.max_record_bytes, "max_record_bytes"))
        if not isinstance(self.features, Mapping) or not self.features:
            raise TopologyError("features", self.features, "a non-empty dict of feature name -> 'float', 'int', 'bool' or 'str'")
        _choice("label_type", self.label_type, LabelType)
        for section, spec in _SECTIONS.items():
            set_(section, spec.coerce(getattr(self, section), section))
        if not isinstance(self.kafka, Mapping) or not all(isinstance(k, str) for k in self.kafka):
            raise TopologyError("kafka", self.kafka, "a dict of librdkafka settings (string keys)")
        if "bootstrap.servers" in self.kafka:
            raise TopologyError("kafka.bootstrap.servers", self.kafka["bootstrap.servers"],
                                "not set here: pass --bootstrap on the command line")
        set_("kafka", dict(self.kafka))
        # The record schema validates the features and limits (raises TopologyError).
        set_("_schema", RecordSchema(features=dict(self.features), label_type=self.label_type,
                                     id_field=self.id_field, ts_field=self.ts_field,
                                     max_record_bytes=self.max_record_bytes))
        set_("features", dict(self.features))
        self._check_default_label()
        self._check_gate_metric()

    def _check_gate_metric(self) -> None:
        metric = self.gate.metric
        allowed = ("mae", "rmse") if self.label_type == "regression" else ("log_loss", "accuracy")
        if metric is not None and metric not in allowed:
            raise TopologyError("gate.metric", metric,
                                f"one of {', '.join(repr(a) for a in allowed)} for label_type {self.label_type!r} "
                                "(or None for the default)")

    def _check_default_label(self) -> None:
        join: JoinSpec = self.join
        value = join.default_label
        if join.timeout_policy != "negative":
            return
        if self.label_type == "binary":
            if value is None:
                object.__setattr__(join, "default_label", False)
            elif not isinstance(value, bool) and value not in (0, 1):
                raise TopologyError("join.default_label", value, "False/True (or 0/1) for a binary label")
            else:
                object.__setattr__(join, "default_label", bool(value))
        elif self.label_type == "multiclass":
            if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
                raise TopologyError("join.default_label", value,
                                    "a class (str or int) when timeout_policy is 'negative' and label_type 'multiclass'")
            object.__setattr__(join, "default_label", str(value))
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise TopologyError("join.default_label", value,
                                    "a finite number when timeout_policy is 'negative' and label_type 'regression'")
            object.__setattr__(join, "default_label", float(value))

    # Derived names -----------------------------------------------------------------
    @property
    def examples_topic(self) -> str:
        """Joined examples (Arrow IPC batches): ``<name>.examples``."""
        return f"{self.name}.examples"

    @property
    def models_topic(self) -> str:
        """The promotion topic (compacted): ``<name>.models``."""
        return f"{self.name}.models"

    @property
    def dlq_topic(self) -> str:
        """Dead letters with a reason header: ``<name>.dlq``."""
        return f"{self.name}.dlq"

    @property
    def state_topic(self) -> str:
        """The joiner's state changelog (compacted): ``<name>.joiner-state``."""
        return f"{self.name}.joiner-state"

    @property
    def model_name(self) -> str:
        """The key of this topology's model on the promotion topic."""
        return self.model.name or self.name

    @property
    def record_schema(self) -> RecordSchema:
        """The record contract (feature schema, label type, fields, limits)."""
        return self._schema  # type: ignore[attr-defined,no-any-return]

    def build_model(self) -> Any:
        """A fresh, untrained River estimator as the topology declares it.

        The default (``model.estimator=None``) scales the numeric features, passes the
        booleans through, one-hot encodes the strings, and ends in a linear model for the
        label type: ``LogisticRegression`` (binary), ``SoftmaxRegression``
        (multiclass) or ``LinearRegression`` (regression).
        """
        est = self.model.estimator
        if est is None:
            return self._default_model()
        model = est.clone() if hasattr(est, "clone") and hasattr(est, "learn_one") else est()
        if not hasattr(model, "learn_one"):
            raise TopologyError("model.estimator", model, "a River estimator (with learn_one)")
        if self.label_type != "regression" and not hasattr(model, "predict_proba_one"):
            raise TopologyError("model.estimator", model,
                                f"a River classifier (with predict_proba_one) for label_type {self.label_type!r}")
        if self.label_type == "regression" and not hasattr(model, "predict_one"):
            raise TopologyError("model.estimator", model, "a River regressor (with predict_one)")
        return model

    def _default_model(self) -> Any:
        from river import compose, linear_model, preprocessing

        by_kind: dict[str, list[str]] = {"num": [], "bool": [], "str": []}
        for name, kind in self.features.items():
            by_kind["num" if kind in ("float", "int") else kind].append(name)
        parts = []
        if by_kind["num"]:
            parts.append(compose.Select(*by_kind["num"]) | preprocessing.StandardScaler())
        if by_kind["bool"]:
            parts.append(compose.Select(*by_kind["bool"]))
        if by_kind["str"]:
            parts.append(compose.Select(*by_kind["str"]) | preprocessing.OneHotEncoder())
        features = parts[0]
        for part in parts[1:]:
            features = features + part
        head = {"binary": linear_model.LogisticRegression,
                "multiclass": linear_model.SoftmaxRegression,
                "regression": linear_model.LinearRegression}[self.label_type]
        return features | head()

    def describe(self) -> dict[str, Any]:
        """A plain-data summary (sections as dicts, the model as its repr)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out["model"] = {"estimator": str(self.build_model()), "name": self.model_name}
        return out


def load_topology(path: str | Path) -> Topology:
    """Run a topology file and return the ``Topology`` it defines as ``topology``.

    Raises :class:`~ct_stream.errors.TopologyError` (with ``source`` set to the file)
    for an invalid field, :class:`~ct_stream.errors.TopologyLoadError` when the file
    cannot be read, fails to run, or defines no ``topology``.
    """
    p = Path(path)
    if not p.is_file():
        raise TopologyLoadError(f"{p}: no such topology file")
    try:
        namespace = runpy.run_path(str(p), run_name="__ct_stream_topology__")
    except TopologyError as e:
        raise TopologyError(e.field, e.value, e.allowed, source=str(p)) from None
    except Exception as e:  # the user's file failed: say where and what
        raise TopologyLoadError(f"{p}: failed to run: {type(e).__name__}: {e}") from e
    topo = namespace.get("topology")
    if topo is None:
        raise TopologyLoadError(f"{p}: defines no `topology`; add `topology = Topology(...)`")
    if not isinstance(topo, Topology):
        raise TopologyLoadError(f"{p}: `topology` is a {type(topo).__name__}, expected ct_stream.topology.Topology")
    try:
        topo.build_model()
    except TopologyError as e:
        raise TopologyError(e.field, e.value, e.allowed, source=str(p)) from None
    except Exception as e:
        raise TopologyLoadError(f"{p}: model.estimator failed to build: {type(e).__name__}: {e}") from e
    return topo
