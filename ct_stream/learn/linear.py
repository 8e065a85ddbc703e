"""Batched logistic regression with running standard scaling, exact to River ``learn_one``.

:class:`BatchLogisticRegression` is a numpy reformulation of River's default pipeline

    compose.Select(*scaled) | preprocessing.StandardScaler() | linear_model.LogisticRegression()

(constant-lr SGD, lr 0.01, no regularisation, Log loss). Driven batch by batch with
:meth:`~BatchLogisticRegression.learn_batch`, it returns the same prequential probabilities
as River's ``predict_proba_one(x)`` followed by ``learn_one(x, y, w)`` on every row, up to
float rounding (~1e-10), and ends in the same state.

How it stays exact while vectorised:

* **Scaler.** River's ``learn_one`` updates the running mean/variance with ``x_k`` and then
  scales ``x_k``; ``predict_proba_one`` scales with the statistics of the rows before ``k``.
  For every row of a batch both are prefix sums (``cumsum``) of the batch, shifted by the
  batch-start mean for accuracy: ``Z_learn`` (inclusive) and ``Z_pred`` (exclusive).
* **SGD.** With constant rates ``a`` (weights) and ``c`` (intercept), the margin of row ``j``
  just before it is learned is ``m_j = z_j·(w0 - a·S_j) + b0 - c·s_j`` with
  ``S_j = Σ_{i<j} g_i z_i``, ``s_j = Σ_{i<j} g_i`` and ``g_i = w_i (σ(m_i) - y_i)``. The margins
  solve the strictly lower-triangular fixed point ``m = m0 - L g(m)``; Picard sweeps of
  O(rows·features) each (prefix sums, never the rows×rows Gram matrix) reach it exactly after
  at most ``rows`` sweeps, in practice 10-30. Rows before the first row that still moves are
  final and are not recomputed.
* **Prequential.** Row ``j``'s probability uses only ``g_i`` for ``i < j``, and each ``g_i``
  depends on rows ``<= i``: no row's own label (or a later one) reaches its prediction.

Only dense input: no nulls or absent features (River's scaler counts per feature).

With the native data path (``ct_stream._native``, docs/native.md), ``learn_batch`` runs
River's own steps one row at a time in Rust instead (``native/src/sgd.rs``: the scaler's
``learn_one`` update, the ``Log`` loss gradient with its thresholds, the SGD step), about
nine times the numpy fixed point's rate here and equal to River to ~1e-15; the fixed
point above is the fallback. The class attribute ``native`` chooses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ct_stream.errors import LearnError
from ct_stream.learn._validate import finite_matrix
from ct_stream.native import module as _native

__all__ = ["BatchLogisticRegression", "STATE_KIND"]

F64 = NDArray[np.float64]

#: The ``kind`` tag of :meth:`BatchLogisticRegression.state`; bump on format changes.
STATE_KIND = "ct_stream.learn.BatchLogisticRegression/1"


def _sigmoid(z: F64) -> F64:
    """River's ``utils.math.sigmoid``, vectorised: 0 below -30, 1 above 30."""
    out = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    out[z < -30.0] = 0.0
    out[z > 30.0] = 1.0
    return out


def _gradient(margin: F64, y: F64, w: F64 | None) -> F64:
    """River's ``Log.gradient`` (``σ(m) - y``, unclamped) times the sample weight."""
    with np.errstate(over="ignore"):
        g = 1.0 / (1.0 + np.exp(-margin)) - y
    return g if w is None else g * w


