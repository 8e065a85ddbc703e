"""ct_stream.learn: the batched logistic regression equals River learn_one; the metrics equal
River's / exact recomputation; checkpoints round-trip; bad input says what is wrong."""

from __future__ import annotations

import doctest
import json

import numpy as np
import orjson
import pytest
from river import compose, linear_model, metrics, optim, preprocessing

import ct_stream.learn.linear as linear_module
import ct_stream.learn.metrics as metrics_module
from ct_stream.errors import CtStreamError, LearnError
from ct_stream.learn import BatchLogisticRegression, PrequentialMetrics, roc_auc

N_ROWS = 3000
N_SCALED = 10
NAMES = [f"f{i}" for i in range(N_SCALED)]
PASS = ["b0", "b1"]


def make_stream(n: int = N_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 features ~ N(0, 1) (one shifted and scaled), label ~ Bernoulli(sigmoid(w·x)),
    two 0/1 passthrough columns last, weights ~ U(0.2, 3)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_SCALED))
    X[:, 3] = 5.0 + 20.0 * X[:, 3]
    w_true = rng.uniform(-2, 2, N_SCALED)
    z = (X - X.mean(0)) / X.std(0)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z @ w_true)))).astype(np.int64)
    P = (rng.random((n, 2)) < 0.3).astype(np.float64)
    return np.hstack([X, P]), y, rng.uniform(0.2, 3.0, n)


def river_pipeline(passthrough: bool) -> compose.Pipeline:
    head = compose.Select(*NAMES) | preprocessing.StandardScaler()
    if passthrough:
        head = head + compose.Select(*PASS)
    return head | linear_model.LogisticRegression()


def river_prequential(model, X: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                      names: list[str]) -> np.ndarray:
    out = np.empty(len(y))
    for i, row in enumerate(X.tolist()):
        x = dict(zip(names, row))
        out[i] = model.predict_proba_one(x).get(True, 0.0)
        if w is None:
            model.learn_one(x, bool(y[i]))
        else:
            model.learn_one(x, bool(y[i]), w=float(w[i]))
    return out


def learn_in_batches(model: BatchLogisticRegression, X, y, w, size: int) -> np.ndarray:
    out = [model.learn_batch(X[s:s + size], y[s:s + size], None if w is None else w[s:s + size])
           for s in range(0, len(y), size)]
    return np.concatenate(out)


@pytest.fixture(autouse=True, params=["native", "numpy"])
def learn_path(request, monkeypatch):
    """Every test twice: ``learn_batch`` in ct_stream._native (River's steps row by row)
    and the numpy fixed point; both must equal River."""
    if request.param == "numpy":
        monkeypatch.setattr(linear_module, "_native", None)
    elif linear_module._native is None:
        pytest.skip("ct_stream._native is not built")
    return request.param


@pytest.fixture(scope="module")
def stream():
    return make_stream()


@pytest.fixture(scope="module")
def river_plain(stream):
    X, y, _ = stream
    return river_prequential(river_pipeline(False), X[:, :N_SCALED], y, None, NAMES)


@pytest.fixture(scope="module")
def river_weighted(stream):
    X, y, w = stream
    return river_prequential(river_pipeline(True), X, y, w, NAMES + PASS)


# ------------------------------------------------------------------ exactness vs River


@pytest.mark.parametrize("size", [1, 7, 1000, N_ROWS])
def test_probabilities_equal_river_learn_one(stream, river_plain, size):
    X, y, _ = stream
    n = 600 if size == 1 else N_ROWS  # batch size 1 is the slow path: a prefix is enough
    model = BatchLogisticRegression(N_SCALED)
    p = learn_in_batches(model, X[:n, :N_SCALED], y[:n], None, size)
    assert np.abs(p - river_plain[:n]).max() < 1e-8


