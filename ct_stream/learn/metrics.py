"""Prequential metrics for binary classifiers, cumulative and over a rolling window.

:class:`PrequentialMetrics` takes one batch at a time of prequential probabilities P(y=1)
(each computed before its row was learned, as ``learn_batch`` returns them), the labels and
optional sample weights:

* **log loss**: River's ``metrics.LogLoss`` (probabilities clipped to ``[1e-15, 1 - 1e-15]``);
* **accuracy**: River's rule, the prediction is 1 iff ``p > 0.5``;
* **ROC AUC**, cumulative: two weighted histograms (positives, negatives) over ``bins``
  equal-width probability bins, ties within a bin counted 1/2; O(bins) memory, error at most
  the pair mass that shares a bin (~1e-4 with 4096 bins);
* **rolling** log loss, accuracy and exact ROC AUC (weighted Mann-Whitney, ties 1/2) over the
  last ``window`` rows, kept in a ring buffer.

All updates are numpy-vectorised: O(rows) per batch, plus O(window · log window) for the rolling
AUC when :meth:`PrequentialMetrics.get` asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ct_stream.errors import LearnError

__all__ = ["PrequentialMetrics", "roc_auc", "METRICS_STATE_KIND"]

F64 = NDArray[np.float64]

#: The ``kind`` tag of :meth:`PrequentialMetrics.state`.
METRICS_STATE_KIND = "ct_stream.learn.PrequentialMetrics/1"

_EPS = 1e-15


def _auc_from_groups(pos: F64, neg: F64) -> float:
    """AUC from positive/negative weight per ascending score group (ties within a group: 1/2)."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0.0 or n_neg == 0.0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(pos @ (neg_below + 0.5 * neg)) / (n_pos * n_neg)


