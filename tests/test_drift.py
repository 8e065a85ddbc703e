"""ct_stream.learn.drift: PSI / KS on known samples, KS equals brute force, the data drift
monitor flags exactly the shifted feature, the concept drift monitor fires after (not before)
an error-rate change, bad input says what is wrong, checkpoints round-trip."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from river import drift

import ct_stream.learn.drift as drift_module
from ct_stream.errors import CtStreamError, LearnError
from ct_stream.learn import (
    ConceptDriftMonitor,
    DataDriftMonitor,
    DriftSignal,
    ks_statistic,
    psi,
)

NAMES = [f"f{i}" for i in range(10)]


def test_doctests() -> None:
    result = doctest.testmod(drift_module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ psi / ks

def ks_brute(a: np.ndarray, b: np.ndarray) -> float:
    """max over every sample point x of |F_a(x) - F_b(x)|, F the right-continuous ECDF."""
    return max(abs(np.mean(a <= x) - np.mean(b <= x)) for x in np.concatenate([a, b]))


@pytest.mark.parametrize("seed", range(30))
def test_ks_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, size=2)
    # integer-valued draws give many ties, within and across the samples
    a = rng.integers(0, 8, n).astype(float) if seed % 2 else rng.normal(size=n)
    b = rng.integers(0, 8, m).astype(float) if seed % 2 else rng.normal(0.3, 1.5, size=m)
    assert ks_statistic(a, b) == pytest.approx(ks_brute(a, b), abs=1e-12)
    assert ks_statistic(b, a) == pytest.approx(ks_statistic(a, b), abs=1e-12)


def test_psi_and_ks_identical_and_shifted() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert ks_statistic(ref, ref) == 0.0
    same = rng.normal(size=20_000)
    assert psi(ref, same) < 0.01
    assert ks_statistic(ref, same) < 0.03
    shifted = rng.normal(1.0, 1.0, size=20_000)
    assert psi(ref, shifted) > 0.5
    # D of N(0,1) vs N(1,1) is 2·Φ(0.5) - 1 = 0.383
    assert ks_statistic(ref, shifted) == pytest.approx(0.383, abs=0.03)
    wider = rng.normal(0.0, 3.0, size=20_000)
    assert psi(ref, wider) > 0.5


def test_psi_handles_ties_and_empty_bins() -> None:
    ref = np.repeat([0.0, 1.0], 500)  # most quantile edges coincide
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(psi(ref, np.full(100, 5.0)))
    assert psi(ref, np.full(100, 5.0)) > 1.0
    assert psi([1.0, 2.0, 3.0], [2.0], bins=2) >= 0.0


@pytest.mark.parametrize("bad", [[], [1.0, np.nan], [np.inf], [[1.0, 2.0]], ["a"]])
def test_psi_ks_reject_bad_samples(bad: object) -> None:
    for fn in (psi, ks_statistic):
        with pytest.raises(LearnError):
            fn(bad, [1.0, 2.0])
        with pytest.raises(LearnError):
            fn([1.0, 2.0], bad)


def test_psi_rejects_bad_bins() -> None:
    for bins in (1, 0, 2.5, True, "10"):
        with pytest.raises(LearnError, match="bins"):
            psi([1.0, 2.0], [1.0], bins=bins)  # type: ignore[arg-type]


# ------------------------------------------------------------------ DataDriftMonitor

def stream(rows: int, seed: int, shift: dict[int, float] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 10))
    X[:, 3] = 5.0 + 20.0 * X[:, 3]  # one feature on another scale
    X[:, 7] = rng.exponential(2.0, rows)  # one skewed feature
    for j, d in (shift or {}).items():
        X[:, j] += d * X[:, j].std()
    return X


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_data_drift_flags_exactly_the_shifted_feature(method: str) -> None:
    mon = DataDriftMonitor(NAMES, reference_size=5000, window=5000, method=method)
    X = stream(40_000, seed=1)
    for batch in np.array_split(X, 40):  # stationary: nothing, ever
        assert mon.update(batch) == []
    assert mon.n_evaluations == 31 and mon.rows_seen == 40_000
    assert mon.last_statistics is not None and mon.last_statistics.shape == (10,)
    assert (mon.last_statistics < mon.threshold / 3).all()

    shifted = stream(10_000, seed=2, shift={4: 1.0})
    seen = []
    for batch in np.array_split(shifted, 10):
        seen.append(mon.update(batch))
    assert all(s.feature == "f4" for signals in seen for s in signals)
    assert seen[-1] and seen[-1][0].rows_seen == 50_000
    sig = seen[-1][0]
    assert isinstance(sig, DriftSignal) and sig.method == method
    assert sig.statistic > sig.threshold == mon.threshold
    # the full window after the shift: f4 far over, the others still far under
    assert mon.last_statistics[4] > 2 * mon.threshold
    assert (np.delete(mon.last_statistics, 4) < mon.threshold / 3).all()


def test_data_drift_two_features_and_reset_reference() -> None:
    mon = DataDriftMonitor(NAMES, reference_size=4000, window=3000, method="ks")
    assert mon.update(stream(8000, seed=3)) == []
    signals = mon.update(stream(3000, seed=4, shift={0: 1.0, 9: -0.8}))
    assert [s.feature for s in signals] == ["f0", "f9"]
    mon.reset_reference()
    assert not mon.reference_ready  # 3000 rows of the window, 1000 to top up
    assert mon.update(stream(4000, seed=5, shift={0: 1.0, 9: -0.8})) == []
    assert mon.reference_ready and mon.n_evaluations >= 2
    assert mon.update(stream(3000, seed=6, shift={0: 1.0, 9: -0.8})) == []
    assert (mon.last_statistics < mon.threshold / 2).all()
    # and drifting back to the old distribution is drift again
    assert [s.feature for s in mon.update(stream(3000, seed=7))] == ["f0", "f9"]


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_data_drift_statistics_equal_the_functions(method: str) -> None:
    """The monitor's precomputed, vectorised path gives psi() / ks_statistic() of its windows."""
    mon = DataDriftMonitor(NAMES, reference_size=3000, window=2000, method=method, bins=7)
    X = stream(9000, seed=11, shift={1: 0.3})
    X[:, 5] = np.round(X[:, 5])  # ties and duplicate quantile edges
    for batch in np.array_split(X, 9):
        mon.update(batch)
    st = mon.state()
    ref, cur = np.asarray(st["reference"]), np.asarray(st["current"])
    for j in range(10):
        want = (psi(ref[:, j], cur[:, j], bins=7) if method == "psi"
                else ks_statistic(ref[:, j], cur[:, j]))
        assert mon.last_statistics[j] == pytest.approx(want, abs=1e-12)