@pytest.mark.parametrize("size", [7, 1000])
def test_weights_and_passthrough_equal_river(stream, river_weighted, size):
    X, y, w = stream
    model = BatchLogisticRegression(N_SCALED, len(PASS), block=256)
    p = learn_in_batches(model, X, y, w, size)
    assert np.abs(p - river_weighted).max() < 1e-8


def test_final_state_equals_river(stream):
    X, y, w = stream
    river = river_pipeline(True)
    river_prequential(river, X[:1000], y[:1000], w[:1000], NAMES + PASS)
    model = BatchLogisticRegression(N_SCALED, len(PASS))
    model.learn_batch(X[:1000], y[:1000], w[:1000])
    back = BatchLogisticRegression.from_river(river, NAMES, PASS)
    assert back.count == model.count == 1000 and back.n_seen == 1000
    for name in ("mean", "var", "coef"):
        np.testing.assert_allclose(getattr(back, name), getattr(model, name), rtol=1e-9, atol=1e-8)
    assert back.intercept == pytest.approx(model.intercept, abs=1e-8)


def test_bool_labels_and_constant_column_match_river():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, N_SCALED))
    X[:, 5] = 2.5  # variance exactly 0: River scales it to 0
    y = rng.random(500) < 0.4
    expected = river_prequential(river_pipeline(False), X, y, None, NAMES)
    got = learn_in_batches(BatchLogisticRegression(N_SCALED), X, y, None, 64)
    assert np.abs(got - expected).max() < 1e-8


def test_river_round_trip_continues_exactly(stream, river_weighted):
    X, y, w = stream
    model = BatchLogisticRegression(N_SCALED, len(PASS))
    p1 = model.learn_batch(X[:1000], y[:1000], w[:1000])
    river = model.to_river(NAMES, PASS)
    p2 = river_prequential(river, X[1000:1300], y[1000:1300], w[1000:1300], NAMES + PASS)
    back = BatchLogisticRegression.from_river(river, NAMES, PASS)
    p3 = back.learn_batch(X[1300:], y[1300:], w[1300:])
    assert np.abs(np.concatenate([p1, p2, p3]) - river_weighted).max() < 1e-8


def test_from_river_rejects_what_it_cannot_reproduce():
    regularised = compose.Select(*NAMES) | preprocessing.StandardScaler() | \
        linear_model.LogisticRegression(l2=0.1)
    with pytest.raises(LearnError, match="l1 = l2 = 0"):
        BatchLogisticRegression.from_river(regularised, NAMES)
    adam = compose.Select(*NAMES) | preprocessing.StandardScaler() | \
        linear_model.LogisticRegression(optimizer=optim.Adam())
    with pytest.raises(LearnError, match="SGD with a constant lr"):
        BatchLogisticRegression.from_river(adam, NAMES)
    with pytest.raises(LearnError, match="StandardScaler"):
        BatchLogisticRegression.from_river(linear_model.LogisticRegression(), NAMES)


# ------------------------------------------------------------------ prequential property


def test_one_batch_equals_many_batches(stream):
    X, y, w = stream
    whole = BatchLogisticRegression(N_SCALED, len(PASS), block=N_ROWS)
    p_whole = whole.learn_batch(X, y, w)
    sizes = [1, 2, 3, 50, 333, 1000, 11, 1600]  # sums to N_ROWS
    assert sum(sizes) == N_ROWS
    parts = BatchLogisticRegression(N_SCALED, len(PASS), block=300)
    bounds = np.cumsum([0, *sizes])
    p_parts = np.concatenate([parts.learn_batch(X[a:b], y[a:b], w[a:b])
                              for a, b in zip(bounds[:-1], bounds[1:])])
    assert np.abs(p_whole - p_parts).max() < 1e-9
    np.testing.assert_allclose(whole.coef, parts.coef, atol=1e-8)  # tol=1e-9 per gradient


