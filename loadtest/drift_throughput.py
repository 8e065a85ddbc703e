"""Drift detection throughput and detection delay (CPU time).

    OPENBLAS_NUM_THREADS=1 python loadtest/drift_throughput.py

Measures, with numpy seed 0: River's ADWIN alone and through
:class:`ct_stream.learn.ConceptDriftMonitor` (chunk 1, 10, 100) on a stationary 0/1 error
stream (false alarms counted); the detection delay after an abrupt error-rate change
(0.1 -> 0.5 and 0.1 -> 0.15, 20 seeds each); and the cost of one
:class:`ct_stream.learn.DataDriftMonitor` evaluation (PSI and KS, 10 features, windows of
10k rows). Numbers are reported, never asserted (docs/learning.md has them).
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from river import drift  # noqa: E402

from ct_stream.learn import ConceptDriftMonitor, DataDriftMonitor  # noqa: E402

rng = np.random.default_rng(0)
e = (rng.random(1_000_000) < 0.1).astype(np.float64)  # stationary 0/1 error stream
t = time.process_time(); d = drift.ADWIN(); n = 0
for v in e[:300_000].tolist():
    d.update(v); n += d.drift_detected
print(f"raw ADWIN loop, 300k values: {300_000 / (time.process_time() - t):,.0f}/s, detections {n}")
for chunk in (1, 10, 100):
    mon = ConceptDriftMonitor(chunk=chunk)
    t = time.process_time()
    for s in range(0, len(e), 1000):
        mon.update(e[s:s + 1000])
    dt = time.process_time() - t
    print(f"ConceptDriftMonitor chunk={chunk}, 1M stationary p=0.1, batch 1000: "
          f"{len(e) / dt:,.0f} examples/s, false alarms {mon.n_detections}")
def detection_delays(chunk: int, after_rate: float, seed0: int) -> None:
    """Error rate 0.1 for 100k values, then ``after_rate`` for 100k; 20 seeds."""
    delays = []
    for seed in range(seed0, seed0 + 20):
        r = np.random.default_rng(seed)
        x = (r.random(200_000) < np.r_[np.full(100_000, 0.1), np.full(100_000, after_rate)]).astype(float)
        hits = ConceptDriftMonitor(chunk=chunk).update(x)
        after = [h for h in hits if h >= 100_000]
        delays.append((after[0] - 100_000 if after else None, sum(h < 100_000 for h in hits)))
    d_ = [a for a, _ in delays if a is not None]
    print(f"chunk={chunk}: 0.1->{after_rate} at 100k, 20 seeds: delay median "
          f"{np.median(d_) if d_ else float('nan'):.0f}, max {max(d_) if d_ else None}, "
          f"missed {sum(a is None for a, _ in delays)}, false alarms before change {sum(b for _, b in delays)}")


for after_rate, seed0 in ((0.5, 0), (0.15, 100)):
    for chunk in (1, 10, 100):
        detection_delays(chunk, after_rate, seed0)

names = [f"f{i}" for i in range(10)]
X = rng.normal(size=(220_000, 10))
for method in ("psi", "ks"):
    mon = DataDriftMonitor(names, 10_000, 10_000, method=method)
    mon.update(X[:20_000])
    t = time.process_time()
    for s in range(20_000, len(X), 1000):
        mon.update(X[s:s + 1000])
    dt = time.process_time() - t
    print(f"DataDriftMonitor {method}, 10 features, windows 10k/10k, batch 1000 "
          f"(one evaluation per batch): {dt / mon.n_evaluations * 1000:.2f} ms/update, "
          f"{200_000 / dt:,.0f} rows/s, alarms {mon.n_evaluations and sum(mon.last_statistics > mon.threshold)}")
mon = DataDriftMonitor(names, 10_000, 10_000, method="ks", every=10_000)
mon.update(X[:20_000])
t = time.process_time()
for s in range(20_000, len(X), 1000):
    mon.update(X[s:s + 1000])
dt = time.process_time() - t
print(f"DataDriftMonitor ks, every=10_000, batch 1000: {200_000 / dt:,.0f} rows/s, "
      f"{mon.n_evaluations} evaluations")
