"""Pure, vectorised online learning: batched River-exact logistic regression and metrics.

No I/O, threads or global state: a trainer process feeds numpy batches in and stores the
JSON-able ``state()`` dicts. See docs/learning.md.
"""

from ct_stream.errors import LearnError
from ct_stream.learn.linear import STATE_KIND, BatchLogisticRegression
from ct_stream.learn.metrics import METRICS_STATE_KIND, PrequentialMetrics, roc_auc

__all__ = [
    "BatchLogisticRegression",
    "LearnError",
    "METRICS_STATE_KIND",
    "PrequentialMetrics",
    "STATE_KIND",
    "roc_auc",
]