def test_a_row_prediction_ignores_its_own_and_later_labels(stream):
    X, y, _ = stream
    p = BatchLogisticRegression(N_SCALED).learn_batch(X[:500, :N_SCALED], y[:500])
    flipped = y[:500].copy()
    flipped[300:] = 1 - flipped[300:]
    q = BatchLogisticRegression(N_SCALED).learn_batch(X[:500, :N_SCALED], flipped)
    assert np.array_equal(p[:301], q[:301])
    assert not np.allclose(p[301:], q[301:])


def test_predict_proba_batch_uses_the_current_state_and_learns_nothing(stream):
    X, y, _ = stream
    model = BatchLogisticRegression(N_SCALED, len(PASS))
    model.learn_batch(X[:1000], y[:1000])
    before = model.state()
    p = model.predict_proba_batch(X[1000:1010])
    assert model.state() == before
    river = model.to_river(NAMES, PASS)
    expected = [river.predict_proba_one(dict(zip(NAMES + PASS, r))).get(True, 0.0)
                for r in X[1000:1010].tolist()]
    assert np.abs(p - expected).max() < 1e-12
    # the next learn_batch's first row is predicted with the same state
    assert model.learn_batch(X[1000:1001], y[1000:1001])[0] == pytest.approx(p[0], abs=1e-15)


def test_empty_batch_changes_nothing():
    model = BatchLogisticRegression(3)
    assert model.learn_batch(np.empty((0, 3)), np.empty(0)).shape == (0,)
    assert model.state() == BatchLogisticRegression(3).state()


def test_add_passthrough_starts_new_weights_at_zero(stream):
    X, y, _ = stream
    model = BatchLogisticRegression(N_SCALED, 1)
    model.learn_batch(X[:500, :11], y[:500])
    model.add_passthrough(1)
    assert model.n_features == 12 and model.coef[-1] == 0.0
    model.learn_batch(X[500:600], y[500:600])
    assert model.coef[-1] != 0.0


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("codec", ["json", "orjson"])
def test_state_round_trip_continues_identically(stream, codec):
    X, y, w = stream
    model = BatchLogisticRegression(N_SCALED, len(PASS), block=500)
    model.learn_batch(X[:1700], y[:1700], w[:1700])
    state = model.state()
    text = json.dumps(state) if codec == "json" else orjson.dumps(state)
    restored = BatchLogisticRegression.from_state(json.loads(text))
    assert restored.state() == state
    a = model.learn_batch(X[1700:], y[1700:], w[1700:])
    b = restored.learn_batch(X[1700:], y[1700:], w[1700:])
    assert np.array_equal(a, b)
    assert restored.state() == model.state()