def test_data_drift_every() -> None:
    mon = DataDriftMonitor(["a"], reference_size=100, window=100, every=250)
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(12):
        mon.update(rng.normal(size=(100, 1)))
        counts.append(mon.n_evaluations)
    # rows 1-100 fill the reference; rows 101-400 are the first 300 >= 250 current-window rows
    assert counts == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_data_drift_reset_with_small_reference() -> None:
    mon = DataDriftMonitor(["a"], reference_size=100, window=300)
    rng = np.random.default_rng(0)
    mon.update(rng.normal(size=(400, 1)))
    mon.update(rng.normal(3.0, 1.0, size=(300, 1)))
    mon.reset_reference()
    assert mon.reference_ready  # the last 100 rows of the window
    assert mon.update(rng.normal(3.0, 1.0, size=(300, 1))) == []


def test_data_drift_windows_over_batches() -> None:
    """Batches larger than both windows, and the rolling window keeps the newest rows."""
    mon = DataDriftMonitor(["a", "b"], reference_size=10, window=5, method="ks")
    X = np.arange(40, dtype=float).reshape(20, 2)
    assert mon.update(X) == [
        DriftSignal("a", 1.0, 0.1, "ks", 20), DriftSignal("b", 1.0, 0.1, "ks", 20)]
    st = mon.state()
    assert st["reference"] == X[:10].tolist() and st["current"] == X[15:].tolist()
    mon.update(X[:2])
    assert mon.state()["current"] == [*X[17:].tolist(), *X[:2].tolist()]


def test_data_drift_state_round_trip() -> None:
    mon = DataDriftMonitor(NAMES, reference_size=500, window=300, method="psi", threshold=0.15,
                           bins=8, every=50)
    X = stream(1000, seed=8)
    mon.update(X[:700])
    clone = DataDriftMonitor.from_state(json.loads(json.dumps(mon.state())))
    assert clone.state() == mon.state()
    Y = stream(400, seed=9, shift={2: 1.5})
    a, b = mon.update(Y), clone.update(Y)
    assert a == b and [s.feature for s in a] == ["f2"]
    np.testing.assert_array_equal(mon.last_statistics, clone.last_statistics)
    # a monitor still filling its reference round-trips too
    young = DataDriftMonitor(["x"], 10, 5)
    young.update([[1.0], [2.0]])
    assert DataDriftMonitor.from_state(young.state()).state() == young.state()
    for method in ("psi", "ks"):  # and continues exactly, with either method
        a = DataDriftMonitor(NAMES, 400, 200, method=method, every=70)
        a.update(stream(650, seed=12))
        b = DataDriftMonitor.from_state(json.loads(json.dumps(a.state())))
        for batch in np.array_split(stream(600, seed=13, shift={6: 2.0}), 7):
            assert a.update(batch) == b.update(batch)
        assert a.n_evaluations == b.n_evaluations > 0
        np.testing.assert_array_equal(a.last_statistics, b.last_statistics)


