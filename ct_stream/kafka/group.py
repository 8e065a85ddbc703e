"""A worker's Kafka I/O: consumer-group input, batched output, and the one commit procedure.

Exactly-once in ct-stream is this numbered procedure, run once per micro-batch by
:meth:`GroupIO.commit` (transactional mode, on a broker that isolates transactions):

1. **flush outputs**: the micro-batch's output records (examples, dead letters) are
   produced inside the open transaction;
2. **write the state changelog**: the state changes of the micro-batch are produced to
   the changelog topic, in the same transaction;
3. **send offsets**: the next input offsets go into the transaction
   (``send_offsets_to_transaction`` with the consumer's group metadata, which fences
   zombies from an older group generation);
4. **commit**: ``commit_transaction``; then a new transaction begins.

What happens if the process dies after each step:

| dies after | outputs | changelog | offsets | on restart |
|---|---|---|---|---|
| 1 | in an open txn | — | — | the broker aborts the txn (the restarted worker's ``init_transactions`` with the same ``transactional.id`` does it at once); readers with ``read_committed`` never see it; input is re-read from the last committed offsets into state restored from the changelog as of the last commit |
| 2 | open txn | open txn | — | same: aborted together |
| 3 | open txn | open txn | in the txn | same: aborted together |
| 4 | committed | committed | committed | nothing to redo: the next micro-batch starts after these offsets |

In **idempotent mode** (a broker that does not isolate transactions, such as the
embedded Tansu), the same steps run without a transaction: (1) outputs produced and
flushed, (2) changelog produced and flushed, (3+4) offsets committed synchronously. A
death after step 1 or 2 re-reads the micro-batch: its outputs appear again
(at-least-once; consumers dedupe by id). Because the changelog is written before the
offsets, a restart after step 2 restores state that already knows the micro-batch's
ids, so the joiner treats the re-read records as duplicates and emits nothing twice;
only a death between steps 1 and 2 duplicates outputs.

The loop's periodic commit does not wait in idempotent mode (``commit(..., wait=False)``):
it produces the outputs and returns; :meth:`GroupIO.advance`, called on every later
poll, produces the changelog once every output is acknowledged and commits the offsets
once the changelog is. The steps and their order are the same, so the table holds;
the loop joins the next micro-batch meanwhile instead of sleeping in ``flush``. A
commit first completes the one still in flight, and a rebalance or shutdown commits
with ``wait=True``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ct_stream.errors import BrokerError
from ct_stream.native import module as _native
from ct_stream.kafka.clients import (TopicSpec, admin_client, consume_available, consumer_config, ensure_topics,
                                    produce_retrying, producer_config, read_to_end)

__all__ = ["GroupIO", "Mode", "probe_transaction_isolation"]

log = logging.getLogger("ct_stream.kafka.group")


def _group_messages(messages: list[Any]) -> tuple[dict[tuple[str, int], list[Any]], list[Any]]:
    """Polled messages by ``(topic, partition)``, in poll order, and the messages whose
    ``error()`` is not None (the reference of the native ``group_messages``)."""
    groups: dict[tuple[str, int], list[Any]] = {}
    errored = []
    for m in messages:
        if m.error() is not None:
            errored.append(m)
        else:
            groups.setdefault((m.topic(), m.partition()), []).append(m)
    return groups, errored


group_messages: Callable[[list[Any]], tuple[dict[tuple[str, int], list[Any]], list[Any]]] = \
    _group_messages if _native is None else _native.group_messages

Mode = Literal["exactly_once", "at_least_once"]

_PROBE_KEY = b"\x00ct-stream-isolation-probe"


def probe_transaction_isolation(bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None = None,
                                timeout: float = 30.0) -> bool:
    """True when the broker hides aborted transactional records from ``read_committed`` readers.

    ``topic`` is the topic the caller will write transactionally (the joiner passes its
    state changelog); the probe does not write to it. It writes one record with the
    reserved key ``\\x00ct-stream-isolation-probe`` to partition 0 of its own topic
    ``<topic>.probe`` (one partition, ``topic``'s replication factor, a day's
    retention; created if missing), in a transaction that it aborts, then reads that
    partition from the record's offset with ``read_committed``.

    Why a topic of its own: a ``read_committed`` read cannot pass an open transaction,
    and a predecessor killed mid-transaction leaves one open on every partition it wrote
    until the broker times it out (``transaction.timeout.ms``, 30 s for the joiner). Only
    probes write to ``<topic>.probe``, each under a fresh ``transactional.id`` and with a
    10 s transaction timeout, so the read waits only behind a probe that was itself
    killed in the milliseconds between its produce and its abort (then for up to the
    10 s timeout plus the broker's abort-check interval, 10 s by default).
    """
    probe_topic = f"{topic}.probe"
    try:
        existing = admin_client(bootstrap, passthrough).list_topics(timeout=timeout).topics
    except KafkaException as e:
        raise BrokerError(f"cannot reach Kafka at {bootstrap} to list topics: {e}") from e
    probe_md = existing.get(probe_topic)
    if probe_md is None or probe_md.error is not None:
        md = existing.get(topic)
        replication = max((len(pm.replicas) for pm in md.partitions.values()), default=1) if md else 1
        ensure_topics(bootstrap, [TopicSpec(probe_topic, 1, max(replication, 1),
                                            {"cleanup.policy": "delete", "retention.ms": "86400000"})],
                      passthrough, timeout=timeout)
    delivered: list[int] = []
    producer = Producer(producer_config(bootstrap, passthrough, **{
        "transactional.id": f"ct-stream-probe-{uuid.uuid4().hex}",
        "transaction.timeout.ms": 10_000,
        "on_delivery": lambda err, msg: delivered.append(msg.offset()) if err is None else None}))
    try:
        producer.init_transactions(timeout)
        producer.begin_transaction()
        producer.produce(probe_topic, key=_PROBE_KEY, value=b"", partition=0)
        producer.flush(timeout)
        producer.abort_transaction(timeout)
    except KafkaException as e:
        log.info("transactions unavailable on %s (%s): at-least-once mode", bootstrap, e)
        return False
    if not delivered:
        raise BrokerError(f"the transaction-isolation probe record to {probe_topic!r} was not acknowledged")
    for batch in read_to_end(bootstrap, probe_topic, {0: delivered[0]}, passthrough, timeout=timeout,
                             isolation_level="read_committed"):
        if any(m.key() == _PROBE_KEY and m.offset() == delivered[0] for m in batch):
            return False
    return True


class GroupIO:
    """Input from a consumer group over ``topics``, output through one producer.

    ``mode="exactly_once"`` makes the producer transactional (``transactional_id``
    required) and reads with ``read_committed``; ``at_least_once`` uses an idempotent
    producer and synchronous offset commits. ``on_assign(partitions)`` and
    ``on_revoke(partitions)`` receive ``[(topic, partition), ...]``; ``on_revoke`` runs
    before the partitions go, so the worker can commit what it holds for them.
    """

    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], mode: Mode,
                 transactional_id: str | None = None, passthrough: Mapping[str, Any] | None = None,
                 on_assign: Callable[[list[tuple[str, int]]], None] | None = None,
                 on_revoke: Callable[[list[tuple[str, int]]], None] | None = None,
                 transaction_timeout_ms: int = 30_000) -> None:
        if mode == "exactly_once" and not transactional_id:
            raise BrokerError("exactly_once mode needs a transactional_id")
        self.mode = mode
        self.bootstrap = bootstrap
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        pconf: dict[str, Any] = producer_config(bootstrap, passthrough)
        pconf["on_delivery"] = self._delivered
        if mode == "exactly_once":
            pconf["transactional.id"] = transactional_id
            pconf["transaction.timeout.ms"] = transaction_timeout_ms
        self._delivery_error: str | None = None
        # the idempotent-mode commit in flight: (changelog still to produce, or None once
        # produced; offsets to commit)
        self._inflight: tuple[list[tuple[str, int, bytes, bytes | None]] | None,
                              dict[tuple[str, int], int]] | None = None
        self.producer = Producer(pconf)
        if mode == "exactly_once":
            self.producer.init_transactions(60)  # fences an earlier instance with the same id
            self.producer.begin_transaction()
        cconf = consumer_config(bootstrap, group_id, passthrough, partition_assignment_strategy="range",
                                enable_partition_eof=True,
                                isolation_level="read_committed" if mode == "exactly_once" else "read_uncommitted")
        self.consumer = Consumer(cconf)
        self.consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._revoked)
        self.assignment: set[tuple[str, int]] = set()
        self._start_offsets: dict[tuple[str, int], int] = {}

    # Rebalance ---------------------------------------------------------------------------
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.assignment.update(tps)
        self._start_offsets.clear()
        if self._on_assign is not None:
            self._on_assign(tps)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if self._on_revoke is not None:
            self._on_revoke(tps)
        self.assignment.difference_update(tps)

    # Input ---------------------------------------------------------------------------
    def poll(self, max_records: int = 10_000, timeout: float = 0.1) -> tuple[list[Message], list[tuple[str, int]]]:
        """Up to ``max_records`` input records, and the ``(topic, partition)`` pairs that
        reached their end in this poll. Fatal broker errors raise; others are logged."""
        groups, at_end = self.poll_grouped(max_records, timeout)
        return [m for msgs in groups.values() for m in msgs], at_end

    def poll_grouped(self, max_records: int = 10_000,
                     timeout: float = 0.1) -> tuple[dict[tuple[str, int], list[Message]], list[tuple[str, int]]]:
        """:meth:`poll`'s records by ``(topic, partition)`` (each in offset order), grouped
        in one pass (natively with the module: :func:`group_messages`)."""
        groups, errored = group_messages(consume_available(self.consumer, max_records, timeout))
        at_end = []
        for m in errored:
            err = m.error()
            if err.code() == KafkaError._PARTITION_EOF:
                at_end.append((m.topic(), m.partition()))
            elif err.fatal():
                raise BrokerError(f"fatal consumer error: {err}")
            else:
                log.warning("consumer error: %s", err)
        return groups, at_end

    def at_end(self, topic: str, partition: int) -> bool:
        """True when this consumer has been handed every record up to the high watermark
        of the partition's last fetch.

        Before the first record of an assignment librdkafka has no position for the
        partition; then the group's committed offset (where consumption started) stands
        in for it, asked of the broker once per assignment.
        """
        tp = TopicPartition(topic, partition)
        position = self.consumer.position([tp])[0].offset
        if position < 0:
            position = self._start_offsets.get((topic, partition), -1)
            if position < 0:
                try:
                    position = self.consumer.committed([tp], timeout=5)[0].offset
                except KafkaException:
                    return False
                if position >= 0:
                    self._start_offsets[(topic, partition)] = position
        try:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            return False
        return position >= 0 and high >= 0 and position >= high

    def pause(self, topic: str, partition: int) -> None:
        """Stop fetching ``(topic, partition)`` until :meth:`resume` (or a new assignment)."""
        self.consumer.pause([TopicPartition(topic, partition)])

    def resume(self, topic: str, partition: int) -> None:
        """Fetch ``(topic, partition)`` again, from the position after the last record handed out."""
        self.consumer.resume([TopicPartition(topic, partition)])

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the consumer's position and the partition end, per owned partition."""
        tps = [TopicPartition(t, p) for t, p in self.assignment]
        out = {}
        for tp in self.consumer.position(tps) if tps else []:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            if tp.offset >= 0 and high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    # Output --------------------------------------------------------------------------
    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and self._delivery_error is None:
            self._delivery_error = f"{err} (topic {msg.topic()} partition {msg.partition()})"

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one output record (in the open transaction in exactly-once mode).

        ``partition=-1`` lets the partitioner choose (by key).
        """
        produce_retrying(self.producer, topic, value, key, partition, headers)

    def _produce_all(self, records: Iterable[tuple[str, int, bytes, bytes | None]]) -> None:
        produce = self.producer.produce
        for topic, partition, key, value in records:
            try:
                produce(topic, value, key, partition)
            except BufferError:
                self.produce(topic, value, key, partition)

    def commit(self, offsets: Mapping[tuple[str, int], int],
               changelog: Iterable[tuple[str, int, bytes, bytes | None]], wait: bool = True) -> None:
        """The commit procedure (see the module docstring): outputs, changelog, offsets, commit.

        ``offsets`` are the *next* offsets to read per ``(topic, partition)``;
        ``changelog`` yields ``(topic, partition, key, value_or_None)``.

        In idempotent mode with ``wait=False`` the steps that wait for the broker's
        acknowledgements run later, in :meth:`advance` (the caller goes on with the next
        micro-batch meanwhile); a commit first completes the one still in flight.
        """
        if self.mode == "exactly_once":
            self._produce_all(changelog)  # step 2 (step 1: the outputs are already in the txn)
            if offsets:  # step 3
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    self.consumer.consumer_group_metadata(), 60)
            self.producer.commit_transaction(60)  # step 4
            self._raise_delivery_error()
            self.producer.begin_transaction()
            return
        self.advance(wait=True)
        self._inflight = (list(changelog), dict(offsets))
        self.advance(wait=wait)

    @property
    def in_flight(self) -> bool:
        """True while an idempotent-mode commit waits for acknowledgements (see :meth:`advance`)."""
        return self._inflight is not None

    def advance(self, wait: bool = False) -> bool:
        """Take the idempotent-mode commit in flight as far as the acknowledgements allow:
        once every output record is acknowledged (step 1), produce the changelog (step
        2); once that is acknowledged too, commit the offsets (steps 3 + 4). The steps
        run in that order whatever the timing. ``wait=True`` blocks until it is done.
        True when no commit is left in flight. Raises
        :class:`~ct_stream.errors.BrokerError` when a record was not delivered.
        """
        if self._inflight is None:
            return True
        changelog, offsets = self._inflight
        if not wait:
            self.producer.poll(0)  # delivery reports
            if len(self.producer):  # records not acknowledged yet (this commit's, or later dead letters)
                self._raise_delivery_error()
                return False
        self._flush()
        if changelog is not None:  # step 1 done: every output is acknowledged
            self._produce_all(changelog)
            self._inflight = (None, offsets)
            if not wait:
                return False
            self._flush()
        if offsets:  # step 2 done: steps 3 + 4
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        self._inflight = None
        return True

    def _flush(self) -> None:
        remaining = self.producer.flush(60)
        if remaining:
            raise BrokerError(f"{remaining} output records were not acknowledged within 60 s")
        self._raise_delivery_error()

    def _raise_delivery_error(self) -> None:
        if self._delivery_error is not None:
            error, self._delivery_error = self._delivery_error, None
            raise BrokerError(f"an output record was not delivered: {error}")

    def close(self) -> None:
        """Leave the group, then abort the open transaction (nothing uncommitted is published).

        The revoke callback does not run: commit what should be kept before closing.
        """
        self._on_revoke = None
        self._on_assign = None
        try:
            self.consumer.close()
        finally:
            if self.mode == "exactly_once":
                try:
                    self.producer.abort_transaction(10)
                except KafkaException as e:
                    log.warning("abort on close failed: %s", e)
            else:
                self.producer.flush(30)
