"""Prometheus exposition over real HTTP, on a registry of the test's own."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ct_stream.metrics import JoinerMetrics, serve_metrics


def test_joiner_metrics_are_served_with_conventional_names():
    registry = CollectorRegistry()
    m = JoinerMetrics(registry, topology="clicks")
    m.child(m.examples, "joined").inc(5)
    m.label_delay.observe_many([2.5])
    m.child(m.pending, "event").set(7)
    port = serve_metrics(registry, 0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("ct_joiner_examples_total", (("outcome", "joined"), ("topology", "clicks")))] == 5
    assert samples[("ct_joiner_pending", (("kind", "event"), ("topology", "clicks")))] == 7
    assert samples[("ct_joiner_label_delay_seconds_count", (("topology", "clicks"),))] == 1
    for family in families.values():
        assert family.name.startswith("ct_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


def test_two_registries_do_not_share_state():
    a, b = JoinerMetrics(CollectorRegistry(), "a"), JoinerMetrics(CollectorRegistry(), "a")
    a.child(a.examples, "joined").inc()
    assert b.registry.get_sample_value("ct_joiner_examples_total", {"topology": "a", "outcome": "joined"}) is None


def test_bulk_histogram_matches_prometheus_histogram_semantics():
    from prometheus_client import Histogram

    from ct_stream.metrics import BulkHistogram

    values = [0.0, 0.1, 0.5, 0.5000001, 1.0, 2.0, 7.5, 1e9]
    bounds = (0.1, 0.5, 1.0, 5.0)
    reference, bulk = CollectorRegistry(), CollectorRegistry()
    h = Histogram("ct_x_seconds", "x", buckets=bounds, registry=reference)
    for v in values:
        h.observe(v)
    BulkHistogram("ct_x_seconds", "x", {}, bounds, bulk).observe_many(values)
    for le in ("0.1", "0.5", "1.0", "5.0", "+Inf"):
        assert bulk.get_sample_value("ct_x_seconds_bucket", {"le": le}) == \
            reference.get_sample_value("ct_x_seconds_bucket", {"le": le}), le
    assert bulk.get_sample_value("ct_x_seconds_sum") == reference.get_sample_value("ct_x_seconds_sum")
