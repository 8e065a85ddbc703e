"""Every Prometheus metric of ct-stream, defined once.

Metrics live on a registry passed in (no global state), so tests and several workers in
one process stay apart. Names: ``ct_`` prefix, base units, ``_total`` for counters,
few labels.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> m = JoinerMetrics(CollectorRegistry(), topology="demo")
>>> m.examples.labels(topology="demo", outcome="joined").inc(3)
>>> b'ct_joiner_examples_total{outcome="joined",topology="demo"} 3.0' in generate_latest(m.registry)
True
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric

__all__ = ["BulkHistogram", "JoinerMetrics", "ServerMetrics", "ServingMetrics", "TrainerMetrics", "serve_metrics"]

_DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BulkHistogram:
    """A Prometheus histogram observed a batch at a time with numpy.

    ``prometheus_client.Histogram.observe`` costs microseconds per value; the joiner
    has one value per joined example, so it adds whole batches here instead.

    >>> r = CollectorRegistry()
    >>> h = BulkHistogram("ct_demo_seconds", "Demo.", {"topology": "t"}, (1.0, 5.0), r)
    >>> h.observe_many([0.5, 1.0, 3.0, 9.0])
    >>> r.get_sample_value("ct_demo_seconds_bucket", {"topology": "t", "le": "1.0"})
    2.0
    >>> r.get_sample_value("ct_demo_seconds_count", {"topology": "t"})
    4.0
    """

    def __init__(self, name: str, documentation: str, labels: dict[str, str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._labels = dict(labels)
        self._bounds = np.array([*sorted(buckets), np.inf], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Add every value of ``values`` (seconds)."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, arr, side="left"), minlength=len(self._bounds))
        with self._lock:
            self._counts += counts
            self._sum += float(arr.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self._labels))
        buckets = [("+Inf" if np.isinf(b) else str(float(b)), float(c)) for b, c in zip(self._bounds, cumulative)]
        family.add_metric(list(self._labels.values()), buckets=buckets, sum_value=total)
        yield family

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=list(self._labels))]


class _TopologyMetrics:
    """A worker's metrics on an injected registry; every metric carries the ``topology`` label."""

    def __init__(self, registry: CollectorRegistry, topology: str) -> None:
        self.registry = registry
        self.topology = topology

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Counter | Gauge | Histogram:
        """``metric`` with this worker's topology label and ``labels``."""
        return metric.labels(self.topology, *labels)


class JoinerMetrics(_TopologyMetrics):
    """The joiner's metrics. Every metric carries the ``topology`` label (its name)."""

    def __init__(self, registry: CollectorRegistry, topology: str) -> None:
        super().__init__(registry, topology)
        t = ["topology"]
        self.records = Counter("ct_joiner_records_consumed_total", "Records consumed, by input kind (event, label).",
                               t + ["kind"], registry=registry)
        self.examples = Counter("ct_joiner_examples_total",
                                "Joined examples written, by outcome (joined, expired, correction).",
                                t + ["outcome"], registry=registry)
        self.dropped = Counter("ct_joiner_expired_dropped_total",
                               "Events that expired without a label under the 'drop' policy.", t, registry=registry)
        self.capacity_expired = Counter("ct_joiner_capacity_expired_total",
                                        "Pending entries expired early because max_pending was reached.", t,
                                        registry=registry)
        self.duplicates = Counter("ct_joiner_duplicates_total", "Duplicate records dropped, by kind (event, label).",
                                  t + ["kind"], registry=registry)
        self.dead_letters = Counter("ct_joiner_dead_letters_total",
                                    "Records sent to the dead-letter topic, by reason (late, undecodable, ...).",
                                    t + ["reason"], registry=registry)
        self.pending = Gauge("ct_joiner_pending", "Entries waiting in the join window, by kind (event, label).",
                             t + ["kind"], registry=registry)
        self.label_delay = BulkHistogram("ct_joiner_label_delay_seconds",
                                         "Event time from an event to its label, for joined examples.",
                                         {"topology": topology}, _DELAY_BUCKETS, registry)
        self.label_coverage = Gauge("ct_joiner_label_coverage_ratio",
                                    "Share of closed events that got their label: joined / (joined + expired).", t,
                                    registry=registry)
        self.commit_seconds = Histogram("ct_joiner_commit_duration_seconds",
                                        "Time of one commit: outputs, changelog, offsets, transaction commit.", t,
                                        buckets=_COMMIT_BUCKETS, registry=registry)
        self.lag = Gauge("ct_joiner_consumer_lag_records", "Records behind the end of the assigned input partitions.",
                         t + ["kind"], registry=registry)
        self.forgotten_early = Counter("ct_joiner_forgotten_early_total",
                                       "Closed ids forgotten before their horizon because max_remembered was "
                                       "reached.", t, registry=registry)
        self.remembered = Gauge("ct_joiner_remembered_ids",
                                "Closed ids kept to catch duplicates and build corrections.", t, registry=registry)
        self.reorder_buffered = Gauge("ct_joiner_reorder_buffered_records",
                                      "Records held for event-time order across the two input topics, by kind.",
                                      t + ["kind"], registry=registry)
        self.paused = Gauge("ct_joiner_paused_partitions",
                            "Input partitions whose fetching is paused because too many of their records wait "
                            "for the other topic.", t, registry=registry)
        self.assigned = Gauge("ct_joiner_assigned_partitions", "Input partitions this worker owns.", t,
                              registry=registry)



