"""ct_stream.gate: better challengers pass, equal/worse/too-few/NaN/slow/large ones are
rejected with the reason, the paired tests match hand computations, the false approval rate
under the null stays near alpha, losses() equals River per example, reports round-trip
through JSON, bad config and input say what is wrong."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics

import ct_stream.gate as gate_module
from ct_stream.errors import CtStreamError, GateError
from ct_stream.gate import GateConfig, GateReport, evaluate, losses

TESTS = ["paired_t", "wilcoxon", "bootstrap"]


def test_doctests() -> None:
    result = doctest.testmod(gate_module)
    assert result.attempted > 0 and result.failed == 0


def holdout(seed: int, n: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).exponential(0.5, n)


# ------------------------------------------------------------------ decisions

@pytest.mark.parametrize("test", TESTS)
def test_clearly_better_challenger_is_approved(test: str) -> None:
    rng = np.random.default_rng(1)
    champ = holdout(0)
    chall = np.maximum(champ * 0.85 + rng.normal(0.0, 0.02, champ.size), 0.0)
    r = evaluate(champ, chall, config=GateConfig(test=test, min_improvement=0.05),
                 latency_seconds_per_example=1e-5, artifact_bytes=1000)
    assert r.decision == "approve" and r.approved and r.reasons == ()
    assert r.p_value is not None and r.p_value < 0.001 and r.significant
    assert r.relative_improvement == pytest.approx(0.15, abs=0.01)
    assert r.mean_difference is not None and r.mean_difference > 0
    assert r.latency_ok and r.artifact_ok and r.finite_ok and r.enough_samples


@pytest.mark.parametrize("test", TESTS)
def test_equal_challenger_is_rejected_as_not_significant(test: str) -> None:
    champ = holdout(2)
    r = evaluate(champ, champ.copy(), config=GateConfig(test=test))
    assert r.decision == "reject"
    assert r.p_value == 1.0 and r.significant is False
    assert r.reasons == ("challenger not significantly better: p_value 1 >= alpha 0.05",)


@pytest.mark.parametrize("test", TESTS)
def test_worse_challenger_is_rejected_with_reason(test: str) -> None:
    champ = holdout(3)
    r = evaluate(champ, champ * 1.2, config=GateConfig(test=test))
    assert r.decision == "reject"
    assert r.p_value is not None and r.p_value > 0.99
    assert r.mean_difference is not None and r.mean_difference < 0
    assert any(s.startswith("challenger not significantly better") for s in r.reasons)
    assert any(s.startswith("relative improvement -0.2 below min_improvement 0") for s in r.reasons)


def test_significant_but_too_small_improvement_is_rejected() -> None:
    champ = holdout(4)
    r = evaluate(champ, champ * 0.99, config=GateConfig(min_improvement=0.05))
    assert r.significant is True
    assert r.reasons == ("relative improvement 0.01 below min_improvement 0.05",)


def test_too_few_samples_rejected() -> None:
    champ = holdout(5, n=999)
    r = evaluate(champ, champ * 0.5, config=GateConfig())
    assert r.decision == "reject" and not r.enough_samples
    assert r.reasons == ("not enough holdout examples: got 999, need 1000",)
    r0 = evaluate([], [], config=GateConfig())
    assert r0.reasons == ("not enough holdout examples: got 0, need 1000",)
    assert r0.p_value is None and r0.champion_mean_loss is None


def test_nan_prediction_rejected() -> None:
    champ = holdout(6)
    y = (np.arange(champ.size) % 2).astype(float)
    pred = np.full(champ.size, 0.5)
    pred[7] = np.nan
    chall = losses("log_loss", y, pred)
    r = evaluate(champ, chall, config=GateConfig(), challenger_predictions=pred)
    assert r.decision == "reject" and not r.finite_ok
    assert r.nonfinite_predictions == 1 and r.nonfinite_losses == 1
    assert f"non-finite challenger predictions: 1 of {champ.size}" in r.reasons
    assert f"non-finite challenger losses: 1 of {champ.size}" in r.reasons
    assert r.p_value is None and r.challenger_mean_loss is None
    # predictions alone (finite losses) also reject
    pred2 = np.zeros((champ.size, 3))
    pred2[0, 1] = np.inf
    r2 = evaluate(champ, champ * 0.5, config=GateConfig(), challenger_predictions=pred2)
    assert r2.reasons == (f"non-finite challenger predictions: 1 of {pred2.size}",)


def test_latency_and_artifact_guards() -> None:
    champ = holdout(7)
    cfg = GateConfig(max_latency_seconds=1e-4, max_artifact_bytes=1000)
    ok = evaluate(champ, champ * 0.8, config=cfg, latency_seconds_per_example=1e-4,
                  artifact_bytes=1000)
    assert ok.approved and ok.latency_ok is True and ok.artifact_ok is True
    slow = evaluate(champ, champ * 0.8, config=cfg, latency_seconds_per_example=2e-4)
    assert slow.reasons == ("predict latency 0.0002 s/example over budget 0.0001 s",)
    assert slow.latency_ok is False and slow.artifact_ok is None
    big = evaluate(champ, champ * 0.8, config=cfg, artifact_bytes=1001)
    assert big.reasons == ("artifact 1001 bytes over limit 1000 bytes",)
    both = evaluate(champ, champ, config=cfg, latency_seconds_per_example=1.0,
                    artifact_bytes=10**9)
    assert len(both.reasons) == 3  # every failed check listed


def test_first_model_without_champion_uses_guards_only() -> None:
    cfg = GateConfig()
    r = evaluate(None, [0.3, 0.4], config=cfg, latency_seconds_per_example=1e-6,
                 artifact_bytes=10)
    assert r.approved and not r.has_champion and r.n == 2
    assert r.p_value is None and r.champion_mean_loss is None
    assert r.challenger_mean_loss == pytest.approx(0.35)
    bad = evaluate(None, [0.3, 0.4], config=cfg, challenger_predictions=[np.nan, 0.1],
                   artifact_bytes=10**9)
    assert bad.decision == "reject" and len(bad.reasons) == 2


# ------------------------------------------------------------------ statistics

def _normal_tail_simpson(z: float, upper: float = 14.0, steps: int = 20_000) -> float:
    """P(Z > z) by Simpson's rule on the density (independent of math.erfc)."""
    x = np.linspace(z, upper, steps + 1)
    f = np.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)
    h = (upper - z) / steps
    return float(h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum()))


