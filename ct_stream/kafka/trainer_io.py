"""The trainer's Kafka I/O: read the examples topic from checkpointed offsets, read and
publish the promotion topic.

The trainer is the single writer of its model and keeps the offsets it has learned up to
in its own checkpoint (not in a consumer group), so :class:`ExampleReader` uses
``assign()`` on every partition of the examples topic, from the checkpoint's offsets.
It reads with ``isolation.level=read_committed``: on a broker that isolates
transactions, the joiner's aborted micro-batches are never learned.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sized

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ct_stream.errors import BrokerError
from ct_stream.kafka.clients import (DeliveryTracker, admin_client, consume_available, make_consumer, make_producer,
                                    produce_retrying, read_range, read_to_end)

__all__ = ["ExampleReader", "ModelPublisher", "read_back", "read_topic"]

log = logging.getLogger("ct_stream.kafka.trainer_io")


def _partitions(bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None, timeout: float) -> list[int]:
    try:
        md = admin_client(bootstrap, passthrough).list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as e:
        raise BrokerError(f"cannot reach Kafka at {bootstrap} to describe {topic!r}: {e}") from e
    if md is None or md.error is not None or not md.partitions:
        raise BrokerError(f"topic {topic!r} does not exist on {bootstrap}")
    return sorted(md.partitions)


class ExampleReader:
    """Every partition of ``topic`` from ``offsets`` (missing partitions: from the start).

    :meth:`poll` returns ``[(partition, offset, value), ...]`` in each partition's offset
    order. ``position`` is the next offset per partition, after the records handed out.
    """

    def __init__(self, bootstrap: str, topic: str, offsets: Mapping[int, int],
                 passthrough: Mapping[str, Any] | None = None, timeout: float = 30.0) -> None:
        self.topic = topic
        self.partitions = _partitions(bootstrap, topic, passthrough, timeout)
        unknown = set(offsets) - set(self.partitions)
        if unknown:
            raise BrokerError(f"the checkpoint has offsets for partitions {sorted(unknown)} of {topic!r}, "
                              f"which has only {len(self.partitions)}: was the topic recreated?")
        self.position: dict[int, int] = {p: int(offsets.get(p, 0)) for p in self.partitions}
        self.consumer = make_consumer(bootstrap, None, passthrough, isolation_level="read_committed")
        self.consumer.assign([TopicPartition(topic, p, self.position[p]) for p in self.partitions])

    def poll(self, max_records: int = 10_000, timeout: float = 0.1) -> list[tuple[int, int, bytes | None]]:
        """Up to ``max_records`` records. Fatal errors raise :class:`BrokerError`; others are logged."""
        out = []
        for m in consume_available(self.consumer, max_records, timeout):
            err = m.error()
            if err is None:
                p, o = m.partition(), m.offset()
                out.append((p, o, m.value()))
                self.position[p] = o + 1
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise BrokerError(f"fatal error reading {self.topic!r}: {err}")
            else:
                log.warning("reading %s: %s", self.topic, err)
        return out

    def lag(self) -> int:
        """Records between the reader's position and the end of every partition (cached
        watermarks; 0 for partitions without a fetch yet)."""
        behind = 0
        for p, pos in self.position.items():
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                behind += max(0, high - pos)
        return behind

    def close(self) -> None:
        """Leave (no group to leave: just close the client)."""
        self.consumer.close()


def read_back(bootstrap: str, topic: str, ends: Mapping[int, int], decode: Callable[[bytes | None], Sized | None],
              want: int, passthrough: Mapping[str, Any] | None = None, timeout: float = 60.0,
              ) -> list[tuple[int, int, float, Any]]:
    """The records just before ``ends[p]`` on each partition, read_committed and decoded, as
    ``(partition, offset, timestamp in seconds, decode(value))``: from the end backwards, in
    steps that double (64 records first), until they hold ``want`` rows (``len`` of what
    ``decode`` returns; ``None``, a record it cannot decode, counts 0) or the partition's
    first offset is reached. Raises :class:`BrokerError` when a partition does not reach its
    end within ``timeout`` (an end beyond its last offset: a recreated topic)."""
    out: list[tuple[int, int, float, Any]] = []
    consumer = make_consumer(bootstrap, None, passthrough)
    try:
        # the low watermarks only: the embedded broker answers a wrong high one (1 for 100 records)
        lows = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[0] for p in ends}
    except KafkaException as e:
        raise BrokerError(f"cannot read the offsets of {topic!r}: {e}") from e
    finally:
        consumer.close()
    for p, end in ends.items():
        low = lows[p]
        start, step, have = end, 64, 0
        while have < want and start > low:
            begin = max(low, start - step)
            for batch in read_range(bootstrap, topic, {p: begin}, {p: start}, passthrough, timeout=timeout,
                                    isolation_level="read_committed"):
                for m in batch:
                    value = decode(m.value())
                    have += 0 if value is None else len(value)
                    out.append((p, m.offset(), m.timestamp()[1] / 1000.0, value))
            start, step = begin, step * 2
    return out


def read_topic(bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None = None,
               timeout: float = 60.0) -> list[tuple[bytes | None, bytes | None, int, int]]:
    """Every record of ``topic`` now, as ``(key, value, partition, offset)`` in offset order
    per partition (read_committed)."""
    start = {p: 0 for p in _partitions(bootstrap, topic, passthrough, timeout)}
    return [(m.key(), m.value(), m.partition(), m.offset())
            for batch in read_to_end(bootstrap, topic, start, passthrough, timeout=timeout,
                                     isolation_level="read_committed")
            for m in batch]


class ModelPublisher:
    """Publishes model-update messages, one at a time, and waits for the broker's ack;
    also queues the trainer's dead letters (:meth:`produce`, then :meth:`flush`)."""

    def __init__(self, bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self.tracker = DeliveryTracker()
        self.producer = make_producer(bootstrap, passthrough, linger_ms=0, on_delivery=self.tracker)

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record (a dead letter); :meth:`flush` says whether it was acknowledged."""
        produce_retrying(self.producer, topic, value, key, headers=headers)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record; :class:`BrokerError` if one failed or is still queued."""
        left = self.producer.flush(timeout)
        if left:
            raise BrokerError(f"{left} records still unacknowledged after {timeout:.0f} s")
        if self.tracker.failed:
            raise BrokerError(f"{self.tracker.failed} records failed: {self.tracker.first_error}")

    def publish(self, key: bytes, value: bytes, timeout: float = 30.0) -> tuple[int, int]:
        """Produce one record and wait until it is acknowledged; returns ``(partition, offset)``."""
        result: list[Any] = []
        self.producer.produce(self.topic, value, key, on_delivery=lambda err, msg: result.append((err, msg)))
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            self.producer.poll(0.05)
        if not result:
            raise BrokerError(f"publishing to {self.topic!r}: no acknowledgement within {timeout:.0f} s")
        err, msg = result[0]
        if err is not None:
            raise BrokerError(f"publishing to {self.topic!r} failed: {err}")
        return msg.partition(), msg.offset()

    def close(self) -> None:
        """Deliver anything queued."""
        self.producer.flush(10)