_RETRAIN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_PUBLISH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class TrainerMetrics(_TopologyMetrics):
    """The trainer's metrics. Every metric carries the ``topology`` label (its name).

    >>> m = TrainerMetrics(CollectorRegistry(), topology="demo")
    >>> m.child(m.learned).inc(5)
    >>> m.registry.get_sample_value("ct_trainer_examples_learned_total", {"topology": "demo"})
    5.0
    """

    def __init__(self, registry: CollectorRegistry, topology: str) -> None:
        super().__init__(registry, topology)
        t = ["topology"]
        self.learned = Counter("ct_trainer_examples_learned_total",
                               "Examples the online model has learned (test-then-train).", t, registry=registry)
        self.duplicates = Counter("ct_trainer_duplicate_examples_total",
                                  "Examples dropped because their id was learned recently (an at-least-once "
                                  "joiner rewrote them after a crash).", t, registry=registry)
        self.bad_messages = Counter("ct_trainer_bad_messages_total",
                                    "Examples-topic messages that could not be learned, by reason; each goes "
                                    "to the dead-letter topic.", t + ["reason"], registry=registry)
        self.prequential = Gauge("ct_trainer_prequential",
                                 "Prequential metric of the online model (log_loss, accuracy, roc_auc, mae, "
                                 "rmse), cumulative or over the rolling window.",
                                 t + ["metric", "scope"], registry=registry)
        self.served = Gauge("ct_trainer_served_metric",
                            "Metric of the served predictions carried by the examples, per served version.",
                            t + ["version", "metric"], registry=registry)
        self.drift = Counter("ct_trainer_drift_detections_total",
                             "Drift detections, by detector (concept: the error stream; data: a feature's "
                             "distribution).", t + ["detector"], registry=registry)
        self.retrains = Counter("ct_trainer_retrains_total", "Retrains started, by trigger (examples, schedule, "
                                "drift).", t + ["trigger"], registry=registry)
        self.retrain_failures = Counter("ct_trainer_retrain_failures_total",
                                        "Retrain subprocesses that failed (see the log).", t, registry=registry)
        self.retrain_seconds = Histogram("ct_trainer_retrain_duration_seconds",
                                         "Wall time of one retrain subprocess.", t, buckets=_RETRAIN_BUCKETS,
                                         registry=registry)
        self.gate = Counter("ct_trainer_gate_decisions_total",
                            "Gate decisions, by candidate (retrain, online) and decision (approve, reject).",
                            t + ["candidate", "decision"], registry=registry)
        self.canary = Counter("ct_trainer_canary_decisions_total",
                              "Canary analyses decided on live labels, by decision (promote, rollback).",
                              t + ["decision"], registry=registry)
        self.champion = Gauge("ct_trainer_champion_version", "The version serving now (0: none yet).", t,
                              registry=registry)
        self.publish_seconds = Histogram("ct_trainer_publish_duration_seconds",
                                         "Time from an approved gate decision to the broker's acknowledgement of "
                                         "the model update.", t, buckets=_PUBLISH_BUCKETS, registry=registry)
        self.checkpoint_seconds = Histogram("ct_trainer_checkpoint_duration_seconds",
                                            "Time to write one checkpoint (model state and offsets).", t,
                                            buckets=_COMMIT_BUCKETS, registry=registry)
        self.lag = Gauge("ct_trainer_consumer_lag_records", "Examples-topic records not read yet.", t,
                         registry=registry)



