"""The trainer's learner: joined Arrow example batches in, a learned model and metrics out.

:func:`make_learner` picks one of two paths from the topology:

* ``"batch"``: binary labels, the default model (``model.estimator=None``) and at least one
  float/int/bool feature. The batch becomes a float64 matrix (float/int features first, run
  through :class:`~ct_stream.learn.linear.BatchLogisticRegression`'s running scaler; then the
  bool features as 0/1; then one one-hot indicator column per ``(str feature, category)``, in
  order of first appearance) and is learned with ``learn_batch``: the same prequential
  probabilities as River's default pipeline driven one example at a time, vectorised.
* ``"per_example"``: everything else (multiclass, regression, custom River estimators, a
  binary topology whose features are all ``str``). For each row in order:
  ``predict_proba_one`` (classifiers) or ``predict_one`` (regressors), then ``learn_one``.

Every row is learned with weight 1.0 and the label it carries: joined rows their label,
expired rows the topology's default label, corrections their true label (see
docs/learning.md, "Corrections").

Pure code: no Kafka, threads, clock reads, environment variables or global state.

>>> from ct_stream.topology import Topology
>>> from ct_stream.records import examples_to_batch
>>> t = Topology(name="t", events_topic="t.e", labels_topic="t.l",
...              features={"x": "float", "c": "str"}, label_type="binary")
>>> rows = [{"id": str(i), "event_ts": float(i), "label": i % 2 == 0, "outcome": "joined",
...          "source_partition": 0, "source_offset": i, "x": float(i), "c": "ab"[i % 2]}
...         for i in range(4)]
>>> learner = make_learner(t)
>>> learner.path
'batch'
>>> step = learner.learn(examples_to_batch(rows, t.record_schema))
>>> step.rows, float(step.prediction[0]), learner.examples_learned
(4, 0.5, 4)
>>> sorted(learner.metrics())[:3]
['accuracy', 'log_loss', 'n']
>>> fmt, data = learner.artifact()
>>> served = learner_from_artifact(fmt, data, t)
>>> batch = examples_to_batch(rows, t.record_schema)
>>> fmt, bool((served.predictions(batch) == learner.predictions(batch)).all())
('ct_stream.linear/1', True)
"""

from __future__ import annotations

import inspect
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ct_stream.errors import LearnError
from ct_stream.gate import losses as gate_losses
from ct_stream.learn.linear import STATE_KIND as LINEAR_STATE_KIND
from ct_stream.learn.linear import BatchLogisticRegression
from ct_stream.learn.metrics import PrequentialMetrics

if TYPE_CHECKING:
    from ct_stream.topology import Topology

__all__ = [
    "ARTIFACT_LINEAR",
    "ARTIFACT_RIVER",
    "LEARNER_STATE_KIND",
    "LearnStep",
    "OnlineLearner",
    "VersionMetrics",
    "learner_from_artifact",
    "make_learner",
]

F64 = NDArray[np.float64]

#: Artifact format of the batch path (JSON, see :meth:`OnlineLearner.artifact`).
ARTIFACT_LINEAR = "ct_stream.linear/1"
#: Artifact format of the per-example path (a pickled River estimator).
ARTIFACT_RIVER = "river.pickle"
#: The ``kind`` tag of :meth:`OnlineLearner.state`; bump on format changes.
LEARNER_STATE_KIND = "ct_stream.learn.OnlineLearner/1"
_STREAM_METRICS_KIND = "ct_stream.learn.online.StreamMetrics/1"
_VERSION_METRICS_KIND = "ct_stream.learn.online.VersionMetrics/1"

_EPS = 1e-15
_MISSING = object()  # predict_one: a feature absent from the dict
_ARROW_FEATURE = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
_ARROW_LABEL = {"binary": pa.bool_(), "multiclass": pa.string(), "regression": pa.float64()}
_LABEL_HELP = {"binary": "a non-null bool column (label_type 'binary')",
               "multiclass": "a non-null string column (label_type 'multiclass')",
               "regression": "a non-null float64 column of finite numbers (label_type 'regression')"}


# ------------------------------------------------------------------ batch access helpers

Data = pa.RecordBatch | pa.Table


def _check_data(data: Any) -> None:
    if not isinstance(data, (pa.RecordBatch, pa.Table)):
        raise LearnError("batch", type(data).__name__, "a pyarrow RecordBatch or Table of examples")


def _column(data: Data, name: str, want: pa.DataType, help_: str) -> pa.Array:
    """Column ``name`` as one non-null Arrow array of type ``want``, or LearnError."""
    idx = data.schema.get_field_index(name)
    if idx < 0:
        raise LearnError(f"batch.{name}", "no such column", help_)
    got = data.schema.field(idx).type
    if got != want:
        raise LearnError(f"batch.{name}", f"a {got} column", help_)
    col = data.column(idx)
    if isinstance(col, pa.ChunkedArray):
        col = pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], type=want)
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise LearnError(f"batch.{name}[{first}]", None, help_ + " (no nulls)")
    return col


def _finite(values: F64, name: str) -> F64:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LearnError(f"batch.{name}[{i}]", float(values[i]),
                         "a finite number (no NaN/inf; the joiner validates this upstream)")
    return values


def _log_loss(p_true: F64) -> F64:
    """``-ln clip(p_true)``: River's clamp to ``[1e-15, 1 - 1e-15]``."""
    return -np.log(np.clip(p_true, _EPS, 1.0 - _EPS))