@pytest.mark.parametrize("kwargs, what", [
    ({"features": []}, "features"),
    ({"features": ["a", "a"]}, "features"),
    ({"features": ["a", 1]}, "features"),
    ({"features": "ab"}, "features"),
    ({"reference_size": 0}, "reference_size"),
    ({"window": 1.5}, "window"),
    ({"method": "kswin"}, "method"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"bins": 1}, "bins"),
    ({"every": 0}, "every"),
])
def test_data_drift_rejects_bad_arguments(kwargs: dict, what: str) -> None:
    args = {"features": ["a", "b"], "reference_size": 10, "window": 5, **kwargs}
    with pytest.raises(LearnError) as info:
        DataDriftMonitor(**args)
    assert info.value.what == what
    assert isinstance(info.value, CtStreamError)


def test_data_drift_rejects_bad_batches_and_state() -> None:
    mon = DataDriftMonitor(["a", "b"], reference_size=10, window=5)
    with pytest.raises(LearnError, match=r"X.shape"):
        mon.update(np.zeros((3, 3)))
    with pytest.raises(LearnError, match=r"X.shape"):
        mon.update(np.zeros(4))
    with pytest.raises(LearnError, match=r"X\[1, 0\]: got nan"):
        mon.update([[0.0, 1.0], [np.nan, 1.0]])
    assert mon.rows_seen == 0  # bad input changes nothing
    with pytest.raises(LearnError, match="kind"):
        DataDriftMonitor.from_state({"kind": "other"})
    st = mon.state()
    del st["window"]
    with pytest.raises(LearnError, match="no key"):
        DataDriftMonitor.from_state(st)
    st = mon.state()
    st["current"] = [[0.0, 0.0]] * 6
    with pytest.raises(LearnError, match="current"):
        DataDriftMonitor.from_state(st)
    st["current"] = [[0.0, 0.0]]  # a current row while the reference is still filling
    with pytest.raises(LearnError, match="current"):
        DataDriftMonitor.from_state(st)


# ------------------------------------------------------------------ ConceptDriftMonitor

