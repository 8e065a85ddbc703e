"""Joiner throughput against a raw consume+decode loop, measured in the same run.

    python loadtest/joiner_throughput.py [--events 200000] [--bootstrap HOST:PORT]

Produces N events and labels (70% labelled) in event-time order to a fresh topology on
the embedded broker (or --bootstrap), then measures on the same records:

1. baseline: assign() + consume(num_messages=10000) + decode_events/decode_labels;
2. the joiner worker (at-least-once on the embedded broker, with ``tune_gc()`` as
   ``ct-stream run`` does), from its first record until every input record is committed.
   The input is bounded, so it ends with an end-of-input pair per partition: an event
   and its label a day of event time after the last record. Their watermark releases
   the records the worker holds for event-time order and expires every pending event,
   so the run ends when the work is done, as a bounded source's final watermark does in
   Flink or Beam. Without it the worker cannot know the input ended and would wait
   ``idle_timeout`` of wall time (30 s by default) before releasing the last records.
   Both measurements read the same records, end-of-input pairs included.

Prints records/s for both and their ratio (goal: joiner >= 0.5x baseline). The two are
measured ``--rounds`` times (default 5), interleaved (baseline, joiner, baseline, ...),
on the same records: each joiner round is a fresh consumer group with fresh state
(its own topology name over the same input topics). On this 2-core machine the broker
and the clients share the cores, so one pair of measurements moves by about 10%
between runs; the median over rounds is the result, every round is printed. Then the
memory check: RSS growth of the pure joiner holding 1,000,000 pending events (goal
<= 300 MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.join import Input, PartitionJoiner  # noqa: E402
from ct_stream.kafka.broker import EmbeddedBroker  # noqa: E402
from ct_stream.kafka.clients import DeliveryTracker, make_producer, produce_retrying, read_range  # noqa: E402
from ct_stream.records import Event, Label, decode_events, decode_labels, encode_event, encode_label  # noqa: E402
from ct_stream.runtime import tune_gc  # noqa: E402
from ct_stream.runtime.joiner import JoinerWorker  # noqa: E402
from ct_stream.synthetic import generate  # noqa: E402
from ct_stream.topology import JoinSpec, Topology  # noqa: E402


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def produce(bootstrap: str, topology: Topology, n: int) -> tuple[DeliveryTracker, int]:
    data = generate(topology, n, seed=11, events_per_second=5000, label_fraction=0.7, max_delay=5.0)
    tracker = DeliveryTracker()
    producer = make_producer(bootstrap, on_delivery=tracker)
    stream = data.in_time_order()
    for kind, key, value in stream:
        topic = topology.events_topic if kind == "event" else topology.labels_topic
        produce_retrying(producer, topic, value, key)
    end_ts = 1_700_000_000.0 + n / 5000 + 86_400.0  # a day after the last event (generate's default start)
    for p in range(topology.partitions):
        sentinel = f"end-of-input-{p}"
        features = {"x": 0.0, "n": 0, "flag": False, "c": "end"}
        produce_retrying(producer, topology.events_topic,
                         encode_event(Event(sentinel, end_ts, features, None, None), topology.record_schema),
                         sentinel.encode(), partition=p)
        produce_retrying(producer, topology.labels_topic,
                         encode_label(Label(sentinel, end_ts, False), topology.record_schema),
                         sentinel.encode(), partition=p)
    producer.flush(120)
    assert tracker.failed == 0, tracker.first_error
    return tracker, len(stream) + 2 * topology.partitions


def baseline(bootstrap: str, topology: Topology, tracker: DeliveryTracker) -> tuple[int, float]:
    schema = topology.record_schema
    n = 0
    started = None  # like the joiner's clock: from the first batch handed over, not from connecting
    for topic, decode in ((topology.events_topic, decode_events), (topology.labels_topic, decode_labels)):
        for batch in read_range(bootstrap, topic, *tracker.offsets(topic)):
            if started is None:
                started = time.perf_counter()
            decode([m.value() for m in batch], schema, [m.timestamp()[1] for m in batch])
            n += len(batch)
    return n, time.perf_counter() - (started or time.perf_counter())


def joiner(bootstrap: str, topology: Topology, tracker: DeliveryTracker) -> tuple[int, float]:
    tune_gc()  # as `ct-stream run` does
    worker = JoinerWorker(topology, bootstrap, mode="at_least_once")
    worker.setup()
    ends = {}
    for topic in (topology.events_topic, topology.labels_topic):
        for p, end in tracker.offsets(topic)[1].items():
            ends[(topic, p)] = end
    stop = threading.Event()
    started: list[float] = []  # when the first poll hands over records (group join and assignment excluded)
    poll = worker.io.poll_grouped

    def timed_poll(*args, **kwargs):  # type: ignore[no-untyped-def]
        msgs, at_end = poll(*args, **kwargs)
        if msgs and not started:
            started.append(time.perf_counter())
        return msgs, at_end

    worker.io.poll_grouped = timed_poll  # type: ignore[method-assign]
    while not stop.is_set():
        worker.step()
        if all(worker._offsets.get(tp, 0) >= end for tp, end in ends.items()):
            worker.commit()
            break
    elapsed = time.perf_counter() - (started[0] if started else time.perf_counter())
    worker.close()
    return sum(ends.values()), elapsed


def memory(pending: int) -> int:
    spec = JoinSpec(max_label_delay="30d", grace="1m", max_pending=pending + 1, default_label=False)
    j = PartitionJoiner(0, spec)
    gc.collect()
    before = rss_bytes()
    chunk = 10_000
    for start in range(0, pending, chunk):
        inputs = [Input("event", Event(id=f"e{i}", ts=1_700_000_000.0 + i * 0.001,
                                       features={"x": 0.5, "n": 3, "flag": True, "c": "a"}), i)
                  for i in range(start, min(start + chunk, pending))]
        j.process(inputs)
    gc.collect()
    assert j.pending_events == pending
    return rss_bytes() - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5, help="baseline/joiner pairs, interleaved (default 5)")
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    name = f"bench-{uuid.uuid4().hex[:6]}"
    topology = Topology(name=name, events_topic=f"{name}.events", labels_topic=f"{name}.labels",
                        features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary",
                        partitions=3, join={"max_label_delay": "10s", "grace": "2s", "commit_interval": "1s"})
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        from ct_stream.kafka.clients import TopicSpec, ensure_topics

        ensure_topics(bootstrap, [TopicSpec(t, 3) for t in (topology.events_topic, topology.labels_topic)])
        tracker, total = produce(bootstrap, topology, args.events)
        print(f"produced {total} records ({args.events} events + labels)")
        ratios = []
        for k in range(1, args.rounds + 1):
            n_base, t_base = baseline(bootstrap, topology, tracker)
            fresh = dataclasses.replace(topology, name=f"{name}-r{k}")  # new group and state, same input
            n_join, t_join = joiner(bootstrap, fresh, tracker)
            base_rate, join_rate = n_base / t_base, n_join / t_join
            ratios.append(join_rate / base_rate)
            print(f"round {k}: baseline consume+decode {n_base} records in {t_base:.2f} s = {base_rate:,.0f}/s; "
                  f"joiner (at-least-once) {n_join} in {t_join:.2f} s = {join_rate:,.0f}/s; "
                  f"ratio {ratios[-1]:.2f}", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    print(f"ratio joiner/baseline:   {statistics.median(ratios):.2f} median of {len(ratios)} rounds "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}; goal >= 0.5)")
    growth = memory(args.pending)
    print(f"RSS growth with {args.pending:,} pending events: {growth / 1e6:,.0f} MB (goal <= 300 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