# dyadic values: the differences are exact, so equal |d| really tie
SMALL_CHAMP = [0.5, 0.75, 1.0, 0.5, 0.625]
SMALL_CHALL = [0.375, 0.5, 1.0, 0.25, 0.625]  # d = [0.125, 0.25, 0, 0.25, 0]


def test_paired_t_matches_hand_computation() -> None:
    # mean d = 0.125, sd (n-1) = 0.125, z = 0.125 / (0.125 / sqrt 5) = sqrt 5
    r = evaluate(SMALL_CHAMP, SMALL_CHALL, config=GateConfig(min_samples=2))
    assert r.statistic == pytest.approx(math.sqrt(5.0), rel=1e-12)
    assert r.p_value == pytest.approx(0.0126736593, abs=1e-9)  # 1 - Phi(2.2360680)
    assert r.p_value == pytest.approx(_normal_tail_simpson(math.sqrt(5.0)), abs=1e-9)
    assert r.mean_difference == pytest.approx(0.125)
    assert r.relative_improvement == pytest.approx(0.125 / 0.675)
    assert r.approved


def test_wilcoxon_matches_hand_computation() -> None:
    # nonzero |d| = 0.125, 0.25, 0.25 -> ranks 1, 2.5, 2.5, W+ = 6, n = 3; E = 3;
    # Var = 3*4*7/24 - (2^3 - 2)/48 = 3.375
    r = evaluate(SMALL_CHAMP, SMALL_CHALL, config=GateConfig(min_samples=2, test="wilcoxon"))
    z = 3.0 / math.sqrt(3.375)
    assert r.statistic == pytest.approx(z, rel=1e-12)
    assert r.p_value == pytest.approx(_normal_tail_simpson(z), abs=1e-9)


