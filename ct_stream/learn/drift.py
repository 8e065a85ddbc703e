"""Drift detection: per-feature data drift per batch, concept drift on the error stream.

* **Data drift** (the inputs move): :func:`psi` (Population Stability Index) and
  :func:`ks_statistic` (two-sample Kolmogorov-Smirnov D, exact) compare a reference sample of
  one feature with a current one. :class:`DataDriftMonitor` keeps, per feature, a frozen
  reference window (the first ``reference_size`` rows) and a rolling current window (the
  last ``window`` rows), and compares them once per :meth:`~DataDriftMonitor.update` call.
  Both statistics are sort-based numpy code, O(n log n) per feature per evaluation; River's
  per-event ``KSWIN`` is not used (it runs at ~5k updates/s).
* **Concept drift** (the errors move): :class:`ConceptDriftMonitor` feeds a River drift
  detector (default ``ADWIN``) with the per-example error or loss stream of a batch and
  returns where in the batch it fired. Optionally it feeds the mean of every ``chunk``
  values instead of every value.

Pure code: no I/O, threads or global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ct_stream.errors import LearnError
from ct_stream.learn._validate import finite_matrix

__all__ = [
    "ConceptDriftMonitor",
    "DATA_DRIFT_STATE_KIND",
    "DEFAULT_THRESHOLDS",
    "DataDriftMonitor",
    "DriftSignal",
    "PSI_EPS",
    "ks_statistic",
    "psi",
]

F64 = NDArray[np.float64]

#: The ``kind`` tag of :meth:`DataDriftMonitor.state`.
DATA_DRIFT_STATE_KIND = "ct_stream.learn.DataDriftMonitor/1"

#: Bin share used in place of an empty bin's 0 in :func:`psi` (so ``ln(c / r)`` is finite).
#: One empty bin facing a share ``s`` adds ``(s - 1e-4)·ln(s / 1e-4)``: ~0.09 for s = 0.01.
PSI_EPS = 1e-4

#: Default thresholds per method. PSI 0.2 lies between the usual "moderate" (0.1) and
#: "significant" (0.25) cut-offs. KS 0.1 means the two CDFs differ by 10 percentage points
#: somewhere; it is an effect size, not a significance level (see docs/learning.md).
DEFAULT_THRESHOLDS: dict[str, float] = {"psi": 0.2, "ks": 0.1}


def _check_sample(name: str, values: ArrayLike) -> F64:
    """A non-empty 1-d float64 array without NaN/inf, or :class:`LearnError`."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LearnError(name, type(values).__name__, f"a numeric 1-d array ({e})") from None
    if arr.ndim != 1 or arr.size == 0:
        raise LearnError(f"{name}.shape", arr.shape, "(n,) with n >= 1")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise LearnError(f"{name}[{bad[0]}]", float(arr[bad[0]]), "a finite number (no NaN/inf)")
    return arr


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise LearnError(name, value, f"an int >= {low}")
    return int(value)


