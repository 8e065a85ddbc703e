"""The smoke pipeline behind ``ct-stream demo`` until the joiner and trainer exist.

It exercises every part that exists today, end to end through a real broker:
synthetic events and delayed labels (some deliberately bad) are produced, read back,
decoded and validated against the topology's record contract; each bad record goes to
``<name>.dlq`` with its reason and source headers; the dead letters are read back and
checked against what was injected. Nothing is allowed to vanish: the report's checks
fail if any produced record is not accounted for.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ct_stream.kafka.clients import (DeliveryTracker, TopicSpec, ensure_topics, make_producer, produce_retrying,
                                    read_range)
from ct_stream.records import decode_events, decode_labels
from ct_stream.synthetic import generate
from ct_stream.topology import Topology

__all__ = ["SmokeReport", "run_smoke", "dlq_headers"]


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers of a dead letter: why, and where the original record came from."""
    return [("ct.reason", reason.encode()), ("ct.detail", detail.encode()[:512]),
            ("ct.source.topic", topic.encode()), ("ct.source.partition", str(partition).encode()),
            ("ct.source.offset", str(offset).encode())]


@dataclass
class SmokeReport:
    """What the smoke pipeline produced, read and dead-lettered, and whether it all adds up."""

    produced_events: int = 0
    produced_labels: int = 0
    injected_bad: Counter[str] = field(default_factory=Counter)
    consumed_events: int = 0
    consumed_labels: int = 0
    valid_events: int = 0
    valid_labels: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    dlq_read_back: Counter[str] = field(default_factory=Counter)
    labelled_events: int = 0
    delivery_failures: int = 0
    first_delivery_error: str | None = None
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Every way the counts fail to add up (empty when the run is sound)."""
        out = []
        if self.consumed_events != self.produced_events:
            out.append(f"events: produced {self.produced_events}, read back {self.consumed_events}")
        if self.consumed_labels != self.produced_labels:
            out.append(f"labels: produced {self.produced_labels}, read back {self.consumed_labels}")
        if self.dead_letters != self.injected_bad:
            out.append(f"dead letters {dict(self.dead_letters)} differ from injected bad records {dict(self.injected_bad)}")
        if self.dlq_read_back != self.dead_letters:
            out.append(f"DLQ holds {dict(self.dlq_read_back)}, expected {dict(self.dead_letters)}")
        if self.valid_events + self.valid_labels + sum(self.dead_letters.values()) != self.consumed_events + self.consumed_labels:
            out.append("valid + dead-lettered records do not add up to records read")
        if self.delivery_failures:
            out.append(f"{self.delivery_failures} produce requests failed; first error: {self.first_delivery_error}")
        return out

    def lines(self) -> list[str]:
        rate = (self.consumed_events + self.consumed_labels) / self.seconds if self.seconds else 0.0
        return [
            f"produced   {self.produced_events} events ({sum(self.injected_bad.values())} deliberately bad), "
            f"{self.produced_labels} labels",
            f"read back  {self.consumed_events} events, {self.consumed_labels} labels",
            f"valid      {self.valid_events} events, {self.valid_labels} labels; "
            f"{self.labelled_events} events have a label",
            "dead letters " + (", ".join(f"{r}={n}" for r, n in sorted(self.dead_letters.items())) or "none")
            + f"; read back from the DLQ: {sum(self.dlq_read_back.values())}",
            f"took       {self.seconds:.2f} s ({rate:,.0f} records/s read and validated)",
        ]


def run_smoke(topology: Topology, bootstrap: str, n_events: int = 20_000, seed: int = 0,
              bad_fraction: float = 0.01, log: Callable[[str], None] = lambda _: None) -> SmokeReport:
    """Produce, read back, validate and dead-letter one synthetic run; return the report."""
    started = time.monotonic()
    t = topology
    kafka: dict[str, Any] = t.kafka
    ensure_topics(bootstrap, [TopicSpec(name, t.partitions, t.replication_factor)
                              for name in (t.events_topic, t.labels_topic, t.dlq_topic)], kafka)

    data = generate(t, n_events, seed=seed, bad_fraction=bad_fraction)
    report = SmokeReport(produced_events=len(data.events) + len(data.bad_events), produced_labels=len(data.labels),
                         injected_bad=Counter(r.value for _, _, r in data.bad_events))
    delivery = DeliveryTracker()
    producer = make_producer(bootstrap, kafka, on_delivery=delivery)
    for kind, key, value in data.in_time_order():  # as applications would: events, then their labels later
        _produce(producer, t.events_topic if kind == "event" else t.labels_topic, key, value)
    producer.flush(60)
    # Only this run's records are read back, from the offsets the broker acknowledged
    # for them, even on a cluster whose topics already hold data.
    log(f"produced {report.produced_events} events and {report.produced_labels} labels")

    schema = t.record_schema
    event_ids: set[str] = set()
    label_ids: set[str] = set()
    for topic, decode in ((t.events_topic, decode_events), (t.labels_topic, decode_labels)):
        for batch in read_range(bootstrap, topic, *delivery.offsets(topic), kafka):
            values = [m.value() for m in batch]
            stamps = [m.timestamp()[1] for m in batch]
            good, rejects = decode(values, schema, stamps)
            if topic == t.events_topic:
                report.consumed_events += len(batch)
                report.valid_events += len(good)
                event_ids.update(r.id for r in good)
            else:
                report.consumed_labels += len(batch)
                report.valid_labels += len(good)
                label_ids.update(r.id for r in good)
            for index, reject in rejects:
                m = batch[index]
                produce_retrying(producer, t.dlq_topic, m.value(), m.key(),
                                 headers=dlq_headers(reject.reason.value, reject.detail, topic, m.partition(), m.offset()))
                report.dead_letters[reject.reason.value] += 1
            producer.flush(60)
    report.labelled_events = len(event_ids & label_ids)

    for batch in read_range(bootstrap, t.dlq_topic, *delivery.offsets(t.dlq_topic), kafka):
        for m in batch:
            report.dlq_read_back[dict(m.headers() or [])["ct.reason"].decode()] += 1
    report.delivery_failures, report.first_delivery_error = delivery.failed, delivery.first_error
    report.seconds = time.monotonic() - started
    return report


def _produce(producer: Any, topic: str, key: bytes, value: bytes) -> None:
    produce_retrying(producer, topic, value, key)