def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> int:
    """Expose ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the port.

    ``port=0`` picks a free port.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


_PREDICT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_UPDATE_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


class ServingMetrics(_TopologyMetrics):
    """A serving node's metrics (:class:`ct_stream.serving.ModelSubscriber`). Every metric
    carries the ``topology`` label (its name).

    >>> m = ServingMetrics(CollectorRegistry(), topology="demo")
    >>> m.child(m.predictions, "3", "champion").inc()
    >>> m.registry.get_sample_value("ct_serving_predictions_total",
    ...                             {"topology": "demo", "version": "3", "route": "champion"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry, topology: str) -> None:
        super().__init__(registry, topology)
        t = ["topology"]
        self.predictions = Counter("ct_serving_predictions_total",
                                   "Predictions made, by model version and route (champion, canary; shadow: "
                                   "the canary's scoring of a request the champion answered).",
                                   t + ["version", "route"], registry=registry)
        self.predict_seconds = Histogram("ct_serving_predict_duration_seconds",
                                         "Time of one predict call in process (routing, model, shadow scoring).",
                                         t, buckets=_PREDICT_BUCKETS, registry=registry)
        self.version = Gauge("ct_serving_model_version",
                             "The model version serving each route (champion, canary); 0: none.",
                             t + ["route"], registry=registry)
        self.update_lag = Histogram("ct_serving_update_lag_seconds",
                                    "Time from an update's created_at to the moment this node loaded it.",
                                    t, buckets=_UPDATE_LAG_BUCKETS, registry=registry)
        self.rejected = Counter("ct_serving_rejected_updates_total",
                                "Model updates refused, by reason (malformed, unsigned, bad_signature, "
                                "missing_artifact, bad_hash, stale, wrong_name, unloadable).",
                                t + ["reason"], registry=registry)
        self.updates = Counter("ct_serving_updates_total",
                               "Model updates loaded, by action (promote, canary, rollback).",
                               t + ["action"], registry=registry)
        self.shadow_disagreements = Counter("ct_serving_shadow_disagreements_total",
                                            "Shadow-scored requests where the canary's value differed from "
                                            "the champion's.", t, registry=registry)


class ServerMetrics(_TopologyMetrics):
    """The HTTP server's metrics, on ``registry``, labelled with the topology's name.

    - ``ct_server_requests_total{topology,endpoint,status}``: HTTP requests answered
      (endpoint ``predict``, ``healthz``, ``model``, ``metrics`` or ``other``).
    - ``ct_server_prediction_log_total{topology,outcome}``: served predictions and the
      events topic: ``queued``, ``no_id`` (served, not logged: the request had no id),
      ``dropped`` (the producer's local queue was full), ``delivered``, ``failed``.
    """

    def __init__(self, registry: CollectorRegistry, topology: str) -> None:
        super().__init__(registry, topology)
        self.requests = Counter("ct_server_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ["topology", "endpoint", "status"], registry=registry)
        self.prediction_log = Counter("ct_server_prediction_log_total",
                                      "Served predictions logged to the events topic, by outcome (queued, no_id, "
                                      "dropped, delivered, failed).", ["topology", "outcome"], registry=registry)
        self._children: dict[tuple[str, int], Any] = {}
        self._log_children = {o: self.prediction_log.labels(topology=topology, outcome=o)
                              for o in ("queued", "no_id", "dropped", "delivered", "failed")}

    def request(self, endpoint: str, status: int) -> None:
        """Count one answered request."""
        child = self._children.get((endpoint, status))
        if child is None:
            child = self._children[(endpoint, status)] = self.requests.labels(
                topology=self.topology, endpoint=endpoint, status=str(status))
        child.inc()

    def logged(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` prediction-log outcomes (thread-safe: called from the producer's callback too)."""
        self._log_children[outcome].inc(n)