def roc_auc(p: ArrayLike, y: ArrayLike, w: ArrayLike | None = None) -> float:
    """Exact (weighted) ROC AUC, tied scores counted 1/2; NaN without both classes.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> roc_auc([0.5, 0.5], [0, 1])
    0.5
    """
    pv = np.asarray(p, dtype=np.float64)
    yb = np.asarray(y).astype(bool)
    wv = np.ones(len(pv)) if w is None else np.asarray(w, dtype=np.float64)
    if len(pv) == 0:
        return float("nan")
    order = np.argsort(pv, kind="stable")
    ps, ys, ws = pv[order], yb[order], wv[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(np.where(ys, ws, 0.0), starts)
    neg = np.add.reduceat(np.where(ys, 0.0, ws), starts)
    return _auc_from_groups(pos, neg)


class PrequentialMetrics:
    """Cumulative and rolling log loss, accuracy and ROC AUC, updated once per batch.

    >>> m = PrequentialMetrics(window=2)
    >>> m.update([0.9, 0.2, 0.6], [1, 0, 0])
    >>> r = m.get()
    >>> r["n"], round(r["accuracy"], 4), r["roc_auc"], r["rolling_accuracy"]
    (3.0, 0.6667, 1.0, 0.5)
    """

    def __init__(self, window: int = 10_000, bins: int = 4096) -> None:
        for name, value in (("window", window), ("bins", bins)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise LearnError(name, value, "an int >= 1")
        self.window = int(window)
        self.bins = int(bins)
        self.n = 0.0  # total weight seen
        self.rows = 0
        self.sum_log_loss = 0.0
        self.sum_correct = 0.0
        self.hist_pos: F64 = np.zeros(self.bins)
        self.hist_neg: F64 = np.zeros(self.bins)
        # ring buffer of the last `window` rows; `_head` is where the next row goes
        self._p: F64 = np.zeros(self.window)
        self._y = np.zeros(self.window, dtype=bool)
        self._w: F64 = np.zeros(self.window)
        self._head = 0
        self._filled = 0

    def update(self, p: ArrayLike, y: ArrayLike, w: ArrayLike | None = None) -> None:
        """Add one batch: probabilities ``p`` in [0, 1], labels 0/1, optional weights >= 0."""
        pv = np.asarray(p, dtype=np.float64)
        if pv.ndim != 1:
            raise LearnError("p.shape", pv.shape, "(rows,)")
        rows = len(pv)
        bad = np.flatnonzero(~((pv >= 0.0) & (pv <= 1.0)))
        if bad.size:
            raise LearnError(f"p[{bad[0]}]", float(pv[bad[0]]), "a probability in [0, 1]")
        yarr = np.asarray(y)
        if yarr.shape != (rows,):
            raise LearnError("y.shape", yarr.shape, f"({rows},), one label per probability")
        yv = yarr.astype(np.float64)
        bad = np.flatnonzero((yv != 0.0) & (yv != 1.0))
        if bad.size:
            raise LearnError(f"y[{bad[0]}]", yarr[bad[0]].item(), "0/1 or False/True")
        yb = yv == 1.0
        if w is None:
            wv = np.ones(rows)
        else:
            wv = np.asarray(w, dtype=np.float64)
            if wv.shape != (rows,):
                raise LearnError("w.shape", wv.shape, f"({rows},), one weight per probability")
            bad = np.flatnonzero(~(np.isfinite(wv) & (wv >= 0.0)))
            if bad.size:
                raise LearnError(f"w[{bad[0]}]", float(wv[bad[0]]), "a finite weight >= 0")
        self.n += float(wv.sum())
        self.rows += rows
        self.sum_log_loss += float(_log_loss(pv, yb) @ wv)
        self.sum_correct += float(((pv > 0.5) == yb) @ wv)
        idx = np.minimum((pv * self.bins).astype(np.int64), self.bins - 1)
        self.hist_pos += np.bincount(idx, weights=np.where(yb, wv, 0.0), minlength=self.bins)
        self.hist_neg += np.bincount(idx, weights=np.where(yb, 0.0, wv), minlength=self.bins)
        k = min(rows, self.window)  # only the batch's last `window` rows can stay
        slots = (self._head + np.arange(k)) % self.window
        self._p[slots], self._y[slots], self._w[slots] = pv[rows - k:], yb[rows - k:], wv[rows - k:]
        self._head = (self._head + k) % self.window
        self._filled = min(self.window, self._filled + k)

    def _window(self) -> tuple[F64, NDArray[np.bool_], F64]:
        """The rolling window's ``(p, y, w)``, oldest first."""
        f = self._filled
        order = (self._head - f + np.arange(f)) % self.window
        return self._p[order], self._y[order], self._w[order]

    def get(self, rolling_auc: bool = True) -> dict[str, float]:
        """Current values; NaN where undefined (nothing seen, or AUC without both classes).

        Keys: ``n`` (total weight), ``log_loss``, ``accuracy``, ``roc_auc``,
        ``rolling_log_loss``, ``rolling_accuracy`` and, if ``rolling_auc``, ``rolling_roc_auc``
        (the costly one: a sort of the window).
        """
        nan = float("nan")
        p, y, w = self._window()
        wsum = float(w.sum())
        out = {
            "n": self.n,
            "log_loss": self.sum_log_loss / self.n if self.n else nan,
            "accuracy": self.sum_correct / self.n if self.n else nan,
            "roc_auc": _auc_from_groups(self.hist_pos, self.hist_neg),
            "rolling_log_loss": float(_log_loss(p, y) @ w) / wsum if wsum else nan,
            "rolling_accuracy": float(((p > 0.5) == y) @ w) / wsum if wsum else nan,
        }
        if rolling_auc:
            out["rolling_roc_auc"] = roc_auc(p, y, w)
        return out

    def state(self) -> dict[str, Any]:
        """A JSON-able dict; the window is stored oldest row first."""
        p, y, w = self._window()
        return {"kind": METRICS_STATE_KIND, "window": self.window, "bins": self.bins,
                "n": self.n, "rows": self.rows, "sum_log_loss": self.sum_log_loss,
                "sum_correct": self.sum_correct, "hist_pos": self.hist_pos.tolist(),
                "hist_neg": self.hist_neg.tolist(), "window_p": p.tolist(),
                "window_y": y.tolist(), "window_w": w.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PrequentialMetrics:
        """Rebuild from :meth:`state`."""
        if not isinstance(state, dict) or state.get("kind") != METRICS_STATE_KIND:
            got = state.get("kind") if isinstance(state, dict) else state
            raise LearnError('state["kind"]', got, repr(METRICS_STATE_KIND))
        try:
            m = cls(state["window"], state["bins"])
            m.n, m.rows = float(state["n"]), int(state["rows"])
            m.sum_log_loss, m.sum_correct = float(state["sum_log_loss"]), float(state["sum_correct"])
            hist_pos = np.asarray(state["hist_pos"], dtype=np.float64)
            hist_neg = np.asarray(state["hist_neg"], dtype=np.float64)
            p = np.asarray(state["window_p"], dtype=np.float64)
            y = np.asarray(state["window_y"], dtype=bool)
            w = np.asarray(state["window_w"], dtype=np.float64)
        except KeyError as e:
            raise LearnError("state", f"no key {e}", f"a dict made by {cls.__name__}.state()") from None
        except (TypeError, ValueError) as e:
            raise LearnError("state", str(e), f"a dict made by {cls.__name__}.state()") from None
        if hist_pos.shape != (m.bins,) or hist_neg.shape != (m.bins,):
            raise LearnError('state["hist_pos"/"hist_neg"]', (hist_pos.shape, hist_neg.shape),
                             f"{m.bins} numbers each")
        f = len(p)
        if f > m.window or y.shape != (f,) or w.shape != (f,):
            raise LearnError('state["window_*"]', (p.shape, y.shape, w.shape),
                             f"three equal lengths <= {m.window}")
        m.hist_pos, m.hist_neg = hist_pos, hist_neg
        m._p[:f], m._y[:f], m._w[:f] = p, y, w
        m._filled, m._head = f, f % m.window
        return m


def _log_loss(p: F64, y: NDArray[np.bool_]) -> F64:
    """Per-row log loss, River's clipping."""
    pc = np.clip(p, _EPS, 1.0 - _EPS)
    return -np.log(np.where(y, pc, 1.0 - pc))