def test_average_ranks_with_ties() -> None:
    ranks = gate_module._average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert ranks.tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_bootstrap_is_seeded_and_deterministic() -> None:
    champ = holdout(8, n=1000)
    chall = champ + np.random.default_rng(9).normal(-0.01, 0.1, champ.size)
    a = evaluate(champ, chall, config=GateConfig(test="bootstrap", bootstrap_seed=3))
    b = evaluate(champ, chall, config=GateConfig(test="bootstrap", bootstrap_seed=3))
    c = evaluate(champ, chall, config=GateConfig(test="bootstrap", bootstrap_seed=4))
    assert a.p_value == b.p_value and a.p_value != c.p_value
    assert a.statistic == pytest.approx(a.mean_difference)
    t = evaluate(champ, chall, config=GateConfig())
    assert a.p_value == pytest.approx(t.p_value, abs=0.03)  # agrees with the normal test


@pytest.mark.parametrize(("test", "seeds", "n"), [("paired_t", 200, 1000),
                                                  ("wilcoxon", 200, 1000),
                                                  ("bootstrap", 60, 300)])
def test_false_approval_rate_under_null_is_at_most_about_alpha(test: str, seeds: int,
                                                              n: int) -> None:
    cfg = GateConfig(test=test, min_samples=n, bootstrap_resamples=200)
    approvals = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        champ = rng.exponential(0.5, n)
        chall = champ + rng.normal(0.0, 0.1, n)  # symmetric noise: no real improvement
        approvals += evaluate(champ, chall, config=cfg).approved
    assert approvals <= 2 * cfg.alpha * seeds


# ------------------------------------------------------------------ losses

def river_log_loss(y: bool, p: float) -> float:
    m = metrics.LogLoss()
    m.update(y, p)
    return m.get()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 1.0)), min_size=1, max_size=30))
def test_binary_log_loss_equals_river(rows: list[tuple[bool, float]]) -> None:
    y = [r[0] for r in rows]
    p = [r[1] for r in rows]
    got = losses("log_loss", y, p)
    want = [river_log_loss(yi, pi) for yi, pi in rows]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_binary_log_loss_edge_probabilities() -> None:
    got = losses("log_loss", [1, 0, 1, 0], [0.0, 1.0, 1.0, 0.0])
    want = [river_log_loss(True, 0.0), river_log_loss(False, 1.0),
            river_log_loss(True, 1.0), river_log_loss(False, 0.0)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isfinite(got).all()


def test_cross_entropy_equals_river() -> None:
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(4), size=20)
    p[0] = [1.0, 0.0, 0.0, 0.0]
    y = rng.integers(0, 4, size=20)
    y[0] = 2
    got = losses("cross_entropy", y, p)
    for i in range(20):
        m = metrics.CrossEntropy()
        m.update(int(y[i]), {k: float(p[i, k]) for k in range(4)})
        assert got[i] == pytest.approx(m.get(), rel=1e-12)


def test_squared_error_and_nan_predictions_propagate() -> None:
    assert losses("squared_error", [1.0, -2.0], [3.0, -2.5]).tolist() == [4.0, 0.25]
    assert np.isnan(losses("squared_error", [1.0], [np.nan])).all()
    assert np.isnan(losses("log_loss", [1], [np.nan])).all()


@pytest.mark.parametrize(("kind", "y", "p", "what"), [
    ("hinge", [1], [0.5], "kind"),
    ("log_loss", [2], [0.5], "y[0]"),
    ("log_loss", [1, 0], [0.5], "p.shape"),
    ("log_loss", [[1]], [[0.5]], "y.shape"),
    ("cross_entropy", [3], [[0.5, 0.5]], "y[0]"),
    ("cross_entropy", [0.5], [[0.5, 0.5]], "y[0]"),
    ("cross_entropy", [0], [0.5], "p.shape"),
    ("squared_error", [np.inf], [0.5], "y[0]"),
    ("squared_error", [1.0], ["x"], "p"),
])
def test_losses_bad_input(kind: str, y: object, p: object, what: str) -> None:
    with pytest.raises(GateError) as e:
        losses(kind, y, p)  # type: ignore[arg-type]
    assert e.value.what == what and isinstance(e.value, CtStreamError)


