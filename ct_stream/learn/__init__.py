"""Pure, vectorised online learning: batched River-exact logistic regression, metrics, drift.

No I/O, threads or global state: a trainer process feeds numpy batches in and stores the
JSON-able ``state()`` dicts. See docs/learning.md.
"""

from ct_stream.errors import LearnError
from ct_stream.learn.drift import (
    DATA_DRIFT_STATE_KIND,
    ConceptDriftMonitor,
    DataDriftMonitor,
    DriftSignal,
    ks_statistic,
    psi,
)
from ct_stream.learn.linear import STATE_KIND, BatchLogisticRegression
from ct_stream.learn.metrics import METRICS_STATE_KIND, PrequentialMetrics, roc_auc
from ct_stream.learn.online import (
    LearnStep,
    OnlineLearner,
    VersionMetrics,
    learner_from_artifact,
    make_learner,
)

__all__ = [
    "BatchLogisticRegression",
    "ConceptDriftMonitor",
    "DATA_DRIFT_STATE_KIND",
    "DataDriftMonitor",
    "DriftSignal",
    "LearnError",
    "LearnStep",
    "METRICS_STATE_KIND",
    "OnlineLearner",
    "PrequentialMetrics",
    "STATE_KIND",
    "VersionMetrics",
    "ks_statistic",
    "learner_from_artifact",
    "make_learner",
    "psi",
    "roc_auc",
]