def test_from_state_rejects_foreign_or_broken_state():
    good = BatchLogisticRegression(2).state()
    with pytest.raises(LearnError, match=r'state\["kind"\]: got \'other\''):
        BatchLogisticRegression.from_state({**good, "kind": "other"})
    with pytest.raises(LearnError, match="no key 'coef'"):
        BatchLogisticRegression.from_state({k: v for k, v in good.items() if k != "coef"})
    with pytest.raises(LearnError, match=r'state\["coef"\].*2 finite numbers'):
        BatchLogisticRegression.from_state({**good, "coef": [0.0]})


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("X", "y", "w", "message"), [
    (np.zeros((3, 2)), [0, 1, 0], None, r"X\.shape: got \(3, 2\); allowed: \(rows, 3\)"),
    (np.zeros(3), [0], None, r"X\.shape: got \(3,\)"),
    ([[0, 1, float("nan")]], [0], None, r"X\[0, 2\]: got nan; allowed: a finite number"),
    ([[0, 1, 2], [0, float("inf"), 2]], [0, 1], None, r"X\[1, 1\]: got inf"),
    ([["a", 1, 2]], [0], None, r"X: got 'list'; allowed: a numeric 2-d array"),
    (np.zeros((2, 3)), [0, 2], None, r"y\[1\]: got 2; allowed: 0/1 or False/True"),
    (np.zeros((2, 3)), [0.5, 1], None, r"y\[0\]: got 0\.5"),
    (np.zeros((2, 3)), [0, 1, 1], None, r"y\.shape: got \(3,\); allowed: \(2,\)"),
    (np.zeros((2, 3)), [0, 1], [1.0, -0.5], r"w\[1\]: got -0\.5; allowed: a finite weight >= 0"),
    (np.zeros((2, 3)), [0, 1], [1.0], r"w\.shape: got \(1,\)"),
])
def test_bad_input_raises_a_helpful_learn_error(X, y, w, message):
    model = BatchLogisticRegression(3)
    before = model.state()
    with pytest.raises(LearnError, match=message) as info:
        model.learn_batch(X, y, w)
    assert isinstance(info.value, CtStreamError)
    assert model.state() == before  # nothing was learned
    if message.startswith("X"):  # predicting checks X the same way
        with pytest.raises(LearnError, match=message):
            model.predict_proba_batch(X)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_scaled": -1}, r"n_scaled: got -1; allowed: an int >= 0"),
    ({"n_scaled": 0}, r"n_scaled \+ n_passthrough: got 0"),
    ({"n_scaled": 2, "lr": 0.0}, r"lr: got 0\.0; allowed: a finite number > 0"),
    ({"n_scaled": 2, "block": 0}, r"block: got 0"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(LearnError, match=message):
        BatchLogisticRegression(**kwargs)


def test_to_river_checks_the_names():
    with pytest.raises(LearnError, match=r"feature names: got \(1, 0\); allowed: \(2, 0\)"):
        BatchLogisticRegression(2).to_river(["a"])
    with pytest.raises(LearnError, match="distinct names"):
        BatchLogisticRegression(2).to_river(["a", "a"])


# ------------------------------------------------------------------ metrics


def exact_auc_pairs(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Brute-force weighted AUC over all (positive, negative) pairs, ties 1/2."""
    w = np.ones(len(p)) if w is None else w
    pos, neg = y == 1, y == 0
    pp, pn = p[pos][:, None], p[neg][None, :]
    wins = (pp > pn) + 0.5 * (pp == pn)
    ww = w[pos][:, None] * w[neg][None, :]
    return float((wins * ww).sum() / ww.sum())


def test_metrics_equal_river_log_loss_and_accuracy(stream, river_plain):
    _, y, _ = stream
    m = PrequentialMetrics(window=500)
    ll, acc = metrics.LogLoss(), metrics.Accuracy()
    for s in range(0, N_ROWS, 700):
        m.update(river_plain[s:s + 700], y[s:s + 700])
        for p, t in zip(river_plain[s:s + 700].tolist(), (y[s:s + 700] == 1).tolist()):
            ll.update(t, p)
            acc.update(t, p > 0.5)
        got = m.get()
        assert got["log_loss"] == pytest.approx(ll.get(), rel=1e-12)
        assert got["accuracy"] == pytest.approx(acc.get(), rel=1e-12)
    assert got["n"] == N_ROWS


def test_metrics_clip_like_river():
    m = PrequentialMetrics()
    m.update([0.0, 1.0], [1, 0])
    river = metrics.LogLoss()
    river.update(True, 0.0)
    river.update(False, 1.0)
    assert m.get()["log_loss"] == pytest.approx(river.get(), rel=1e-12)


def test_cumulative_auc_is_close_to_exact(stream, river_plain):
    _, y, w = stream
    m = PrequentialMetrics()
    for s in range(0, N_ROWS, 1000):
        m.update(river_plain[s:s + 1000], y[s:s + 1000], w[s:s + 1000])
    assert m.get()["roc_auc"] == pytest.approx(exact_auc_pairs(river_plain, y, w), abs=1e-3)


def test_exact_roc_auc_matches_brute_force():
    rng = np.random.default_rng(7)
    p = rng.integers(0, 20, 400) / 20.0  # many ties
    y = rng.integers(0, 2, 400)
    w = rng.uniform(0.1, 2.0, 400)
    assert roc_auc(p, y) == pytest.approx(exact_auc_pairs(p, y), abs=1e-12)
    assert roc_auc(p, y, w) == pytest.approx(exact_auc_pairs(p, y, w), abs=1e-12)
    assert np.isnan(roc_auc([0.2, 0.3], [1, 1]))


@pytest.mark.parametrize("batch", [1, 37, 250, 1200])
def test_rolling_window_equals_recomputation_over_the_last_n(stream, river_plain, batch):
    _, y, w = stream
    window = 250
    m = PrequentialMetrics(window=window)
    for s in range(0, N_ROWS, batch):
        e = min(s + batch, N_ROWS)
        m.update(river_plain[s:e], y[s:e], w[s:e])
        if s % (batch * 7) == 0 or e == N_ROWS:
            lo = max(0, e - window)
            p, t, ww = river_plain[lo:e], y[lo:e], w[lo:e]
            pc = np.clip(p, 1e-15, 1 - 1e-15)
            ll = -np.log(np.where(t == 1, pc, 1 - pc))
            got = m.get()
            assert got["rolling_log_loss"] == pytest.approx((ll * ww).sum() / ww.sum(), rel=1e-12)
            assert got["rolling_accuracy"] == pytest.approx(
                (((p > 0.5) == (t == 1)) * ww).sum() / ww.sum(), rel=1e-12)
            if 0 < t.sum() < len(t):
                assert got["rolling_roc_auc"] == pytest.approx(exact_auc_pairs(p, t, ww), abs=1e-12)


def test_metrics_state_round_trip(stream, river_plain):
    _, y, _ = stream
    m = PrequentialMetrics(window=300, bins=64)
    m.update(river_plain[:1000], y[:1000])
    m.update(river_plain[1000:1130], y[1000:1130])
    r = PrequentialMetrics.from_state(json.loads(orjson.dumps(m.state())))
    assert r.get() == m.get()
    m.update(river_plain[1130:], y[1130:])
    r.update(river_plain[1130:], y[1130:])
    assert r.get() == pytest.approx(m.get(), rel=1e-12)


def test_empty_metrics_are_nan():
    got = PrequentialMetrics().get()
    assert got["n"] == 0.0 and all(np.isnan(v) for k, v in got.items() if k != "n")


@pytest.mark.parametrize(("p", "y", "w", "message"), [
    ([0.2, 1.5], [0, 1], None, r"p\[1\]: got 1\.5; allowed: a probability in \[0, 1\]"),
    ([0.2, float("nan")], [0, 1], None, r"p\[1\]: got nan"),
    ([0.2, 0.3], [0, 3], None, r"y\[1\]: got 3; allowed: 0/1"),
    ([0.2, 0.3], [0], None, r"y\.shape: got \(1,\)"),
    ([0.2, 0.3], [0, 1], [1.0, float("inf")], r"w\[1\]: got inf"),
])
def test_metrics_bad_input(p, y, w, message):
    m = PrequentialMetrics()
    with pytest.raises(LearnError, match=message):
        m.update(p, y, w)
    assert m.get()["n"] == 0.0


# ------------------------------------------------------------------ doctests


@pytest.mark.parametrize("module", [linear_module, metrics_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_from_state_wraps_malformed_values():
    good = BatchLogisticRegression(2).state()
    with pytest.raises(LearnError, match="a dict made by BatchLogisticRegression.state()"):
        BatchLogisticRegression.from_state({**good, "scaler": None})
    bad_metrics = {**PrequentialMetrics().state(), "n": "many"}
    with pytest.raises(LearnError, match="a dict made by PrequentialMetrics.state()"):
        PrequentialMetrics.from_state(bad_metrics)