def _psi_sorted(ref_sorted: F64, current: F64, bins: int) -> float:
    """PSI of ``current`` against an already sorted reference (quantile edges of it)."""
    inner = np.quantile(ref_sorted, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    # bin k holds [edge_k, edge_k+1); duplicate edges (ties) give bins empty on both sides
    r = np.diff(np.searchsorted(ref_sorted, inner, side="left"), prepend=0,
                append=len(ref_sorted)) / len(ref_sorted)
    c = np.bincount(np.searchsorted(inner, current, side="right"), minlength=bins) / len(current)
    r, c = np.maximum(r, PSI_EPS), np.maximum(c, PSI_EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _rank_right(a: F64) -> NDArray[np.int64]:
    """``np.searchsorted(a, a, side="right")`` of a sorted ``a`` in O(n), no binary search."""
    n = len(a)
    last = np.r_[a[1:] != a[:-1], True]  # the last element of each run of equal values
    ends = np.where(last, np.arange(1, n + 1), n)
    return np.minimum.accumulate(ends[::-1])[::-1]


def _ks_sorted(a: F64, b: F64) -> float:
    """KS D of two sorted samples: the largest |F_a - F_b| over all their points."""
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right") / len(a)
    fb = np.searchsorted(b, both, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def psi(reference: ArrayLike, current: ArrayLike, bins: int = 10) -> float:
    """Population Stability Index of ``current`` against ``reference`` (1-d samples).

    ``Σ_k (c_k - r_k)·ln(c_k / r_k)`` over ``bins`` bins whose edges are the reference's
    quantiles (outer bins open-ended); ``r_k``, ``c_k`` are the shares of each sample in bin
    ``k``, an empty bin counting as :data:`PSI_EPS` (1e-4). 0 for equal distributions;
    0.1 / 0.25 are the usual "moderate" / "significant" cut-offs.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=20_000)
    >>> round(psi(ref, rng.normal(size=20_000)), 3), round(psi(ref, rng.normal(1.0, 1.0, 20_000)), 1)
    (0.002, 0.9)
    """
    ref = _check_sample("reference", reference)
    cur = _check_sample("current", current)
    return _psi_sorted(np.sort(ref), cur, _check_int("bins", bins, 2))


def ks_statistic(reference: ArrayLike, current: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic D = max_x |F_ref(x) - F_cur(x)|, exact.

    >>> ks_statistic([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    0.0
    >>> ks_statistic([1.0, 2.0], [3.0, 4.0, 5.0])
    1.0
    >>> ks_statistic([0.0, 1.0, 2.0, 3.0], [1.5, 2.5])
    0.5
    """
    ref = _check_sample("reference", reference)
    cur = _check_sample("current", current)
    return _ks_sorted(np.sort(ref), np.sort(cur))


@dataclass(frozen=True)
class DriftSignal:
    """One feature over its threshold at one evaluation.

    ``rows_seen`` counts every row given to the monitor up to and including the evaluated
    batch.
    """

    feature: str
    statistic: float
    threshold: float
    method: str
    rows_seen: int


class DataDriftMonitor:
    """Per-feature drift between a reference window and a rolling current window.

    The first ``reference_size`` rows fill the reference, which then stays fixed until
    :meth:`reset_reference`. Later rows go to a ring buffer of the last ``window`` rows. Each
    :meth:`update` ends, once that window is full, with one evaluation: ``method`` ("psi",
    ``bins`` quantile bins; or "ks") per feature, and a :class:`DriftSignal` for each feature
    whose statistic exceeds ``threshold`` (default :data:`DEFAULT_THRESHOLDS`). With
    ``every=k`` an evaluation also waits for ``k`` new window rows since the previous one (an
    exact KS evaluation sorts the window: ~11 ms for 10 features × 10k rows here).

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> mon = DataDriftMonitor(["a", "b"], reference_size=5000, window=2000, method="ks")
    >>> mon.update(rng.normal(size=(6000, 2)))
    []
    >>> X = rng.normal(size=(2000, 2)); X[:, 1] += 1.0
    >>> [(s.feature, round(s.statistic, 2), s.rows_seen) for s in mon.update(X)]
    [('b', 0.37, 8000)]
    """

    def __init__(self, features: Sequence[str], reference_size: int = 10_000,
                 window: int = 10_000, *, method: str = "psi", threshold: float | None = None,
                 bins: int = 10, every: int = 1) -> None:
        names = [features] if isinstance(features, str) else list(features)  # "ab" is an error
        if isinstance(features, str) or not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise LearnError("features", features, "at least one name, all distinct str")
        self.features = names
        self.reference_size = _check_int("reference_size", reference_size, 1)
        self.window = _check_int("window", window, 1)
        if method not in DEFAULT_THRESHOLDS:
            raise LearnError("method", method, " or ".join(map(repr, DEFAULT_THRESHOLDS)))
        self.method = method
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[method]
        if isinstance(threshold, bool) or not (isinstance(threshold, (int, float))
                                               and np.isfinite(threshold) and threshold > 0):
            raise LearnError("threshold", threshold, "a finite number > 0")
        self.threshold = float(threshold)
        self.bins = _check_int("bins", bins, 2)
        self.every = _check_int("every", every, 1)
        self.rows_seen = 0
        self._since_eval = 0  # rows pushed to the current window since the last evaluation
        self.n_evaluations = 0
        #: statistic per feature of the latest evaluation (None before the first)
        self.last_statistics: F64 | None = None
        f = len(names)
        self._ref: F64 = np.zeros((self.reference_size, f))
        self._ref_filled = 0
        self._ref_sorted: F64 | None = None  # feature-major, set once the reference is full
        self._edges: F64 | None = None  # psi: (features, bins - 1) inner quantile edges
        self._ref_share: F64 | None = None  # psi: (features, bins) reference shares, >= eps
        self._ref_F: F64 | None = None  # ks: the reference ECDF at its own (sorted) points
        self._cur: F64 = np.zeros((self.window, f))
        self._cur_bin = np.zeros((self.window, f), dtype=np.int64)  # psi: bin of each row
        self._head = 0
        self._filled = 0

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def reference_ready(self) -> bool:
        """True once the reference holds ``reference_size`` rows."""
        return self._ref_filled == self.reference_size

    def _check_X(self, X: ArrayLike) -> F64:
        return finite_matrix(X, self.n_features)

    def update(self, X: ArrayLike) -> list[DriftSignal]:
        """Add a batch ``(rows, features)``; the drifted features if an evaluation ran, else []."""
        arr = self._check_X(X)
        self.rows_seen += arr.shape[0]
        take = min(arr.shape[0], self.reference_size - self._ref_filled)
        if take:
            self._ref[self._ref_filled: self._ref_filled + take] = arr[:take]
            self._ref_filled += take
            arr = arr[take:]
        if self.reference_ready and self._ref_sorted is None:
            self._freeze_reference()
        self._push(arr)
        if (self._ref_sorted is None or self._filled < self.window
                or self._since_eval < self.every or arr.shape[0] == 0):
            return []
        return self._evaluate()

    def _freeze_reference(self) -> None:
        """Sort the full reference and precompute what each evaluation reuses."""
        ref = np.sort(self._ref.T, axis=1)
        self._ref_sorted = ref
        n = ref.shape[1]
        if self.method == "psi":
            q = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
            self._edges = np.quantile(ref, q, axis=1).T.copy()
            counts = np.stack([np.searchsorted(r, e, side="left") for r, e in zip(ref, self._edges)])
            share = np.diff(counts, axis=1, prepend=0, append=n) / n
            self._ref_share = np.maximum(share, PSI_EPS)
        else:
            self._ref_F = np.stack([_rank_right(r) for r in ref]) / n

    def _push(self, arr: F64) -> None:
        rows = arr.shape[0]
        k = min(rows, self.window)  # only the batch's last `window` rows can stay
        if k == 0:
            return
        slots = (self._head + np.arange(k)) % self.window
        new = arr[rows - k:]
        self._cur[slots] = new
        if self._edges is not None:
            for j, e in enumerate(self._edges):
                self._cur_bin[slots, j] = np.searchsorted(e, new[:, j], side="right")
        self._head = (self._head + k) % self.window
        self._filled = min(self.window, self._filled + k)
        self._since_eval += rows

    def _current(self) -> F64:
        """The current window's rows, oldest first."""
        f = self._filled
        return self._cur[(self._head - f + np.arange(f)) % self.window]

    def _evaluate(self) -> list[DriftSignal]:
        assert self._ref_sorted is not None
        m = self.window
        if self.method == "psi":
            assert self._ref_share is not None
            f, b = self.n_features, self.bins
            counts = np.bincount((self._cur_bin + b * np.arange(f)).ravel(), minlength=f * b)
            c = np.maximum(counts.reshape(f, b) / m, PSI_EPS)
            r = self._ref_share
            stats = np.sum((c - r) * np.log(c / r), axis=1)
        else:
            assert self._ref_F is not None
            cur = np.sort(self._cur.T, axis=1)  # order inside the window is irrelevant here
            n = self._ref_sorted.shape[1]
            stats = np.empty(self.n_features)
            # D is reached at a point of one of the samples: check both sets of points
            for j, (r, rF, c) in enumerate(zip(self._ref_sorted, self._ref_F, cur)):
                at_r = np.max(np.abs(rF - np.searchsorted(c, r, side="right") / m))
                at_c = np.max(np.abs(np.searchsorted(r, c, side="right") / n
                                     - _rank_right(c) / m))
                stats[j] = max(at_r, at_c)
        self._since_eval = 0
        self.last_statistics = stats
        stats = stats.tolist()
        self.n_evaluations += 1
        return [DriftSignal(name, s, self.threshold, self.method, self.rows_seen)
                for name, s in zip(self.features, stats) if s > self.threshold]

    def reset_reference(self) -> None:
        """Make the current window the new reference (e.g. after a retrain) and empty it.

        The reference gets the window's last ``min(window, reference_size)`` rows; if that is
        fewer than ``reference_size``, the next rows top it up, as at the start. With an empty
        current window the reference starts over from the next rows.
        """
        cur = self._current()[-self.reference_size:]
        self._ref[: len(cur)] = cur
        self._ref_filled = len(cur)
        self._ref_sorted = self._edges = self._ref_share = self._ref_F = None
        if self.reference_ready:
            self._freeze_reference()
        self._head = self._filled = self._since_eval = 0

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """A JSON-able dict, windows stored row by row (oldest first).

        >>> m = DataDriftMonitor(["x"], 3, 2)
        >>> m.update([[1.0], [2.0], [3.0], [4.0]])
        []
        >>> DataDriftMonitor.from_state(m.state()).state() == m.state()
        True
        """
        return {"kind": DATA_DRIFT_STATE_KIND, "features": list(self.features),
                "reference_size": self.reference_size, "window": self.window,
                "method": self.method, "threshold": self.threshold, "bins": self.bins,
                "every": self.every, "rows_seen": self.rows_seen,
                "n_evaluations": self.n_evaluations, "since_eval": self._since_eval,
                "reference": self._ref[: self._ref_filled].tolist(),
                "current": self._current().tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DataDriftMonitor:
        """Rebuild from :meth:`state` (``last_statistics`` is not stored)."""
        if not isinstance(state, dict) or state.get("kind") != DATA_DRIFT_STATE_KIND:
            got = state.get("kind") if isinstance(state, dict) else state
            raise LearnError('state["kind"]', got, repr(DATA_DRIFT_STATE_KIND))
        try:
            m = cls(state["features"], state["reference_size"], state["window"],
                    method=state["method"], threshold=state["threshold"], bins=state["bins"],
                    every=state["every"])
            rows_seen, n_eval = int(state["rows_seen"]), int(state["n_evaluations"])
            since_eval = int(state["since_eval"])
            ref = np.asarray(state["reference"], dtype=np.float64).reshape(-1, m.n_features)
            cur = np.asarray(state["current"], dtype=np.float64).reshape(-1, m.n_features)
        except KeyError as e:
            raise LearnError("state", f"no key {e}", f"a dict made by {cls.__name__}.state()") from None
        except (TypeError, ValueError) as e:
            raise LearnError("state", str(e), f"a dict made by {cls.__name__}.state()") from None
        for name, arr, size in (("reference", ref, m.reference_size), ("current", cur, m.window)):
            if len(arr) > size or not np.isfinite(arr).all():
                raise LearnError(f'state["{name}"]', arr.shape,
                                 f"at most {size} rows of {m.n_features} finite numbers")
        if len(cur) and len(ref) < m.reference_size:
            raise LearnError('state["current"]', cur.shape, "no rows while the reference is "
                             "not full")
        m.rows_seen, m.n_evaluations = rows_seen, n_eval
        m._ref[: len(ref)] = ref
        m._ref_filled = len(ref)
        if m.reference_ready:
            m._freeze_reference()
        m._push(cur)
        m._since_eval = since_eval
        return m


class ConceptDriftMonitor:
    """A River drift detector fed with per-example errors (or losses), one batch at a time.

    ``detector`` is any River drift detector instance (it needs ``update`` and
    ``drift_detected``), used as given, not copied; default ``river.drift.ADWIN()``.
    With ``chunk=1`` every value is fed (exact). With ``chunk=k`` the detector gets the mean
    of each ``k`` consecutive values (a partial chunk carries over to the next batch): k times
    fewer updates, but detection is reported at chunk ends and delays shift accordingly (see
    docs/learning.md). Binary detectors (``river.drift.binary``) need 0/1 errors and
    ``chunk=1``.

    With ``increases_only`` (the default) and a detector that keeps a window it cuts on a
    change (ADWIN: ``width`` and ``estimation``), only a cut after which the recent error
    is *higher* than the dropped older part's counts as drift: a model still learning makes
    its error fall, and ADWIN reports that change too (counted in :attr:`n_improvements`,
    not reported). Other detectors report every change they see.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> mon = ConceptDriftMonitor()
    >>> mon.update((rng.random(5000) < 0.1).astype(float))
    []
    >>> hits = mon.update((rng.random(5000) < 0.5).astype(float))
    >>> len(hits) >= 1 and 0 < hits[0] < 500, mon.n_detections == len(hits)
    (True, True)
    >>> better = ConceptDriftMonitor()  # the error falls from 50% to 10%: not a drift
    >>> better.update((rng.random(5000) < 0.5).astype(float)) + better.update((rng.random(5000) < 0.1).astype(float))
    []
    >>> better.n_improvements >= 1
    True
    """

    # the values in the detector's window (since its last cut): their sum and count before
    # this batch, and where this batch's share of them starts (see _improved)
    _window_sum = 0.0
    _window_n = 0
    _window_from = 0
    n_improvements = 0  # cuts where the error went down: ignored with increases_only
    increases_only = False  # (class defaults: a monitor pickled before these existed goes on as it was)
    _windowed = False

    def __init__(self, detector: Any = None, *, chunk: int = 1, increases_only: bool = True) -> None:
        if detector is None:
            from river.drift import ADWIN

            detector = ADWIN()
        if not callable(getattr(detector, "update", None)) or not hasattr(detector, "drift_detected"):
            raise LearnError("detector", detector, "a River drift detector instance "
                             "(with update() and drift_detected)")
        self.chunk = _check_int("chunk", chunk, 1)
        self.binary = _is_binary(detector)
        if self.binary and self.chunk != 1:
            raise LearnError("chunk", chunk, "1 with a binary detector (it needs 0/1 values)")
        self.detector = detector
        self.increases_only = bool(increases_only)
        # ADWIN-like detectors (a window that a detection cuts, with width and estimation)
        # can tell a worse error from a better one; others report every change
        self._windowed = self.increases_only and hasattr(detector, "width") and hasattr(detector, "estimation")
        self.n_seen = 0  # values given to update()
        self.n_detections = 0
        self.last_detection: int | None = None  # index in the whole stream (0-based)
        self._pending_sum = 0.0
        self._pending_n = 0

    def update(self, errors: ArrayLike) -> list[int]:
        """Feed a batch of per-example errors; the batch indices where drift was detected."""
        e = np.asarray(errors) if not isinstance(errors, np.ndarray) else errors
        if e.ndim != 1:
            raise LearnError("errors.shape", e.shape, "(n,)")
        if e.size == 0:
            return []
        try:
            ev = e.astype(np.float64)
        except (TypeError, ValueError):
            raise LearnError("errors", e.dtype, "numeric values") from None
        bad = np.flatnonzero(~np.isfinite(ev))
        if bad.size:
            raise LearnError(f"errors[{bad[0]}]", float(ev[bad[0]]), "a finite number (no NaN/inf)")
        if self.binary:
            bad = np.flatnonzero((ev != 0.0) & (ev != 1.0))
            if bad.size:
                raise LearnError(f"errors[{bad[0]}]", float(ev[bad[0]]), "0/1 for a binary detector")
        if self.chunk == 1:
            values, ends = (ev == 1.0).tolist() if self.binary else ev.tolist(), None
        else:
            values, ends = self._chunk_means(ev)
        det = self.detector
        if _plain_adwin(det):
            hits = self._feed_adwin(values, ends)
        else:
            hits: list[int] = []
            update = det.update
            for i, v in enumerate(values):
                update(v)
                if det.drift_detected and not self._improved(values, i):
                    hits.append(i if ends is None else int(ends[i]))
        if self._windowed:
            self._window_sum += float(sum(values[self._window_from:]))
            self._window_n += len(values) - self._window_from
            self._window_from = 0
        self.n_seen += len(ev)
        if hits:
            self.n_detections += len(hits)
            self.last_detection = self.n_seen - len(ev) + hits[-1]
        return hits

    def _feed_adwin(self, values: list[float], ends: F64 | None) -> list[int]:
        """What the loop over ``detector.update`` does, for River's own ``ADWIN``, calling
        its compiled window directly: ``ADWIN.update`` is a Python method (a reset when
        the previous value was a detection, then ``_helper.update``) and
        ``drift_detected`` a property, a good part of the per-value cost. Same values, same
        order, same resets, the same state after the batch; ``tests/test_drift.py``
        compares both ways. Returns the batch indices of the detections kept."""
        det = self.detector
        hits: list[int] = []
        detected = bool(det._drift_detected)
        helper_update = det._helper.update
        for i, v in enumerate(values):
            if detected:  # the previous value was a detection: ADWIN.update resets first
                det._reset()
                helper_update = det._helper.update
            detected = helper_update(v)
            if detected and not self._improved(values, i):
                hits.append(i if ends is None else int(ends[i]))
        det._drift_detected = bool(detected)
        return hits

    def _improved(self, values: list[float], i: int) -> bool:
        """After the detector cut its window at ``values[i]``: True when the error went
        *down* (the kept, recent part's mean is not above the dropped part's), which is a
        model that learned, not a concept that changed; such a cut is counted in
        :attr:`n_improvements` and not reported. Always False unless ``increases_only``
        and the detector has a window (ADWIN)."""
        if not self._windowed:
            return False
        det = self.detector
        total = self._window_sum + float(sum(values[self._window_from:i + 1]))
        n = self._window_n + i + 1 - self._window_from
        kept_n, kept_mean = int(det.width), float(det.estimation)
        # the window continues with the kept part, then this batch's values after i
        self._window_sum, self._window_n, self._window_from = kept_mean * kept_n, kept_n, i + 1
        dropped = n - kept_n
        if dropped <= 0:
            return False
        if kept_mean <= (total - kept_mean * kept_n) / dropped:
            self.n_improvements += 1
            return True
        return False

    def _chunk_means(self, ev: F64) -> tuple[list[float], F64]:
        """Means of the complete chunks (the first one completes a carried partial chunk) and
        the batch index of each chunk's last value; the rest is carried over."""
        k, p = self.chunk, self._pending_n
        first = min(k - p, len(ev))  # values that complete the carried chunk
        if p + first < k:  # still incomplete
            self._pending_sum += float(ev.sum())
            self._pending_n += len(ev)
            return [], np.empty(0)
        means = [(self._pending_sum + float(ev[:first].sum())) / k]
        ends = [first - 1]
        rest = ev[first:]
        full = len(rest) // k
        if full:
            means.extend((rest[: full * k].reshape(full, k).mean(axis=1)).tolist())
            ends.extend((first - 1 + k * np.arange(1, full + 1)).tolist())
        tail = rest[full * k:]
        self._pending_sum, self._pending_n = float(tail.sum()), len(tail)
        return means, np.asarray(ends)


def _is_binary(detector: Any) -> bool:
    try:
        from river.base import BinaryDriftDetector
    except ImportError:  # pragma: no cover - river is a dependency
        return False
    return isinstance(detector, BinaryDriftDetector)


def _plain_adwin(detector: Any) -> bool:
    """River's own ``ADWIN`` (not a subclass, which may change ``update``) with the
    compiled window ``ConceptDriftMonitor._feed_adwin`` calls directly."""
    try:
        from river.drift import ADWIN
    except ImportError:  # pragma: no cover - river is a dependency
        return False
    return type(detector) is ADWIN and hasattr(detector, "_helper") and hasattr(detector, "_drift_detected")