def _accepts_w(model: Any) -> bool:
    """Whether ``model.learn_one`` takes a ``w`` sample weight.

    River pipelines take ``**params`` and route ``w`` only to the steps that declare it, so
    they count as accepting it.
    """
    try:
        params = inspect.signature(type(model).learn_one).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return "w" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------ metrics


class _StreamMetrics:
    """Cumulative and rolling means of per-row quantities (multiclass and regression).

    ``names`` are the per-row quantities (``log_loss``/``correct`` or ``abs``/``sq``); the
    rolling window keeps the last ``window`` rows in a ring buffer.
    """

    def __init__(self, names: Sequence[str], window: int) -> None:
        self.names = list(names)
        self.window = int(window)
        self.n = 0
        self.sums = np.zeros(len(self.names))
        self._buf = np.zeros((self.window, len(self.names)))
        self._head = 0
        self._filled = 0

    def update(self, values: F64) -> None:
        """``values``: (rows, len(names))."""
        rows = values.shape[0]
        self.n += rows
        self.sums += values.sum(axis=0)
        k = min(rows, self.window)
        slots = (self._head + np.arange(k)) % self.window
        self._buf[slots] = values[rows - k:]
        self._head = (self._head + k) % self.window
        self._filled = min(self.window, self._filled + k)

    def _recent(self) -> F64:
        order = (self._head - self._filled + np.arange(self._filled)) % self.window
        return self._buf[order]

    def means(self) -> tuple[F64, F64]:
        """``(cumulative means, rolling means)``, NaN when empty."""
        nan = np.full(len(self.names), np.nan)
        cum = self.sums / self.n if self.n else nan
        recent = self._recent()
        return cum, (recent.mean(axis=0) if len(recent) else nan)

    def state(self) -> dict[str, Any]:
        return {"kind": _STREAM_METRICS_KIND, "names": self.names, "window": self.window,
                "n": self.n, "sums": self.sums.tolist(), "recent": self._recent().tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _StreamMetrics:
        if not isinstance(state, dict) or state.get("kind") != _STREAM_METRICS_KIND:
            raise LearnError('state["metrics"]', state, repr(_STREAM_METRICS_KIND))
        m = cls(state["names"], state["window"])
        m.n = int(state["n"])
        m.sums = np.asarray(state["sums"], dtype=np.float64)
        recent = np.asarray(state["recent"], dtype=np.float64).reshape(-1, len(m.names))
        f = len(recent)
        m._buf[:f] = recent
        m._filled, m._head = f, f % m.window
        return m


# ------------------------------------------------------------------ the learner


@dataclass(frozen=True)
class LearnStep:
    """What :meth:`OnlineLearner.learn` did with one batch (arrays of shape ``(rows,)``).

    ``loss``: prequential loss per row (log loss for binary/multiclass, absolute error for
    regression). ``error``: 0/1 misclassification (binary/multiclass) or absolute error
    (regression), for the concept-drift detector. ``prediction``: binary P(y=1), multiclass
    P(true class), regression the predicted value, each made before the row was learned.
    """

    rows: int
    loss: F64
    error: F64
    prediction: F64


def _feature_pairs(topology: Topology) -> list[list[str]]:
    """``[[name, type], ...]`` in declared order (a JSON object's key order is not kept)."""
    return [[name, kind] for name, kind in topology.features.items()]


def _path_of(topology: Topology) -> str:
    kinds = set(topology.features.values())
    if (topology.label_type == "binary" and topology.model.estimator is None
            and kinds & {"float", "int", "bool"}):
        return "batch"
    return "per_example"


class OnlineLearner:
    """Test-then-train learner of one topology; see the module docstring for the two paths.

    Build it with :func:`make_learner` (fresh), :meth:`from_state` (a checkpoint) or
    :func:`learner_from_artifact` (a published model).

    >>> from ct_stream.topology import Topology
    >>> t = Topology(name="t", events_topic="t.e", labels_topic="t.l",
    ...              features={"x": "float"}, label_type="regression",
    ...              join={"default_label": 0.0})
    >>> learner = make_learner(t)
    >>> learner.path, learner.examples_learned, learner.metrics()["n"]
    ('per_example', 0, 0.0)
    """

    path: str
    topology: Topology
    label_type: str
    examples_learned: int

    def __init__(self, topology: Topology, *, path: str | None = None) -> None:
        from ct_stream.topology import Topology

        if not isinstance(topology, Topology):
            raise LearnError("topology", type(topology).__name__, "a ct_stream.topology.Topology")
        self._init_empty(topology, _path_of(topology) if path is None else path)
        if self.path not in ("batch", "per_example"):
            raise LearnError("path", self.path, "'batch' or 'per_example'")
        if self.path == "batch":
            if self.label_type != "binary":
                raise LearnError("path", "batch", f"'per_example' for label_type {self.label_type!r}")
            if not (self._numeric or self._bool):
                raise LearnError("path", "batch", "'per_example' when every feature is 'str'")
            self._blr = BatchLogisticRegression(len(self._numeric), len(self._bool))
        else:
            self._set_river(topology.build_model())

    # ------------------------------------------------------------------ internals
    def _set_river(self, model: Any) -> None:
        need = "predict_one" if self.label_type == "regression" else "predict_proba_one"
        if not (hasattr(model, "learn_one") and hasattr(model, need)):
            raise LearnError("model", model, f"a River estimator with learn_one and {need}")
        self._river = model
        self._w_ok = _accepts_w(model)

    def _new_metrics(self) -> Any:
        if self.label_type == "binary":
            return PrequentialMetrics(window=self._window)
        names = ["log_loss", "correct"] if self.label_type == "multiclass" else ["abs", "sq"]
        return _StreamMetrics(names, self._window)

    def _labels(self, data: Data) -> pa.Array:
        return _column(data, "label", _ARROW_LABEL[self.label_type], _LABEL_HELP[self.label_type])

    def _feature(self, data: Data, name: str) -> pa.Array:
        kind = self.topology.features[name]
        want = _ARROW_FEATURE[kind]
        return _column(data, name, want, f"a non-null {want} column (feature {name!r} is declared {kind!r})")

    def _numeric_block(self, data: Data, check: bool) -> F64:
        rows = data.num_rows
        out = np.empty((rows, len(self._numeric)))
        for j, name in enumerate(self._numeric):
            col = self._feature(data, name).to_numpy(zero_copy_only=False).astype(np.float64)
            out[:, j] = _finite(col, name) if check else col
        return out

    def _matrix(self, data: Data, *, grow: bool) -> tuple[F64, list[tuple[str, str]]]:
        """The batch path's X for the current columns, plus the new one-hot columns it needs
        (when ``grow``; their indicators are already in X). Unknown categories get no column
        when not ``grow`` (weight 0: they add nothing to the margin). Changes nothing."""
        rows = data.num_rows
        num = self._numeric_block(data, check=True)
        bools = [self._feature(data, n).to_numpy(zero_copy_only=False) for n in self._bool]
        encoded = []
        first_seen: list[tuple[int, int, str, str]] = []  # (row, feature position, feature, category)
        for pos, name in enumerate(self._str):
            enc = pc.dictionary_encode(self._feature(data, name))
            cats = enc.dictionary.to_pylist()
            idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.intp)
            known = self._cat_col[name]
            if grow and rows:
                new = [k for k, c in enumerate(cats) if c not in known]
                if new:
                    _, first = np.unique(idx, return_index=True)  # dictionary order == appearance
                    first_seen += [(int(first[k]), pos, name, cats[k]) for k in new]
            encoded.append((name, cats, idx))
        first_seen.sort()
        new_cols = [(f, c) for _, _, f, c in first_seen]
        base = len(self._numeric) + len(self._bool)
        extra = {(f, c): base + len(self._onehot) + i for i, (f, c) in enumerate(new_cols)}
        width = base + len(self._onehot) + len(new_cols)
        X = np.zeros((rows, width))
        X[:, : len(self._numeric)] = num
        for j, b in enumerate(bools):
            X[:, len(self._numeric) + j] = b
        r = np.arange(rows)
        for name, cats, idx in encoded:
            known = self._cat_col[name]
            colmap = np.array([known.get(c, extra.get((name, c), -1)) for c in cats], dtype=np.intp)
            cols = colmap[idx] if rows else np.empty(0, dtype=np.intp)
            hit = cols >= 0
            X[r[hit], cols[hit]] = 1.0
        return X, new_cols

    def _rows(self, data: Data) -> list[dict[str, Any]]:
        """Per-example feature dicts (numeric columns checked for NaN/inf first)."""
        cols = []
        for name in self._names:
            arr = self._feature(data, name)
            if self.topology.features[name] in ("float", "int"):
                _finite(arr.to_numpy(zero_copy_only=False).astype(np.float64), name)
            cols.append(arr.to_pylist())
        names = self._names
        return [dict(zip(names, vals)) for vals in zip(*cols)]

    def _label_values(self, data: Data) -> tuple[pa.Array, Any]:
        lab = self._labels(data)
        if self.label_type == "regression":
            _finite(lab.to_numpy(zero_copy_only=False), "label")
        return lab, lab.to_numpy(zero_copy_only=False)

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Data) -> LearnStep:
        """Test then train on ``batch``, rows in order; returns the prequential results.

        Invalid input (a missing or mistyped column, a null, NaN/inf in a numeric feature or
        a regression label) raises :class:`~ct_stream.errors.LearnError` before anything is
        learned.
        """
        _check_data(batch)
        rows = batch.num_rows
        if self.path == "batch":
            step = self._learn_batch(batch)
        else:
            step = self._learn_per_example(batch)
        self.examples_learned += rows
        return step

    def _learn_batch(self, batch: Data) -> LearnStep:
        assert self._blr is not None
        _, y = self._label_values(batch)
        X, new_cols = self._matrix(batch, grow=True)
        # X is valid (checked above): commit the new categories, then learn
        for f, c in new_cols:
            self._cat_col[f][c] = len(self._numeric) + len(self._bool) + len(self._onehot)
            self._onehot.append((f, c))
        if new_cols:
            self._blr.add_passthrough(len(new_cols))
        yb = y.astype(bool)
        p = self._blr.learn_batch(X, yb)
        self._metrics.update(p, yb)
        loss = _log_loss(np.where(yb, p, 1.0 - p))
        return LearnStep(len(p), loss, ((p > 0.5) != yb).astype(np.float64), p)

    def _learn_per_example(self, batch: Data) -> LearnStep:
        lab, y_np = self._label_values(batch)
        xs = self._rows(batch)
        ys = lab.to_pylist()
        rows = len(ys)
        model = self._river
        kw = {"w": 1.0} if self._w_ok else {}  # every example weighs 1.0 (see docs/learning.md)
        pred = np.empty(rows)
        if self.label_type == "regression":
            predict, learn = model.predict_one, model.learn_one
            for i, (x, y) in enumerate(zip(xs, ys)):
                v = predict(x)
                pred[i] = 0.0 if v is None else v
                learn(x, y, **kw)
            err = np.abs(y_np - pred)
            self._metrics.update(np.column_stack([err, err * err]))
            return LearnStep(rows, err, err.copy(), pred)
        predict, learn = model.predict_proba_one, model.learn_one
        if self.label_type == "binary":
            for i, (x, y) in enumerate(zip(xs, ys)):
                pred[i] = predict(x).get(True, 0.0)
                learn(x, y, **kw)
            yb = y_np.astype(bool)
            self._metrics.update(pred, yb)
            loss = _log_loss(np.where(yb, pred, 1.0 - pred))
            return LearnStep(rows, loss, ((pred > 0.5) != yb).astype(np.float64), pred)
        correct = np.empty(rows)
        for i, (x, y) in enumerate(zip(xs, ys)):
            proba = predict(x)
            pred[i] = proba.get(y, 0.0)
            correct[i] = bool(proba) and max(proba, key=proba.get) == y
            learn(x, y, **kw)
        loss = _log_loss(pred)
        self._metrics.update(np.column_stack([loss, correct]))
        return LearnStep(rows, loss, 1.0 - correct, pred)

    # ------------------------------------------------------------------ read-only views
    def metrics(self) -> dict[str, float]:
        """Prequential metrics, cumulative and over the last ``drift.window_size`` rows.

        binary: ``n, log_loss, accuracy, roc_auc, rolling_log_loss, rolling_accuracy,
        rolling_roc_auc``; multiclass: ``n, log_loss, accuracy, rolling_log_loss,
        rolling_accuracy``; regression: ``n, mae, rmse, rolling_mae, rolling_rmse``.
        NaN where undefined (nothing learned yet, AUC without both classes).
        """
        if self.label_type == "binary":
            return self._metrics.get()  # type: ignore[no-any-return]
        cum, roll = self._metrics.means()
        n = float(self._metrics.n)
        if self.label_type == "multiclass":
            return {"n": n, "log_loss": float(cum[0]), "accuracy": float(cum[1]),
                    "rolling_log_loss": float(roll[0]), "rolling_accuracy": float(roll[1])}
        return {"n": n, "mae": float(cum[0]), "rmse": math.sqrt(cum[1]),
                "rolling_mae": float(roll[0]), "rolling_rmse": math.sqrt(roll[1])}

    def _probas(self, data: Data) -> list[dict[Any, float]]:
        predict = self._river.predict_proba_one
        return [predict(x) for x in self._rows(data)]

    def _p1(self, data: Data) -> F64:
        """Binary P(y=1) of the current model; learns nothing."""
        if self.path == "batch":
            assert self._blr is not None
            X, _ = self._matrix(data, grow=False)
            return self._blr.predict_proba_batch(X)
        return np.array([p.get(True, 0.0) for p in self._probas(data)], dtype=np.float64)

    def _regress(self, data: Data) -> F64:
        predict = self._river.predict_one
        return np.array([(0.0 if v is None else v) for v in map(predict, self._rows(data))],
                        dtype=np.float64)

    def predictions(self, table: Data) -> F64:
        """Raw predictions of the current model, one per row; learns nothing.

        binary: P(y=1); regression: the predicted value; multiclass: the probability of the
        predicted (most probable) class (NaN if any class probability is NaN; 0.0 while the
        model knows no class). For the gate's NaN/inf guard.
        """
        _check_data(table)
        if self.label_type == "binary":
            return self._p1(table)
        if self.label_type == "regression":
            return self._regress(table)
        out = [np.max(np.fromiter(p.values(), np.float64, len(p))) if p else 0.0
               for p in self._probas(table)]
        return np.asarray(out, dtype=np.float64)

    def gate_metric(self) -> str:
        """The gate metric: ``topology.gate.metric``, or log_loss (binary, multiclass) / mae."""
        m = self.topology.gate.metric
        return m if m is not None else ("mae" if self.label_type == "regression" else "log_loss")

    def losses(self, table: Data) -> F64:
        """Per-example gate losses of the current model on ``table``; learns nothing.

        By :meth:`gate_metric`: ``log_loss`` (binary: :func:`ct_stream.gate.losses`
        ``"log_loss"``; multiclass: ``"cross_entropy"``, a class the model does not know has
        probability 0), ``accuracy`` (0/1 error), ``mae`` (absolute error), ``rmse``
        (squared error, ``"squared_error"``). Binary ``mae``/``rmse`` score P(y=1) against
        0/1. Multiclass with mae/rmse and regression with log_loss/accuracy raise LearnError.
        """
        _check_data(table)
        metric = self.gate_metric()
        lab = self._labels(table)
        if self.label_type == "binary":
            y = lab.to_numpy(zero_copy_only=False).astype(bool)
            p = self._p1(table)
            if metric == "log_loss":
                return gate_losses("log_loss", y, p)
            if metric == "accuracy":
                return np.where(np.isfinite(p), ((p > 0.5) != y).astype(np.float64), np.nan)
            if metric == "rmse":
                return gate_losses("squared_error", y.astype(np.float64), p)
            return np.abs(y - p)
        if self.label_type == "regression":
            if metric not in ("mae", "rmse"):
                raise LearnError("gate.metric", metric, "'mae' or 'rmse' for label_type 'regression'")
            y = _finite(lab.to_numpy(zero_copy_only=False), "label")
            p = self._regress(table)
            if metric == "rmse":
                return gate_losses("squared_error", y, p)
            return np.abs(y - p)
        if metric not in ("log_loss", "accuracy"):
            raise LearnError("gate.metric", metric, "'log_loss' or 'accuracy' for label_type 'multiclass'")
        ys = lab.to_pylist()
        probas = self._probas(table)
        if metric == "accuracy":
            err = []
            for p, y in zip(probas, ys):
                vals = np.fromiter(p.values(), np.float64, len(p))
                err.append(np.nan if not np.isfinite(vals).all() else
                           float(not p or max(p, key=p.get) != y))
            return np.asarray(err, dtype=np.float64)
        classes: dict[Any, int] = {}
        for p in probas:
            for c in p:
                classes.setdefault(c, len(classes))
        for y in ys:
            classes.setdefault(y, len(classes))
        P = np.zeros((len(ys), max(2, len(classes))))
        for i, p in enumerate(probas):
            for c, v in p.items():
                P[i, classes[c]] = v
        return gate_losses("cross_entropy", np.array([classes[y] for y in ys], dtype=np.int64), P)

    def predict_one(self, features: Any) -> tuple[Any, dict[Any, float] | None]:
        """One prediction from a plain dict of feature values, without Arrow; learns nothing.

        Returns ``(value, probabilities)``: binary ``(P(True) > 0.5, {True: p, False: 1 - p})``;
        multiclass ``(most probable class or None while no class is known, River's class
        probabilities)``; regression ``(predicted value, None)``. The probability and value
        agree with :meth:`predictions` on the same row. Keys other than the declared features
        are ignored. A missing feature, a value of the wrong type or a NaN/inf number raises
        :class:`~ct_stream.errors.LearnError` naming the feature and what it accepts
        (``float``: a number; ``int``: an integer, or a float with an integral value;
        ``bool``: True/False; ``str``: a string). On the batch path, a category the model
        has never seen adds nothing to the margin, as in training.

        The batch path reads the model through a cache of plain floats that is rebuilt
        whenever the model learns, so it costs a few microseconds.

        >>> from ct_stream.topology import Topology
        >>> t = Topology(name="t", events_topic="t.e", labels_topic="t.l",
        ...              features={"x": "float", "c": "str"}, label_type="binary")
        >>> make_learner(t).predict_one({"x": 1.0, "c": "a"})
        (False, {True: 0.5, False: 0.5})
        >>> make_learner(t).predict_one({"x": "1"})
        Traceback (most recent call last):
        ...
        ct_stream.errors.LearnError: features.x: got '1'; allowed: a finite number (feature 'x' is declared 'float')
        """
        if not isinstance(features, dict):
            raise LearnError("features", type(features).__name__, "a dict of feature name -> value")
        kinds = self.topology.features
        x: dict[str, Any] = {}
        for name in self._names:
            kind = kinds[name]
            v = features.get(name, _MISSING)
            if kind == "float":
                if type(v) is float or (isinstance(v, (int, float, np.integer, np.floating))
                                        and not isinstance(v, (bool, np.bool_))):
                    v = float(v)
                    if math.isfinite(v):
                        x[name] = v
                        continue
                allowed = "a finite number"
            elif kind == "int":
                if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                    x[name] = int(v)
                    continue
                if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
                    x[name] = int(v)
                    continue
                allowed = "an integer (or a float with an integral value)"
            elif kind == "bool":
                if isinstance(v, (bool, np.bool_)):
                    x[name] = bool(v)
                    continue
                allowed = "true or false"
            else:
                if isinstance(v, str):
                    x[name] = v
                    continue
                allowed = "a string"
            raise LearnError(f"features.{name}", "missing" if v is _MISSING else v,
                             f"{allowed} (feature {name!r} is declared {kind!r})")
        if self.path == "batch":
            blr = self._blr
            assert blr is not None
            cache = getattr(self, "_one_cache", None)
            # rebuilt when the model object, its arrays or its counters change (it learned)
            objs = (blr, blr.coef, blr.mean, blr.var)
            vals = (blr.intercept, blr.n_seen, blr.count, len(self._onehot))
            if cache is None or cache[1] != vals or any(a is not b for a, b in zip(cache[0], objs)):
                ns = len(self._numeric)
                coef = blr.coef.tolist()
                scaled = [(n, float(blr.mean[j]), math.sqrt(float(blr.var[j])), coef[j])
                          for j, n in enumerate(self._numeric)]
                bools = [(n, coef[ns + j]) for j, n in enumerate(self._bool)]
                cats = [(n, {c: coef[col] for c, col in self._cat_col[n].items()}) for n in self._str]
                cache = (objs, vals, scaled, bools, cats, float(blr.intercept))
                self._one_cache = cache
            _, _, scaled, bools, cats, margin = cache
            for name, mu, sd, w in scaled:
                if sd > 0.0:
                    margin += (x[name] - mu) / sd * w
            for name, w in bools:
                if x[name]:
                    margin += w
            for name, weights in cats:
                margin += weights.get(x[name], 0.0)
            if margin < -30.0:
                p = 0.0
            elif margin > 30.0:
                p = 1.0
            else:
                p = 1.0 / (1.0 + math.exp(-margin))
            return p > 0.5, {True: p, False: 1.0 - p}
        if self.label_type == "regression":
            v = self._river.predict_one(x)
            return (0.0 if v is None else v), None
        proba = dict(self._river.predict_proba_one(x))
        if self.label_type == "binary":
            p = float(proba.get(True, 0.0))
            return p > 0.5, {True: p, False: 1.0 - p}
        return (max(proba, key=proba.get) if proba else None), proba

    def numeric_matrix(self, table: Data) -> F64:
        """float64 ``(rows, n_numeric)``: the float/int feature columns in declared order
        (not scaled, not checked for NaN/inf), for data-drift monitoring."""
        _check_data(table)
        return self._numeric_block(table, check=False)

    @property
    def numeric_features(self) -> list[str]:
        """Names of :meth:`numeric_matrix`'s columns."""
        return list(self._numeric)

    # ------------------------------------------------------------------ persistence
    def _envelope(self) -> dict[str, Any]:
        return {"kind": LEARNER_STATE_KIND, "path": self.path, "label_type": self.label_type,
                "features": _feature_pairs(self.topology), "examples_learned": self.examples_learned}

    def state(self) -> bytes:
        """A checkpoint of everything: model, metrics, one-hot map, counters.

        batch path: JSON (``model`` is :meth:`BatchLogisticRegression.state`, ``onehot`` the
        ``[feature, category]`` of each indicator column in order); per_example path: a
        pickle (the River estimator is not JSON-able). Restore with :meth:`from_state`.
        """
        env = self._envelope()
        env["metrics"] = self._metrics.state()
        if self.path == "batch":
            assert self._blr is not None
            env["model"] = self._blr.state()
            env["onehot"] = [list(fc) for fc in self._onehot]
            return orjson.dumps(env, option=orjson.OPT_SORT_KEYS)
        env["model"] = self._river
        return pickle.dumps(env, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_state(cls, data: bytes, topology: Topology) -> OnlineLearner:
        """The learner :meth:`state` saved; it continues exactly where that one stopped.

        ``topology`` must declare the same features (names, types, order) and label type.
        The per_example state is a pickle: load only checkpoints you wrote yourself.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LearnError("state", type(data).__name__, "bytes from OnlineLearner.state()")
        raw = bytes(data)
        try:
            env = orjson.loads(raw) if raw[:1] == b"{" else pickle.loads(raw)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad state
            raise LearnError("state", f"undecodable ({type(e).__name__}: {e})",
                             "bytes from OnlineLearner.state()") from None
        if not isinstance(env, dict) or env.get("kind") != LEARNER_STATE_KIND:
            got = env.get("kind") if isinstance(env, dict) else type(env).__name__
            raise LearnError('state["kind"]', got, repr(LEARNER_STATE_KIND))
        learner = cls._restore_shell(env, topology)
        try:
            learner.examples_learned = int(env["examples_learned"])
            if learner.label_type == "binary":
                learner._metrics = PrequentialMetrics.from_state(env["metrics"])
            else:
                learner._metrics = _StreamMetrics.from_state(env["metrics"])
            if learner.path == "batch":
                learner._load_linear(env["model"], env["onehot"])
            else:
                learner._set_river(env["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise LearnError("state", f"{type(e).__name__}: {e}", "bytes from OnlineLearner.state()") from None
        return learner

    @classmethod
    def _restore_shell(cls, env: dict[str, Any], topology: Topology) -> OnlineLearner:
        """A learner of ``env["path"]`` for ``topology``, after checking they match."""
        from ct_stream.topology import Topology

        if not isinstance(topology, Topology):
            raise LearnError("topology", type(topology).__name__, "a ct_stream.topology.Topology")
        if env.get("label_type") != topology.label_type:
            raise LearnError('state["label_type"]', env.get("label_type"),
                             f"{topology.label_type!r}, the topology's label_type")
        feats = env.get("features")
        if feats != _feature_pairs(topology):
            raise LearnError('state["features"]', feats,
                             f"the topology's features in order: {dict(topology.features)}")
        path = env.get("path")
        if path not in ("batch", "per_example"):
            raise LearnError('state["path"]', path, "'batch' or 'per_example'")
        learner = cls.__new__(cls)
        learner._init_empty(topology, path)
        return learner

    def _init_empty(self, topology: Topology, path: str) -> None:
        """Like ``__init__`` without building a model (from_state / artifacts fill it in)."""
        self.topology = topology
        self.label_type = topology.label_type
        self.path = path
        feats = topology.features
        self._names = list(feats)
        self._numeric = [n for n, k in feats.items() if k in ("float", "int")]
        self._bool = [n for n, k in feats.items() if k == "bool"]
        self._str = [n for n, k in feats.items() if k == "str"]
        self.examples_learned = 0
        self._window = topology.drift.window_size
        self._metrics = self._new_metrics()
        self._onehot = []
        self._cat_col = {n: {} for n in self._str}
        self._blr = None
        self._river = None
        self._w_ok = False

    def _load_linear(self, model_state: dict[str, Any], onehot: list[Any]) -> None:
        if self.label_type != "binary":
            raise LearnError("artifact", ARTIFACT_LINEAR, f"a river.pickle artifact for label_type {self.label_type!r}")
        blr = BatchLogisticRegression.from_state(model_state)
        pairs = [(str(f), str(c)) for f, c in onehot]
        if blr.n_scaled != len(self._numeric) or blr.n_passthrough != len(self._bool) + len(pairs):
            raise LearnError("model columns", (blr.n_scaled, blr.n_passthrough),
                             f"({len(self._numeric)}, {len(self._bool)} + {len(pairs)} one-hot): "
                             "the topology's numeric and bool features plus the one-hot columns")
        base = len(self._numeric) + len(self._bool)
        for i, (f, c) in enumerate(pairs):
            if f not in self._cat_col or c in self._cat_col[f]:
                raise LearnError("onehot", [f, c], "distinct [feature, category] of the topology's str features")
            self._cat_col[f][c] = base + i
        self._onehot = pairs
        self._blr = blr

    def artifact(self) -> tuple[str, bytes]:
        """``(format, bytes)`` of the model for serving and the registry.

        batch path: ``"ct_stream.linear/1"``, the sorted-key JSON of
        :meth:`BatchLogisticRegression.state` plus an ``"input"`` key that says how to build
        its X (docs/learning.md, "The artifact envelope"). Still a valid state dict, so
        :func:`ct_stream.registry.artifact.load_artifact` reads it as it is.
        per_example path: ``"river.pickle"``, the pickled River estimator.
        """
        if self.path == "batch":
            assert self._blr is not None
            env = self._blr.state()
            env["input"] = {"label_type": "binary", "scaled": list(self._numeric),
                            "bool": list(self._bool),
                            "onehot": [list(fc) for fc in self._onehot]}
            return ARTIFACT_LINEAR, orjson.dumps(env, option=orjson.OPT_SORT_KEYS)
        return ARTIFACT_RIVER, pickle.dumps(self._river, protocol=pickle.HIGHEST_PROTOCOL)

    def fresh(self) -> OnlineLearner:
        """A new, untrained learner of the topology's configuration (for a retrain)."""
        return OnlineLearner(self.topology)

    def __repr__(self) -> str:
        return (f"OnlineLearner(topology={self.topology.name!r}, path={self.path!r}, "
                f"label_type={self.label_type!r}, examples_learned={self.examples_learned})")


def make_learner(topology: Topology) -> OnlineLearner:
    """A fresh, untrained learner for ``topology`` (the path is chosen from it)."""
    return OnlineLearner(topology)


def learner_from_artifact(format: str, data: bytes, topology: Topology) -> OnlineLearner:
    """A learner that predicts like the one whose :meth:`~OnlineLearner.artifact` gave
    ``(format, data)``; its metrics and ``examples_learned`` start at zero. It can go on
    learning. ``river.pickle`` artifacts are unpickled: load only artifacts whose sha256 and
    signature were verified (:mod:`ct_stream.registry`).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LearnError("data", type(data).__name__, "the artifact's bytes")
    base = {"kind": LEARNER_STATE_KIND, "label_type": topology.label_type,
            "features": _feature_pairs(topology)}
    if format == ARTIFACT_LINEAR:
        try:
            env = orjson.loads(bytes(data))
        except orjson.JSONDecodeError as e:
            raise LearnError("artifact", f"not JSON ({e})", f"a {ARTIFACT_LINEAR} artifact") from None
        if not isinstance(env, dict) or env.get("kind") != LINEAR_STATE_KIND:
            raise LearnError("artifact kind", env.get("kind") if isinstance(env, dict) else env,
                             repr(LINEAR_STATE_KIND))
        inp = env.get("input")
        if not isinstance(inp, dict):
            raise LearnError('artifact["input"]', inp, "the feature layout (made by OnlineLearner.artifact)")
        learner = OnlineLearner._restore_shell({**base, "path": "batch"}, topology)
        if inp.get("scaled") != learner._numeric or inp.get("bool") != learner._bool:
            raise LearnError('artifact["input"]', {"scaled": inp.get("scaled"), "bool": inp.get("bool")},
                             f"scaled {learner._numeric} and bool {learner._bool} (the topology's features)")
        onehot = inp.get("onehot")
        if not isinstance(onehot, list) or not all(isinstance(fc, list) and len(fc) == 2 for fc in onehot):
            raise LearnError('artifact["input"]["onehot"]', onehot, "a list of [feature, category]")
        learner._load_linear(env, onehot)
        return learner
    if format == ARTIFACT_RIVER:
        try:
            model = pickle.loads(bytes(data))
        except Exception as e:  # noqa: BLE001
            raise LearnError("artifact", f"not a pickle ({type(e).__name__}: {e})",
                             f"a {ARTIFACT_RIVER} artifact") from None
        learner = OnlineLearner._restore_shell({**base, "path": "per_example"}, topology)
        learner._set_river(model)
        return learner
    raise LearnError("format", format, f"{ARTIFACT_LINEAR!r} or {ARTIFACT_RIVER!r}")


# ------------------------------------------------------------------ served-model metrics


class VersionMetrics:
    """Live metrics of the predictions the serving nodes made, per ``served_version``.

    ``update(batch)`` reads the example columns ``served_version``, ``prediction`` and
    ``label``; rows with a null ``served_version`` or a null (or NaN/inf) ``prediction`` are
    skipped. binary: prediction = P(y=1), ``log_loss`` (clipped like River) and
    ``accuracy`` (1 iff p > 0.5); multiclass: prediction = the class, ``accuracy``;
    regression: ``mae``, ``rmse``.

    >>> import pyarrow as pa
    >>> vm = VersionMetrics("binary")
    >>> vm.update(pa.table({"served_version": [1, 1, 2, None], "prediction": [0.9, 0.2, 0.6, 0.5],
    ...                     "label": [True, True, False, True]}))
    >>> {v: (m["n"], m["accuracy"]) for v, m in vm.get().items()}
    {1: (2.0, 0.5), 2: (1.0, 0.0)}
    """

    def __init__(self, label_type: str) -> None:
        if label_type not in _ARROW_LABEL:
            raise LearnError("label_type", label_type, "'binary', 'multiclass' or 'regression'")
        self.label_type = label_type
        self._names = {"binary": ["log_loss", "accuracy"], "multiclass": ["accuracy"],
                       "regression": ["mae", "rmse"]}[label_type]
        self._n: dict[int, float] = {}
        self._sums: dict[int, F64] = {}

    def update(self, batch: Data) -> None:
        """Add the batch's rows that carry a served version and a prediction."""
        _check_data(batch)
        pred_type = pa.string() if self.label_type == "multiclass" else pa.float64()
        ver = self._nullable(batch, "served_version", pa.int64())
        pred = self._nullable(batch, "prediction", pred_type)
        lab = _column(batch, "label", _ARROW_LABEL[self.label_type], _LABEL_HELP[self.label_type])
        keep = (ver.is_valid().to_numpy(zero_copy_only=False)
                & pred.is_valid().to_numpy(zero_copy_only=False))
        if self.label_type == "multiclass":
            pv = np.array(pred.to_pylist(), dtype=object)
            yv = np.array(lab.to_pylist(), dtype=object)
        else:
            pv = pred.to_numpy(zero_copy_only=False).astype(np.float64)
            yv = lab.to_numpy(zero_copy_only=False)
            keep &= np.isfinite(pv)
        if not keep.any():
            return
        versions = ver.to_numpy(zero_copy_only=False)[keep].astype(np.int64)
        pv, yv = pv[keep], yv[keep]
        if self.label_type == "binary":
            yb = yv.astype(bool)
            q = np.clip(pv, _EPS, 1.0 - _EPS)
            values = np.column_stack([-np.log(np.where(yb, q, 1.0 - q)), (pv > 0.5) == yb])
        elif self.label_type == "multiclass":
            values = (pv == yv).astype(np.float64)[:, None]
        else:
            err = np.abs(yv.astype(np.float64) - pv)
            values = np.column_stack([err, err * err])
        uniq, inv = np.unique(versions, return_inverse=True)
        counts = np.bincount(inv, minlength=len(uniq))
        sums = np.stack([np.bincount(inv, weights=values[:, j], minlength=len(uniq))
                         for j in range(values.shape[1])], axis=1)
        for k, v in enumerate(uniq.tolist()):
            self._n[v] = self._n.get(v, 0.0) + float(counts[k])
            self._sums[v] = self._sums.get(v, np.zeros(values.shape[1])) + sums[k]

    @staticmethod
    def _nullable(batch: Data, name: str, want: pa.DataType) -> pa.Array:
        idx = batch.schema.get_field_index(name)
        if idx < 0 or batch.schema.field(idx).type != want:
            got = "no such column" if idx < 0 else f"a {batch.schema.field(idx).type} column"
            raise LearnError(f"batch.{name}", got, f"a {want} column (nulls allowed)")
        col = batch.column(idx)
        if isinstance(col, pa.ChunkedArray):
            col = pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], type=want)
        return col

    def get(self) -> dict[int, dict[str, float]]:
        """``{version: {"n": rows, <metric>: value, ...}}``, versions ascending."""
        out: dict[int, dict[str, float]] = {}
        for v in sorted(self._n):
            n, s = self._n[v], self._sums[v]
            m = {"n": n}
            if self.label_type == "regression":
                m["mae"], m["rmse"] = float(s[0] / n), math.sqrt(s[1] / n)
            else:
                m.update({name: float(s[j] / n) for j, name in enumerate(self._names)})
            out[v] = m
        return out

    def state(self) -> dict[str, Any]:
        """A JSON-able dict (versions as string keys)."""
        return {"kind": _VERSION_METRICS_KIND, "label_type": self.label_type,
                "versions": {str(v): [self._n[v], self._sums[v].tolist()] for v in self._n}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VersionMetrics:
        """Rebuild from :meth:`state`."""
        if not isinstance(state, dict) or state.get("kind") != _VERSION_METRICS_KIND:
            got = state.get("kind") if isinstance(state, dict) else state
            raise LearnError('state["kind"]', got, repr(_VERSION_METRICS_KIND))
        vm = cls(state["label_type"])
        for v, (n, sums) in state["versions"].items():
            vm._n[int(v)] = float(n)
            vm._sums[int(v)] = np.asarray(sums, dtype=np.float64)
        return vm