# ------------------------------------------------------------------ report

def test_to_dict_json_round_trip() -> None:
    champ = np.round(holdout(12) * 1024) / 1024  # dyadic: champ - 0.125 is exact
    for r in [evaluate(champ, champ * 0.9, config=GateConfig(test="wilcoxon"),
                       latency_seconds_per_example=1e-6, artifact_bytes=5),
              evaluate(champ, champ - 0.125, config=GateConfig()),  # sd 0: infinite statistic
              evaluate(None, [1.0], config=GateConfig()),
              evaluate(champ, np.full(champ.size, np.nan), config=GateConfig())]:
        d = r.to_dict()
        text = json.dumps(d, allow_nan=False)
        assert json.loads(text) == d
        assert d["kind"] == gate_module.REPORT_KIND
        assert d["decision"] == r.decision and d["reasons"] == list(r.reasons)
        assert d["config"]["min_samples"] == 1000
        assert set(d) - {"kind"} == set(GateReport.__dataclass_fields__)
    inf_report = evaluate(champ, champ - 0.125, config=GateConfig())
    assert inf_report.statistic == math.inf and inf_report.to_dict()["statistic"] is None
    assert inf_report.p_value == 0.0 and inf_report.approved


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize(("kwargs", "what"), [
    ({"min_samples": 1}, "config.min_samples"),
    ({"min_samples": 10.0}, "config.min_samples"),
    ({"min_samples": True}, "config.min_samples"),
    ({"alpha": 0.0}, "config.alpha"),
    ({"alpha": 1.0}, "config.alpha"),
    ({"alpha": math.nan}, "config.alpha"),
    ({"min_improvement": 1.0}, "config.min_improvement"),
    ({"max_latency_seconds": 0}, "config.max_latency_seconds"),
    ({"max_latency_seconds": math.inf}, "config.max_latency_seconds"),
    ({"max_artifact_bytes": 0}, "config.max_artifact_bytes"),
    ({"test": "anova"}, "config.test"),
    ({"bootstrap_resamples": 10}, "config.bootstrap_resamples"),
    ({"bootstrap_seed": -1}, "config.bootstrap_seed"),
])
def test_config_validation(kwargs: dict, what: str) -> None:
    with pytest.raises(GateError) as e:
        GateConfig(**kwargs)
    assert e.value.what == what
    assert str(e.value).startswith(f"{what}: got ")


def test_config_is_frozen() -> None:
    cfg = GateConfig()
    with pytest.raises(AttributeError):
        cfg.alpha = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(("champ", "chall", "kwargs", "what"), [
    ([0.1, 0.2], [0.1], {}, "champion_losses.shape"),
    ([[0.1]], [[0.1]], {}, "challenger_losses.shape"),
    ([0.1, np.nan], [0.1, 0.2], {}, "champion_losses[1]"),
    ([0.1], ["a"], {}, "challenger_losses"),
    ([0.1], [0.1], {"latency_seconds_per_example": -1.0}, "latency_seconds_per_example"),
    ([0.1], [0.1], {"latency_seconds_per_example": math.nan}, "latency_seconds_per_example"),
    ([0.1], [0.1], {"artifact_bytes": 1.5}, "artifact_bytes"),
    ([0.1], [0.1], {"config": {"alpha": 0.05}}, "config"),
])
def test_evaluate_bad_input(champ: object, chall: object, kwargs: dict, what: str) -> None:
    kwargs = {"config": GateConfig(), **kwargs}
    with pytest.raises(GateError) as e:
        evaluate(champ, chall, **kwargs)  # type: ignore[arg-type]
    assert e.value.what == what
