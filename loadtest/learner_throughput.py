"""Batch learner throughput against River's learn_one, measured in the same run (CPU time).

    OPENBLAS_NUM_THREADS=1 python loadtest/learner_throughput.py [--rows 200000]

Data: 10 features ~ N(0,1), label ~ Bernoulli(sigmoid(w.x)), numpy seed 0. Measures:

1. :class:`ct_stream.learn.BatchLogisticRegression`, prequential ``learn_batch`` at batch
   1000 and 2000, over all rows;
2. River's ``Select | StandardScaler | LogisticRegression`` with ``predict_proba_one`` then
   ``learn_one`` on pre-built dicts, over the first 20,000 rows (the baseline);
3. :class:`ct_stream.learn.PrequentialMetrics` updates, with and without the rolling AUC.

Prints examples/s (CPU time, ``time.process_time``), the ratio of the batch learner to
River, and the largest difference between their probabilities over the rows both saw.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from river import compose, linear_model, preprocessing  # noqa: E402

from ct_stream.learn import BatchLogisticRegression, PrequentialMetrics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--river-rows", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, d = args.rows, 10
    X = rng.normal(size=(n, d))
    w_true = rng.uniform(-2, 2, d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w_true)))).astype(np.int64)

    rates = {}
    p = np.empty(0)
    for batch in (1000, 2000):
        model = BatchLogisticRegression(d)
        started = time.process_time()
        p = np.concatenate([model.learn_batch(X[s:s + batch], y[s:s + batch]) for s in range(0, n, batch)])
        rates[batch] = n / (time.process_time() - started)
        print(f"BatchLogisticRegression, batch {batch}: {rates[batch]:,.0f} examples/s (CPU, {n} rows)")

    k = min(args.river_rows, n)
    names = [f"f{i}" for i in range(d)]
    river = compose.Select(*names) | preprocessing.StandardScaler() | linear_model.LogisticRegression()
    rows = [dict(zip(names, r)) for r in X[:k].tolist()]
    labels = (y[:k] == 1).tolist()
    river_p = np.empty(k)
    started = time.process_time()
    for i, (x, label) in enumerate(zip(rows, labels)):
        river_p[i] = river.predict_proba_one(x).get(True, 0.0)
        river.learn_one(x, label)
    river_rate = k / (time.process_time() - started)
    print(f"River predict_proba_one + learn_one: {river_rate:,.0f} examples/s (CPU, {k} rows, pre-built dicts)")
    print(f"ratio batch learner (batch 1000) / River: {rates[1000] / river_rate:.1f}")
    print(f"largest |p - River p| over the first {k} rows: {np.abs(p[:k] - river_p).max():.1e}")

    metrics = PrequentialMetrics(window=10_000)
    for rolling_auc in (False, True):
        started = time.process_time()
        for s in range(0, n, 1000):
            metrics.update(p[s:s + 1000], y[s:s + 1000])
            metrics.get(rolling_auc=rolling_auc)
        rate = n / (time.process_time() - started)
        print(f"PrequentialMetrics update + get(rolling_auc={rolling_auc}), batch 1000, window 10k: "
              f"{rate:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