def error_stream(seed: int, n_before: int = 20_000, n_after: int = 20_000,
                 before: float = 0.1, after: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = np.r_[np.full(n_before, before), np.full(n_after, after)]
    return (rng.random(len(rates)) < rates).astype(np.float64)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk", [1, 10])
def test_concept_drift_detects_after_the_change_only(seed: int, chunk: int) -> None:
    e = error_stream(seed)
    mon = ConceptDriftMonitor(chunk=chunk)
    found = []
    for start in range(0, len(e), 1000):
        found += [start + i for i in mon.update(e[start:start + 1000])]
    assert found, "no drift detected"
    assert all(i >= 20_000 for i in found), found  # nothing on the stationary part
    assert found[0] < 20_000 + 1000  # ADWIN needs a few hundred values at chunk 1
    assert mon.n_detections == len(found) and mon.last_detection == found[-1]
    assert mon.n_seen == len(e)


def test_concept_drift_chunk_carries_over_batches() -> None:
    """A chunk split across batches gives the same detections as whole batches."""
    e = error_stream(5, 5000, 5000)
    a, b = ConceptDriftMonitor(chunk=7), ConceptDriftMonitor(chunk=7)
    hits_a = a.update(e)
    hits_b, start = [], 0
    for size in [3, 500, 1, 6, 1234, 2000, 7, 13] * 10:
        part = e[start:start + size]
        hits_b += [start + i for i in b.update(part)]
        start += len(part)
    assert start == len(e)
    assert hits_a == hits_b and hits_a
    assert all((i + 1) % 7 == 0 for i in hits_a)  # reported at a chunk's last value


@pytest.mark.parametrize("chunk", [1, 10])
def test_a_falling_error_is_not_concept_drift(chunk: int) -> None:
    """A model that learns makes its error fall; ADWIN cuts its window on that change too.
    By default only a rise counts: the fall is counted as an improvement, and a rise after
    it is still found. With ``increases_only=False`` the fall is reported as before."""
    e = error_stream(8, 20_000, 20_000, before=0.5, after=0.1)  # the learning curve, in one step
    rise = error_stream(9, 0, 20_000, after=0.4)
    default, every = ConceptDriftMonitor(chunk=chunk), ConceptDriftMonitor(chunk=chunk, increases_only=False)
    for start in range(0, len(e), 1000):
        assert default.update(e[start:start + 1000]) == []
        every.update(e[start:start + 1000])
    assert default.n_improvements >= 1 and default.n_detections == 0
    assert every.n_detections >= 1 and every.n_improvements == 0
    found = []
    for start in range(0, len(rise), 1000):
        found += [start + i for i in default.update(rise[start:start + 1000])]
    assert found and found[0] < 1000 and default.n_detections == len(found)


def test_a_monitor_pickled_before_increases_only_goes_on() -> None:
    """A checkpoint from before the option holds a monitor without its attributes: it
    unpickles and keeps reporting every change, as it did."""
    import pickle

    mon = ConceptDriftMonitor()
    for name in ("increases_only", "_windowed"):
        del mon.__dict__[name]
    old = pickle.loads(pickle.dumps(mon))
    assert old.update(error_stream(3, 5000, 5000)) and old.increases_only is False


def test_concept_drift_other_detectors() -> None:
    e = error_stream(6, 10_000, 10_000)
    for det in (drift.PageHinkley(), drift.binary.HDDMA()):
        mon = ConceptDriftMonitor(det)
        hits = mon.update(e)
        assert mon.detector is det
        assert hits and hits[0] >= 10_000, (det, hits[:3])
    # DDM is wired (bool values) and fires after the change; it also false-alarms before it
    # on this stream, which is DDM's behaviour, not the monitor's
    hits = ConceptDriftMonitor(drift.binary.DDM()).update(e)
    assert any(10_000 <= h < 11_000 for h in hits)
    ddm = ConceptDriftMonitor(drift.binary.DDM())
    with pytest.raises(LearnError, match=r"errors\[1\]"):
        ddm.update([0.0, 0.5])
    with pytest.raises(LearnError, match="chunk"):
        ConceptDriftMonitor(drift.binary.DDM(), chunk=5)


def test_concept_drift_rejects_bad_input() -> None:
    for det in (object(), "adwin", drift):
        with pytest.raises(LearnError, match="detector"):
            ConceptDriftMonitor(det)
    for chunk in (0, -1, 1.5, True):
        with pytest.raises(LearnError, match="chunk"):
            ConceptDriftMonitor(chunk=chunk)  # type: ignore[arg-type]
    mon = ConceptDriftMonitor()
    for bad, what in (([[0.0, 1.0]], "errors.shape"), ([0.0, np.nan], r"errors\[1\]"),
                      ([np.inf], r"errors\[0\]"), (["x"], "errors")):
        with pytest.raises(LearnError, match=what):
            mon.update(bad)
    assert mon.update([]) == [] and mon.n_seen == 0


class ViaUpdate(drift.ADWIN):
    """A subclass takes ConceptDriftMonitor's generic path: ``detector.update`` per value."""


def test_river_adwin_fed_through_its_compiled_window_matches_adwin_update_step_by_step():
    from river.drift import ADWIN

    rng = np.random.default_rng(11)
    for increases_only in (True, False):
        fast = ConceptDriftMonitor(ADWIN(), increases_only=increases_only)
        slow = ConceptDriftMonitor(ViaUpdate(), increases_only=increases_only)
        assert type(fast.detector) is ADWIN
        rates = [0.1, 0.5, 0.05, 0.6, 0.2, 0.7]
        total_hits = 0
        for k in range(60):
            size = int(rng.integers(1, 700))  # batch ends fall anywhere, next to detections too
            errors = (rng.random(size) < rates[(k // 10) % len(rates)]).astype(float)
            a, b = fast.update(errors), slow.update(errors)
            assert a == b
            total_hits += len(a)
            for attr in ("width", "total", "variance", "n_detections", "drift_detected"):
                assert getattr(fast.detector, attr) == getattr(slow.detector, attr), (k, attr)
            assert (fast.n_detections, fast.n_improvements, fast.last_detection) == (
                slow.n_detections, slow.n_improvements, slow.last_detection)
        assert total_hits >= 3  # the stream changed often enough for the comparison to mean something


def test_river_adwin_fast_path_when_a_batch_ends_on_a_detection():
    from river.drift import ADWIN

    rng = np.random.default_rng(5)
    errors = np.concatenate([(rng.random(3000) < 0.05), (rng.random(3000) < 0.8)]).astype(float)
    probe = ConceptDriftMonitor(ViaUpdate(), increases_only=False)
    cut = probe.update(errors)[0] + 1  # the first batch ends on the detection's value
    fast, slow = ConceptDriftMonitor(ADWIN()), ConceptDriftMonitor(ViaUpdate())
    for k, part in enumerate((errors[:cut], errors[cut:])):
        assert fast.update(part) == slow.update(part)
        assert k or slow.detector.drift_detected  # the premise: the first part ends on a detection
        assert fast.detector.drift_detected == slow.detector.drift_detected
        assert (fast.detector.width, fast.detector.total) == (slow.detector.width, slow.detector.total)
    assert fast.n_detections == slow.n_detections >= 1