def _scale(X: F64, mean: F64, var: F64) -> F64:
    """``(X - mean) / sqrt(var)``, and 0 where the variance is 0 (as River does)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = (X - mean) / np.sqrt(var)
    zero = np.broadcast_to(var == 0.0, Z.shape)
    if zero.any():
        Z[zero] = 0.0
    return Z


class BatchLogisticRegression:
    """Logistic regression on running-standard-scaled features, learned one batch at a time.

    The first ``n_scaled`` columns of ``X`` go through a running standard scaler (River's
    ``StandardScaler``: population variance); the last ``n_passthrough`` columns (booleans,
    one-hot indicators) are used as they are, like River's ``(Select | StandardScaler) +
    Select(...)``. ``lr`` and ``intercept_lr`` are River's constant SGD rates (defaults 0.01).
    ``block`` rows are solved together (memory ``O(block·features)``); ``tol`` is the
    fixed-point tolerance on each row's gradient.

    >>> import numpy as np
    >>> model = BatchLogisticRegression(2)
    >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    >>> p = model.learn_batch(X, np.array([0, 1, 1, 0]))
    >>> p.round(4).tolist()  # each row predicted before it is learned
    [0.5, 0.4988, 0.5025, 0.5086]
    >>> model.n_seen
    4
    """

    #: ``learn_batch`` row by row in ``ct_stream._native`` when it is built (docs/native.md),
    #: else the numpy fixed point; both equal River's ``learn_one`` (tests/test_learn.py).
    #: A class attribute, so models pickled before it existed have it too.
    native: bool = True

    def __init__(self, n_scaled: int, n_passthrough: int = 0, *, lr: float = 0.01,
                 intercept_lr: float = 0.01, block: int = 1024, tol: float = 1e-9) -> None:
        for name, value in (("n_scaled", n_scaled), ("n_passthrough", n_passthrough)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise LearnError(name, value, "an int >= 0")
        if n_scaled + n_passthrough == 0:
            raise LearnError("n_scaled + n_passthrough", 0, "at least one feature")
        for name, rate in (("lr", lr), ("intercept_lr", intercept_lr)):
            if not (isinstance(rate, (int, float)) and np.isfinite(rate) and rate > 0):
                raise LearnError(name, rate, "a finite number > 0")
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise LearnError("block", block, "an int >= 1")
        if not (isinstance(tol, (int, float)) and np.isfinite(tol) and tol > 0):
            raise LearnError("tol", tol, "a finite number > 0")
        self.n_scaled = int(n_scaled)
        self.n_passthrough = int(n_passthrough)
        self.lr = float(lr)
        self.intercept_lr = float(intercept_lr)
        self.block = int(block)
        self.tol = float(tol)
        self.count = 0  # rows seen by the scaler (every learned row)
        self.mean: F64 = np.zeros(self.n_scaled)
        self.var: F64 = np.zeros(self.n_scaled)
        self.coef: F64 = np.zeros(self.n_features)
        self.intercept = 0.0
        self.n_seen = 0

    @property
    def n_features(self) -> int:
        """Columns ``X`` must have: ``n_scaled + n_passthrough``."""
        return self.n_scaled + self.n_passthrough

    def add_passthrough(self, k: int) -> None:
        """Append ``k`` passthrough columns (new one-hot categories); their weights start at 0."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise LearnError("k", k, "an int >= 0")
        self.coef = np.concatenate([self.coef, np.zeros(int(k))])
        self.n_passthrough += int(k)

    # ------------------------------------------------------------------ input checks
    def _check_X(self, X: ArrayLike) -> F64:
        return finite_matrix(X, self.n_features)

    @staticmethod
    def _check_y(y: ArrayLike, rows: int) -> F64:
        arr = np.asarray(y)
        if arr.shape != (rows,):
            raise LearnError("y.shape", arr.shape, f"({rows},), one label per row of X")
        try:
            yv = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise LearnError("y", arr.dtype, "labels 0/1 or False/True") from None
        bad = np.flatnonzero((yv != 0.0) & (yv != 1.0))
        if bad.size:
            raise LearnError(f"y[{bad[0]}]", arr[bad[0]].item(), "0/1 or False/True")
        return yv

    @staticmethod
    def _check_w(w: ArrayLike | None, rows: int) -> F64 | None:
        if w is None:
            return None
        try:
            wv = np.asarray(w, dtype=np.float64)
        except (TypeError, ValueError):
            raise LearnError("w", type(w).__name__, "numeric sample weights") from None
        if wv.shape != (rows,):
            raise LearnError("w.shape", wv.shape, f"({rows},), one weight per row of X")
        bad = np.flatnonzero(~(np.isfinite(wv) & (wv >= 0.0)))
        if bad.size:
            raise LearnError(f"w[{bad[0]}]", float(wv[bad[0]]), "a finite weight >= 0")
        return wv

    # ------------------------------------------------------------------ inference
    def predict_proba_batch(self, X: ArrayLike) -> F64:
        """P(y=1) of every row with the current state; learns nothing (not even the scaler)."""
        arr = self._check_X(X)
        Z = np.hstack([_scale(arr[:, : self.n_scaled], self.mean, self.var),
                       arr[:, self.n_scaled:]])
        return _sigmoid(Z @ self.coef + self.intercept)

    # ------------------------------------------------------------------ learning
    def learn_batch(self, X: ArrayLike, y: ArrayLike, w: ArrayLike | None = None) -> F64:
        """Test then train on a batch; returns each row's prequential P(y=1).

        Row ``k``'s probability comes from the state after the rows before it (earlier
        batches and earlier rows of this batch) and before row ``k`` is learned: exactly
        River's ``predict_proba_one(x_k)`` then ``learn_one(x_k, y_k, w=w_k)``. ``y`` holds
        0/1 (or bool) labels, ``w`` optional sample weights >= 0 (the scaler ignores them, as
        River's does). Invalid input raises :class:`~ct_stream.errors.LearnError` and leaves
        the model unchanged.
        """
        arr = self._check_X(X)
        rows = arr.shape[0]
        yv = self._check_y(y, rows)
        wv = self._check_w(w, rows)
        if rows == 0:
            return np.empty(0)
        if self.native and _native is not None:  # row by row as River, natively
            return self._learn_native(arr, yv, wv)
        # feature-major: every prefix sum runs along contiguous memory
        XT = np.ascontiguousarray(arr.T)
        z_pred, z_learn = self._scale_prequential(XT[: self.n_scaled])
        if self.n_passthrough:
            z_pred = np.vstack([z_pred, XT[self.n_scaled:]])
            z_learn = np.vstack([z_learn, XT[self.n_scaled:]])
        out = np.empty(rows)
        coef, b = self.coef, self.intercept
        for s in range(0, rows, self.block):
            e = min(s + self.block, rows)
            coef, b = self._solve_block(z_learn[:, s:e], z_pred[:, s:e], yv[s:e],
                                        None if wv is None else wv[s:e], coef, b, out[s:e])
        self.coef, self.intercept = coef, b
        self.n_seen += rows
        return out

    def _learn_native(self, X: F64, y: F64, w: F64 | None) -> F64:
        """:meth:`learn_batch` by ``ct_stream._native.lr_learn``: River's steps one row at a
        time (scaler ``learn_one``, the log-loss gradient, SGD), no fixed point."""
        need = ["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"]
        self.mean, self.var, self.coef = (np.require(a, np.float64, need) for a in (self.mean, self.var, self.coef))
        out = np.empty(len(y))
        self.intercept = _native.lr_learn(  # type: ignore[union-attr]
            np.ascontiguousarray(X, np.float64), np.ascontiguousarray(y, np.float64),
            None if w is None else np.ascontiguousarray(w, np.float64), self.n_scaled, self.n_passthrough,
            self.count, self.mean, self.var, self.coef, self.intercept, self.lr, self.intercept_lr, out)
        self.count += len(y)
        self.n_seen += len(y)
        return out

    def _scale_prequential(self, XT: F64) -> tuple[F64, F64]:
        """``(Z_pred, Z_learn)`` of a feature-major batch; advances the scaler to its end.

        ``Z_pred[:, k]`` is scaled with the statistics of the rows before ``k``,
        ``Z_learn[:, k]`` with those including row ``k`` (River's order inside ``learn_one``).
        """
        n0, rows = self.count, XT.shape[1]
        shift = (self.mean if n0 else XT[:, 0])[:, None]  # constant columns stay exactly 0
        D = XT - shift
        c1 = np.cumsum(D, axis=1)
        c2 = np.cumsum(D * D, axis=1)
        n = n0 + np.arange(1, rows + 1, dtype=np.float64)
        mean_in = shift + c1 / n
        var_in = (self.var * n0)[:, None] + c2 - c1 * c1 / n
        np.maximum(var_in, 0.0, out=var_in)
        var_in /= n
        mean_ex = np.hstack([self.mean[:, None], mean_in[:, :-1]])
        var_ex = np.hstack([self.var[:, None], var_in[:, :-1]])
        z_pred, z_learn = _scale(XT, mean_ex, var_ex), _scale(XT, mean_in, var_in)
        self.count = n0 + rows
        self.mean, self.var = mean_in[:, -1].copy(), var_in[:, -1].copy()
        return z_pred, z_learn

    def _solve_block(self, zl: F64, zp: F64, y: F64, w: F64 | None, coef: F64, b: float,
                     out: F64) -> tuple[F64, float]:
        """Sequential SGD over the columns of ``zl`` (features × rows) as a fixed point.

        Writes the prequential probabilities into ``out``; returns the new ``(coef, b)``.
        """
        a, c = self.lr, self.intercept_lr
        k = len(y)
        m0 = coef @ zl + b
        g = _gradient(m0, y, w)
        gz = np.empty_like(zl)
        S = np.zeros_like(zl)  # S[:, j] = Σ_{i<j} g_i z_i
        s = np.zeros(k)  # s[j] = Σ_{i<j} g_i
        f = 0  # rows < f are final
        for _ in range(k):
            gf = g[f:]
            np.multiply(zl[:, f:], gf, out=gz[:, f:])
            np.cumsum(gz[:, f:], axis=1, out=S[:, f:])
            S[:, f:] -= gz[:, f:]
            np.cumsum(gf, out=s[f:])
            s[f:] -= gf
            if f:
                S[:, f:] += (S[:, f - 1] + gz[:, f - 1])[:, None]
                s[f:] += s[f - 1] + g[f - 1]
            margin = m0[f:] - a * np.einsum("ij,ij->j", zl[:, f:], S[:, f:]) - c * s[f:]
            g_new = _gradient(margin, y[f:], None if w is None else w[f:])
            moved = np.flatnonzero(np.abs(g_new - gf) > self.tol)
            g[f:] = g_new
            if moved.size == 0:
                break
            f += int(moved[0])
        # the rows' prequential probabilities: state before each row, exclusive scaling
        out[:] = _sigmoid(coef @ zp + b - a * np.einsum("ij,ij->j", zp, S) - c * s)
        return coef - a * (zl @ g), b - c * float(g.sum())

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The whole model as a JSON-able dict (lists, floats, ints, str).

        >>> m = BatchLogisticRegression(1, lr=0.05)
        >>> BatchLogisticRegression.from_state(m.state()).state() == m.state()
        True
        """
        return {
            "kind": STATE_KIND,
            "n_scaled": self.n_scaled,
            "n_passthrough": self.n_passthrough,
            "lr": self.lr,
            "intercept_lr": self.intercept_lr,
            "block": self.block,
            "tol": self.tol,
            "n_seen": self.n_seen,
            "scaler": {"count": self.count, "mean": self.mean.tolist(), "var": self.var.tolist()},
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BatchLogisticRegression:
        """Rebuild a model from :meth:`state`; it continues exactly where that one was."""
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            got = state.get("kind") if isinstance(state, dict) else state
            raise LearnError('state["kind"]', got, repr(STATE_KIND))
        try:
            m = cls(state["n_scaled"], state["n_passthrough"], lr=state["lr"],
                    intercept_lr=state["intercept_lr"], block=state["block"], tol=state["tol"])
            scaler = state["scaler"]
            count, mean, var = int(scaler["count"]), scaler["mean"], scaler["var"]
            coef, intercept, n_seen = state["coef"], float(state["intercept"]), int(state["n_seen"])
        except KeyError as e:
            raise LearnError("state", f"no key {e}", f"a dict made by {cls.__name__}.state()") from None
        except (TypeError, ValueError) as e:
            raise LearnError("state", str(e), f"a dict made by {cls.__name__}.state()") from None
        m.count, m.intercept, m.n_seen = count, intercept, n_seen
        for name, value, size in (("mean", mean, m.n_scaled), ("var", var, m.n_scaled),
                                  ("coef", coef, m.n_features)):
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (size,) or not np.isfinite(arr).all():
                raise LearnError(f'state["{name}"]', value, f"{size} finite numbers")
            setattr(m, name, arr)
        return m

    # ------------------------------------------------------------------ River interop
    def to_river(self, scaled: Sequence[str], passthrough: Sequence[str] = ()) -> Any:
        """An equivalent trained River pipeline, named by ``scaled`` and ``passthrough``.

        ``Select(*scaled) | StandardScaler() | LogisticRegression()``, with
        ``+ Select(*passthrough)`` joined after the scaler when there are passthrough columns.
        Driving it with ``predict_proba_one`` + ``learn_one`` continues this model exactly.
        """
        from river import compose, linear_model, optim, preprocessing

        self._check_names(scaled, passthrough)
        scaler = preprocessing.StandardScaler()
        for j, name in enumerate(scaled):
            scaler.counts[name] = self.count
            scaler.means[name] = float(self.mean[j])
            scaler.vars[name] = float(self.var[j])
        model = linear_model.LogisticRegression(optimizer=optim.SGD(self.lr),
                                                intercept_lr=self.intercept_lr)
        model.intercept = self.intercept
        for name, weight in zip([*scaled, *passthrough], self.coef.tolist()):
            model._weights[name] = weight
        model.optimizer.n_iterations = self.n_seen
        head = compose.Select(*scaled) | scaler
        if passthrough:
            head = head + compose.Select(*passthrough)
        return head | model

    @classmethod
    def from_river(cls, pipeline: Any, scaled: Sequence[str], passthrough: Sequence[str] = (), *,
                   block: int = 1024, tol: float = 1e-9) -> BatchLogisticRegression:
        """Import a trained River pipeline shaped like :meth:`to_river`'s output.

        Its ``StandardScaler`` and ``LogisticRegression`` steps are found by exact type. Only
        what this class reproduces is accepted: plain ``SGD`` with a constant rate, a constant
        intercept rate, ``l1 == l2 == 0``, Log loss, and one count for all scaled features.
        """
        from river import linear_model, optim, preprocessing

        scaler = model = None
        stack = [pipeline]
        while stack:
            step = stack.pop()
            # containers first: a River Pipeline passes isinstance() checks of its last step
            if hasattr(step, "steps"):
                stack.extend(step.steps.values())
            elif hasattr(step, "transformers"):
                stack.extend(step.transformers.values())
            elif type(step) is preprocessing.StandardScaler:
                scaler = step
            elif type(step) is linear_model.LogisticRegression:
                model = step
        if scaler is None or model is None:
            raise LearnError("pipeline", pipeline, "a pipeline with a StandardScaler and a "
                             "LogisticRegression step")
        constant = optim.schedulers.Constant
        if (type(model.optimizer) is not optim.SGD or type(model.optimizer.lr) is not constant
                or type(model.intercept_lr) is not constant or model.l1 or model.l2
                or type(model.loss) is not optim.losses.Log):
            raise LearnError("pipeline's LogisticRegression", model, "SGD with a constant lr, a "
                             "constant intercept_lr, l1 = l2 = 0 and the Log loss")
        m = cls(len(scaled), len(passthrough), lr=model.optimizer.lr.learning_rate,
                intercept_lr=model.intercept_lr.learning_rate, block=block, tol=tol)
        m._check_names(scaled, passthrough)
        counts = {scaler.counts.get(n, 0) for n in scaled}
        if len(counts) > 1:
            raise LearnError("StandardScaler.counts", {n: scaler.counts.get(n, 0) for n in scaled},
                             "the same count for every scaled feature (dense history)")
        m.count = counts.pop() if counts else 0
        m.mean = np.array([scaler.means.get(n, 0.0) for n in scaled], dtype=np.float64)
        m.var = np.array([scaler.vars.get(n, 0.0) for n in scaled], dtype=np.float64)
        m.coef = np.array([model._weights.get(n, 0.0) for n in [*scaled, *passthrough]],
                          dtype=np.float64)
        m.intercept = float(model.intercept)
        m.n_seen = int(model.optimizer.n_iterations)
        return m

    def _check_names(self, scaled: Sequence[str], passthrough: Sequence[str]) -> None:
        names = [*scaled, *passthrough]
        if len(scaled) != self.n_scaled or len(passthrough) != self.n_passthrough:
            raise LearnError("feature names", (len(scaled), len(passthrough)),
                             f"({self.n_scaled}, {self.n_passthrough}) scaled and passthrough names")
        if len(set(names)) != len(names):
            raise LearnError("feature names", names, "distinct names")
