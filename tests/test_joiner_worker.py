"""The joiner worker through a real broker: joins, expiry, dead letters, metrics, modes."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from ct_stream.kafka.clients import make_producer, produce_retrying, read_to_end
from ct_stream.records import decode_examples
from ct_stream.runtime import joiner as joiner_module
from ct_stream.runtime.joiner import JoinerWorker
from ct_stream.synthetic import generate
from ct_stream.topology import Topology
from tests.helpers import wait_for


def joiner_topology(name: str, partitions: int = 3, max_record_bytes: str = "1MiB", **join) -> Topology:
    spec = {"max_label_delay": 2.0, "grace": 0.5, "idle_timeout": 0.5, "commit_interval": 0.2, **join}
    return Topology(name=name, events_topic=f"{name}.events", labels_topic=f"{name}.labels",
                    features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary",
                    partitions=partitions, max_record_bytes=max_record_bytes, join=spec)


def produce_in_time_order(bootstrap: str, topology: Topology, data) -> None:
    producer = make_producer(bootstrap)
    for kind, key, value in data.in_time_order():
        topic = topology.events_topic if kind == "event" else topology.labels_topic
        produce_retrying(producer, topic, value, key)
    assert producer.flush(60) == 0


def read_examples(bootstrap: str, topology: Topology, committed: bool = True) -> list[dict]:
    rows: list[dict] = []
    iso = "read_committed" if committed else "read_uncommitted"
    for batch in read_to_end(bootstrap, topology.examples_topic, {p: 0 for p in range(topology.partitions)},
                             isolation_level=iso):
        for m in batch:
            rows.extend(decode_examples(m.value(), topology.record_schema).to_pylist())
    return rows


def read_dead_letters(bootstrap: str, topology: Topology) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for batch in read_to_end(bootstrap, topology.dlq_topic, {p: 0 for p in range(topology.partitions)}):
        for m in batch:
            reasons[dict(m.headers())["ct.reason"].decode()] += 1
    return reasons


class RunningWorker:
    def __init__(self, worker: JoinerWorker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as e:  # surfaced by join()
            self.error = e

    def __enter__(self) -> "RunningWorker":
        self.worker.setup()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error


def test_every_event_becomes_exactly_one_example_with_the_right_label(broker):
    topology = joiner_topology(broker.topic("join"))
    data = generate(topology, 6000, seed=3, events_per_second=2000, label_fraction=0.6, max_delay=1.5,
                    bad_fraction=0.02)
    registry = CollectorRegistry()
    worker = JoinerWorker(topology, broker.bootstrap, registry=registry)
    with RunningWorker(worker):
        produce_in_time_order(broker.bootstrap, topology, data)
        valid = len(data.events)
        rows = wait_for(lambda: (r := read_examples(broker.bootstrap, topology)) and len(r) >= valid and r,
                        60, f"{valid} examples")

    ids = Counter(r["id"] for r in rows)
    assert len(ids) == valid and max(ids.values()) == 1, "one example per valid event"
    for r in rows:
        if r["id"] in data.truth:
            assert (r["outcome"], r["label"]) == ("joined", data.truth[r["id"]])
            assert r["label_ts"] >= r["event_ts"]
        else:
            assert (r["outcome"], r["label"], r["label_ts"]) == ("expired", False, None)
    assert read_dead_letters(broker.bootstrap, topology) == Counter(r.value for _, _, r in data.bad_events)
    expected_mode = "exactly_once" if broker.isolates_transactions else "at_least_once"
    assert worker.mode == expected_mode

    sample = registry.get_sample_value
    labels = {"topology": topology.name}
    assert sample("ct_joiner_examples_total", {**labels, "outcome": "joined"}) == len(data.truth)
    assert sample("ct_joiner_records_consumed_total", {**labels, "kind": "event"}) == valid + len(data.bad_events)
    assert sample("ct_joiner_label_delay_seconds_count", labels) == len(data.truth)
    assert sample("ct_joiner_label_coverage_ratio", labels) == pytest.approx(len(data.truth) / valid)
    assert sample("ct_joiner_commit_duration_seconds_count", labels) > 0
    assert sample("ct_joiner_consumer_lag_records", {**labels, "kind": "event"}) == 0
    assert sample("ct_joiner_assigned_partitions", labels) == 3


def test_late_records_and_unknown_labels_go_to_the_dead_letter_topic(broker):
    topology = joiner_topology(broker.topic("late"), partitions=1)
    producer = make_producer(broker.bootstrap)
    t0 = 1_700_000_000.0
    event = b'{"id":"%s","ts":%f,"features":{"x":1.0,"n":1,"flag":true,"c":"a"}}'
    records = [
        ("events", event % (b"a", t0)),
        ("events", event % (b"b", t0 + 10)),
        # 9.9 s behind the newest event of its own topic, grace is 0.5 s: late
        ("events", event % (b"c", t0 + 0.1)),
        ("events", event % (b"b", t0 + 10.2)),  # a duplicate of b
        # labels are merged with events by timestamp, so this one is in time for "a"
        ("labels", b'{"id":"a","ts":%f,"label":true}' % (t0 + 0.05)),
        # an id that never had an event: waits, then expires as unknown_id
        ("labels", b'{"id":"zzz","ts":%f,"label":true}' % (t0 + 10.1)),
    ]
    worker = JoinerWorker(topology, broker.bootstrap)
    with RunningWorker(worker):
        for kind, value in records:
            producer.produce(f"{topology.name}.{kind}", value=value, key=b"k")
        producer.flush(30)
        wait_for(lambda: read_dead_letters(broker.bootstrap, topology) == Counter(late=1, unknown_id=1), 30,
                 "one late and one unknown_id dead letter")
        rows = wait_for(lambda: (r := read_examples(broker.bootstrap, topology)) and len(r) == 2 and r, 30,
                        "two examples")
    assert sorted((r["id"], r["outcome"]) for r in rows) == [("a", "joined"), ("b", "expired")]
    assert worker.group.counts["duplicate_events"] == 1


def fuzzed_bad_events(rng, n: int) -> list[bytes]:
    """Broken event records of every kind the contract rejects."""
    good = '{"id":"%s","ts":1700000000.5,"features":{"x":1.0,"n":1,"flag":true,"c":"a"}}'
    makers = [
        lambda i: rng.randbytes(rng.randint(0, 64)),                                   # undecodable bytes
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"x":NaN,"n":1,"flag":true,"c":"a"}}' % i,
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"x":1e400,"n":1,"flag":true,"c":"a"}}' % i,
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"x":1e300,"n":1,"flag":true,"c":"a"}}' % i,
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"n":1,"flag":true,"c":"a"}}' % i,  # missing x
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"x":"1","n":1,"flag":true,"c":"a"}}' % i,
        lambda i: b'{"id":"f%d","ts":1700000000.5,"features":{"x":1.0,"n":1,"flag":1,"c":"a"}}' % i,
        lambda i: b'{"ts":1700000000.5,"features":{"x":1.0,"n":1,"flag":true,"c":"a"}}',        # no id
        lambda i: b'[%d]' % i,                                                           # not an object
        lambda i: (good % ("f%d" % i)).encode().replace(b'"c":"a"', b'"c":"' + b"a" * 100_000 + b'"'),
    ]
    return [makers[i % len(makers)](i) for i in range(n)]


def test_fuzzed_bad_records_all_reach_the_dlq_while_good_records_flow(broker):
    import random

    from ct_stream.records import Reason

    topology = joiner_topology(broker.topic("fuzz"), partitions=2, max_record_bytes="64KB")
    data = generate(topology, 2000, seed=4, events_per_second=2000, label_fraction=0.5, max_delay=1.0)
    bad = fuzzed_bad_events(random.Random(4), 200)
    producer = make_producer(broker.bootstrap)
    worker = JoinerWorker(topology, broker.bootstrap)
    with RunningWorker(worker):
        stream = data.in_time_order()
        for i, (kind, key, value) in enumerate(stream):
            topic = topology.events_topic if kind == "event" else topology.labels_topic
            producer.produce(topic, value=value, key=key)
            if i % 10 == 0 and bad:
                producer.produce(topology.events_topic, value=bad.pop(), key=b"fuzz%d" % i)
            producer.poll(0)
        for value in bad:
            producer.produce(topology.events_topic, value=value, key=b"fuzz-tail")
        assert producer.flush(60) == 0
        dead = wait_for(lambda: (d := read_dead_letters(broker.bootstrap, topology)) and sum(d.values()) >= 200
                        and d, 60, "200 dead letters")
        rows = wait_for(lambda: (r := read_examples(broker.bootstrap, topology)) and len(r) >= 2000 and r, 60,
                        "2000 examples")
    assert sum(dead.values()) == 200
    assert set(dead) <= {r.value for r in Reason} and {"undecodable", "too_large", "missing_field",
                                                       "bad_type"} <= set(dead)
    assert sorted(r["id"] for r in rows) == sorted(k.decode() for k, _ in data.events)


def test_wide_rows_are_split_into_messages_under_the_size_cap(broker):
    from ct_stream.join.arrow import MAX_MESSAGE_BYTES

    topology = joiner_topology(broker.topic("wide"), partitions=1)
    producer = make_producer(broker.bootstrap)
    t0 = 1_700_000_000.0
    n = 1500  # ~4 KB a row: one 2000-row message would be ~6 MB
    worker = JoinerWorker(topology, broker.bootstrap)
    with RunningWorker(worker):
        for i in range(n):
            c = f"{i:06d}" + "w" * 4000
            producer.produce(topology.events_topic, key=b"k", value=(
                '{"id":"w%d","ts":%f,"features":{"x":1.0,"n":%d,"flag":true,"c":"%s"}}' % (i, t0 + i * 0.001, i, c)
            ).encode())
            producer.produce(topology.labels_topic, key=b"k",
                             value=b'{"id":"w%d","ts":%f,"label":true}' % (i, t0 + i * 0.001 + 0.0005))
            producer.poll(0)
        assert producer.flush(60) == 0
        rows = wait_for(lambda: (r := read_examples(broker.bootstrap, topology)) and len(r) >= n and r, 60,
                        f"{n} examples")
    sizes = [len(m.value()) for batch in read_to_end(broker.bootstrap, topology.examples_topic, {0: 0})
             for m in batch]
    assert len(sizes) > 1 and max(sizes) <= MAX_MESSAGE_BYTES
    assert sorted(r["id"] for r in rows) == sorted(f"w{i}" for i in range(n))
    assert all(r["c"] == f"{int(r['id'][1:]):06d}" + "w" * 4000 for r in rows)


def test_a_topic_far_ahead_is_paused_until_the_other_catches_up(broker):
    # Labels arrive long before their events: the merger must hold them for event-time
    # order, but only up to max_held; beyond that their partition stops fetching.
    topology = joiner_topology(broker.topic("ahead"), partitions=1, idle_timeout=60.0)
    registry = CollectorRegistry()
    worker = JoinerWorker(topology, broker.bootstrap, registry=registry, max_batch=200, max_held=600)
    labels = {"topology": topology.name}
    producer = make_producer(broker.bootstrap)
    t0, n = 1_700_000_000.0, 5000
    with RunningWorker(worker):
        for i in range(n):
            producer.produce(topology.labels_topic, key=b"k",
                             value=b'{"id":"a%d","ts":%f,"label":%s}' % (i, t0 + i * 0.01 + 0.3,
                                                                       b"true" if i % 2 else b"false"))
        assert producer.flush(60) == 0
        wait_for(lambda: registry.get_sample_value("ct_joiner_paused_partitions", labels) == 1, 30,
                 "the labels partition paused")
        held = registry.get_sample_value("ct_joiner_reorder_buffered_records", {**labels, "kind": "label"})
        assert 600 < held <= 600 + 200
        for i in range(n):
            producer.produce(topology.events_topic, key=b"k", value=(
                '{"id":"a%d","ts":%f,"features":{"x":1.0,"n":%d,"flag":true,"c":"a"}}' % (i, t0 + i * 0.01, i)
            ).encode())
        assert producer.flush(60) == 0
        rows = wait_for(lambda: (r := read_examples(broker.bootstrap, topology)) and len(r) >= n - 40 and r, 60,
                        "the examples")
        wait_for(lambda: registry.get_sample_value("ct_joiner_paused_partitions", labels) == 0, 30, "resumed")
    joined = {r["id"]: r["label"] for r in rows if r["outcome"] == "joined"}
    # the last events' labels are within grace of the stream's end: still pending is fine
    assert len(joined) >= n - 40 and all(joined[f"a{i}"] == bool(i % 2) for i in range(n - 40))
    assert Counter(r["id"] for r in rows).most_common(1)[0][1] == 1


def test_examples_go_out_once_the_input_has_been_quiet_for_a_moment_not_at_the_interval(broker):
    # the interval never comes (1 h on a clock that only the test moves): every commit
    # here is one of "the input is caught up while examples wait"
    topology = joiner_topology(broker.topic("caught"), partitions=1, commit_interval="1h")
    data = generate(topology, 200, seed=5, label_fraction=1.0, max_delay=0.5)
    now = [1_000.0]
    registry = CollectorRegistry()
    worker = JoinerWorker(topology, broker.bootstrap, mode="at_least_once", registry=registry, clock=lambda: now[0])
    worker.setup()
    try:
        commits = lambda: registry.get_sample_value(  # noqa: E731
            "ct_joiner_commit_duration_seconds_count", {"topology": topology.name}) or 0
        before = commits()
        produce_in_time_order(broker.bootstrap, topology, data)
        # every label joined; the clock has not moved since the last records came
        wait_for(lambda: worker.step() or worker.group.counts["joined"] == len(data.truth), 60, "the joins")
        for _ in range(3):
            worker.step()  # polls that find nothing, with examples waiting: not quiet for long enough yet
        assert commits() == before
        assert read_examples(broker.bootstrap, topology, committed=False) == []

        now[0] += joiner_module.QUIET_SECONDS
        worker.step()  # no record for QUIET_SECONDS: the examples go out now, not in an hour
        assert commits() == before + 1
        rows = wait_for(lambda: worker.step() or read_examples(broker.bootstrap, topology, committed=False),
                        60, "the examples")
        assert sorted(r["id"] for r in rows) == sorted(data.truth)
    finally:
        worker.close()
