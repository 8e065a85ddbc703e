"""The joiner worker: Kafka in, pure join logic, Arrow examples out, one commit procedure.

``ct-stream run TOPOLOGY --role joiner`` runs one :class:`JoinerWorker`. Several workers
with the same topology form one consumer group: the range assignor gives each the same
partition numbers of the events and labels topics, and a partition's join state moves
with it through the ``<name>.joiner-state`` changelog.

Per poll: decode the batch (bad records go to the DLQ at once), feed each partition's
records in arrival order to its :class:`~ct_stream.join.PartitionJoiner`, buffer the
examples. Every ``join.commit_interval`` seconds (and before partitions are revoked,
and at shutdown) the buffered examples are written as one Arrow batch per partition
and :meth:`GroupIO.commit <ct_stream.kafka.group.GroupIO.commit>` runs the commit
procedure (outputs, changelog, offsets, commit).

Recovery is crash-only: a worker that loses its partitions, is fenced, or fails a
commit throws its in-memory state away and starts over from the last commit
(state from the changelog, input from the committed offsets) — the same path as a
restart after ``kill -9``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Callable, Literal

from prometheus_client import CollectorRegistry

from ct_stream.errors import BrokerError, CtStreamError
from ct_stream.join import Example, JoinerGroup, JoinOutput, NativePartitionJoiner, PartitionJoiner
from ct_stream.join.joiner import ExampleRow, partition_joiner_class
from ct_stream.kafka.clients import TopicSpec, ensure_topics, read_to_end
from ct_stream.kafka.group import GroupIO, Mode, probe_transaction_isolation
from ct_stream.metrics import JoinerMetrics
from ct_stream.join.arrow import example_messages
from ct_stream.join.changelog import ChangelogWriter, read_changelog
from ct_stream.join.merge import PartitionMerger
from ct_stream.native import module as _native
from ct_stream.records import (Event, Label, Reason, Reject, decode_event, decode_events, decode_label,
                               decode_labels, encode_event, encode_label)
from ct_stream.runtime.smoke import dlq_headers
from ct_stream.topology import Topology

__all__ = ["JoinerWorker", "ModeSetting"]

log = logging.getLogger("ct_stream.joiner")

ModeSetting = Literal["auto", "exactly_once", "at_least_once"]

_MAX_MESSAGE_BYTES = 900_000  # an examples message above this is refused (Kafka's default limit is 1 MB)
#: An input without a record for this long (seconds) is caught up: examples that wait are
#: committed then, not at the next ``commit_interval``. A stream that flows commits at
#: the interval (its records come more often than this).
QUIET_SECONDS = 0.1


class _Restart(CtStreamError):
    """The worker's in-memory state no longer matches the last commit: start over from it."""


class JoinerWorker:
    """One joiner process's loop. ``run()`` until ``stop`` is set.

    ``clock`` is wall time in seconds (injectable for tests); ``registry`` holds the
    metrics. ``max_batch`` is the most records one poll takes; ``max_held`` bounds the
    records the worker holds back for event-time order (see :meth:`_backpressure`).
    ``poll_timeout`` is the longest a poll waits for input (10 ms at most while a commit
    is in flight).
    """

    def __init__(self, topology: Topology, bootstrap: str, *, instance: str = "0", mode: ModeSetting = "auto",
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 max_batch: int = 10_000, max_held: int = 200_000) -> None:
        self.t = topology
        self.bootstrap = bootstrap
        self.instance = instance
        self.mode_setting = mode
        self.clock = clock
        self.max_batch = max_batch
        self.max_held = max_held
        self.poll_timeout = 0.1
        self.records_polled = 0  # input records handed to the mergers, since the worker was made
        self._paused: set[tuple[str, int]] = set()
        self.metrics = JoinerMetrics(registry or CollectorRegistry(), topology.name)
        self.mode: Mode | None = None
        self.io: GroupIO | None = None
        self.group = JoinerGroup(topology.join, clock=clock)
        self._buffers: dict[int, list[Any]] = defaultdict(list)
        self._mergers: dict[int, Any] = {}  # PartitionMerger, or its native twin (ct_stream._native.Merger)
        # per partition: records that failed to decode, held in its merger until released
        self._rejects_held: Counter[int] = Counter()
        self._offsets: dict[tuple[str, int], int] = {}
        self._last_commit = clock()
        self._last_tick = clock()
        self._last_input = clock()  # when a poll last gave records
        self._reported: Counter[str] = Counter()
        self._changelogs: dict[int, ChangelogWriter] = {}  # per assigned partition, made by _restore
        # With the native data path the decoder packs the joiner's entries from the polled
        # messages itself (no Event or Label objects; docs/native.md), in this name order,
        # and queues them straight into the partitions' native mergers.
        decoder = topology.record_schema._native_decoder
        native = decoder is not None and partition_joiner_class() is NativePartitionJoiner
        self._items_into: Callable[..., tuple[int, list[int]]] | None = decoder.items_into if native else None
        self._entry_names = tuple(topology.record_schema.features)

    # Setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the topics ct-stream owns, check co-partitioning, pick the mode, join the group."""
        t = self.t
        compacted = {"cleanup.policy": "compact"}
        ensure_topics(self.bootstrap, [
            TopicSpec(t.events_topic, t.partitions, t.replication_factor),
            TopicSpec(t.labels_topic, t.partitions, t.replication_factor),
            TopicSpec(t.examples_topic, t.partitions, t.replication_factor),
            TopicSpec(t.dlq_topic, t.partitions, t.replication_factor),
            TopicSpec(t.state_topic, t.partitions, t.replication_factor, compacted),
        ], t.kafka)
        if self.mode is None:
            self.mode = self._choose_mode()
        self.io = GroupIO(self.bootstrap, f"{t.name}.joiner", [t.events_topic, t.labels_topic], self.mode,
                          transactional_id=f"{t.name}.joiner.{self.instance}", passthrough=t.kafka,
                          on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _choose_mode(self) -> Mode:
        if self.mode_setting != "auto":
            mode: Mode = self.mode_setting
        elif probe_transaction_isolation(self.bootstrap, self.t.state_topic, self.t.kafka):
            mode = "exactly_once"
        else:
            mode = "at_least_once"
        if mode == "exactly_once":
            log.warning("joiner %s: exactly-once mode (transactions isolate on %s)", self.t.name, self.bootstrap)
        else:
            log.warning("joiner %s: at-least-once (idempotent) mode: the broker at %s does not isolate "
                        "transactions; downstream dedupes examples by id", self.t.name, self.bootstrap)
        return mode

    # Rebalance -------------------------------------------------------------------------
    def _on_assign(self, tps: list[tuple[str, int]]) -> None:
        for p in sorted({p for _, p in tps}):
            if p not in self.group.partitions:
                self.group.add_partition(self._restore(p))
                merger = PartitionMerger if self._items_into is None else _native.Merger  # type: ignore[union-attr]
                self._mergers[p] = merger(self.t.join.grace, self.t.join.idle_timeout, self.clock)
        self.metrics.child(self.metrics.assigned).set(len(self.group.partitions))

    def _restore(self, partition: int) -> PartitionJoiner | NativePartitionJoiner:
        """The partition's joiner from its changelog (and its changelog writer, to go on)."""
        iso = "read_committed" if self.mode == "exactly_once" else "read_uncommitted"
        batches = read_to_end(self.bootstrap, self.t.state_topic, {partition: 0}, self.t.kafka, isolation_level=iso)
        entries, state = read_changelog(partition, ((m.key(), m.value()) for batch in batches for m in batch))
        joiner = partition_joiner_class().restore(partition, self.t.join, entries, clock=self.clock)
        self._changelogs[partition] = ChangelogWriter(partition, state)
        log.info("partition %d: restored %d state entries (generation %d, %d delta entries)",
                 partition, len(entries), state.generation, state.delta_entries)
        return joiner

    def _on_revoke(self, tps: list[tuple[str, int]]) -> None:
        self.commit()
        self._paused.difference_update(tps)
        for p in {p for _, p in tps}:
            self.group.remove_partition(p)
            self._changelogs.pop(p, None)
            self._mergers.pop(p, None)
            self._rejects_held.pop(p, None)
            self._buffers.pop(p, None)
        revoked = set(tps)
        self._offsets = {tp: o for tp, o in self._offsets.items() if tp not in revoked}
        self.metrics.child(self.metrics.assigned).set(len(self.group.partitions))

    # The loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        """Poll, join and commit until ``stop`` is set (or ``max_seconds`` pass); commit and leave."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        if self.io is None:
            self.setup()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.tick()
        self.close()

    def tick(self) -> None:
        """:meth:`step`, starting over from the last commit when the state no longer matches it
        (lost partitions, fencing, a failed commit). For loops that drive several workers."""
        try:
            self.step()
        except (_Restart, BrokerError) as e:
            log.warning("joiner %s: %s; starting over from the last commit", self.t.name, e)
            self._start_over()

    def step(self) -> None:
        """One poll: decode, order by event time, join, buffer; commit when the interval has
        passed, or when the poll found the input caught up while examples wait."""
        assert self.io is not None
        # a commit in flight finishes at the next polls: do not let an idle input hold it up
        timeout = min(0.01, self.poll_timeout) if self.io.in_flight else self.poll_timeout
        msgs, at_end = self.io.poll_grouped(self.max_batch, timeout=timeout)
        if msgs or at_end:
            self._process(msgs, at_end)
        self._unblock()
        now = self.clock()
        if msgs:
            self._last_input = now
        if now - self._last_tick >= 1.0:
            self._tick(now)
            self._last_tick = now
        if now - self._last_commit >= self.t.join.commit_interval or (
                not self.io.in_flight and now - self._last_input >= QUIET_SECONDS and any(self._buffers.values())):
            # every commit_interval, and as soon as the input is caught up (no record for
            # QUIET_SECONDS) while examples wait: a quiet stream's last examples need not
            # wait the interval
            self.commit(wait=False)
        elif self.io.in_flight:
            self.io.advance()  # a BrokerError starts over from the last commit (tick)

    def processed_up_to(self) -> dict[tuple[str, int], int]:
        """The next input offset per ``(topic, partition)`` after the records fed to the join
        (committed at the next :meth:`commit`)."""
        return dict(self._offsets)

    def _process(self, grouped: dict[tuple[str, int], list[Any]], at_end: list[tuple[str, int]]) -> None:
        """Feed one poll's records (by topic partition, as :meth:`GroupIO.poll_grouped`
        gives them) and its ends of partition to the mergers, and release what is ready."""
        t = self.t
        touched = set()
        for (topic, p), tp_msgs in grouped.items():
            merger = self._mergers.get(p)
            if merger is None:
                continue  # polled just before its partition was revoked: the new owner re-reads it
            kind = "event" if topic == t.events_topic else "label"
            if self._items_into is not None:
                self._queue_native(merger, kind, tp_msgs, p)
            else:
                merger.add(kind, self._merger_items(kind, tp_msgs, p))  # type: ignore[arg-type]
            self.metrics.child(self.metrics.records, kind).inc(len(tp_msgs))
            self.records_polled += len(tp_msgs)
            touched.add(p)
        for topic, p in at_end:
            merger = self._mergers.get(p)
            if merger is not None:
                merger.mark_end("event" if topic == t.events_topic else "label")
                touched.add(p)
        for p in touched:
            self._release(p)
            self._backpressure(p)

    def _queue_native(self, merger: Any, kind: str, msgs: list[Any], p: int) -> None:
        """Queue one topic partition's polled messages into its native merger: the decoder
        packs the joiner's entries and queues them itself (docs/native.md); a message not
        in the common form is decoded here into the place it left (a reject with ts
        ``None``, counted as held)."""
        assert self._items_into is not None
        base, missing = self._items_into(merger, kind, msgs, kind == "event")
        decode_one = decode_event if kind == "event" else decode_label
        for i in missing:
            m = msgs[i]
            record = decode_one(m.value(), self.t.record_schema, m.timestamp()[1])
            reject = record.__class__ is Reject
            self._rejects_held[p] += reject
            merger.put(kind, base + i, None if reject else record.ts, (kind, record, m.offset(), m))

    def _merger_items(self, kind: str, msgs: list[Any], p: int) -> list[tuple[float | None, tuple[str, Any, int, Any]]]:
        """The merger items of one topic partition's polled messages: ``(ts, joiner input
        (kind, record, offset, message))``, a reject with ts ``None`` (counted as held)."""
        decode = decode_events if kind == "event" else decode_labels
        good, rejects = decode([m.value() for m in msgs], self.t.record_schema, [m.timestamp()[1] for m in msgs])
        if not rejects:
            return [(r.ts, (kind, r, m.offset(), m)) for r, m in zip(good, msgs)]
        self._rejects_held[p] += len(rejects)
        bad = dict(rejects)
        it = iter(good)
        items: list[tuple[float | None, tuple[str, Any, int, Any]]] = []
        for i, m in enumerate(msgs):
            reject = bad.get(i)
            if reject is not None:
                items.append((None, (kind, reject, m.offset(), m)))
            else:
                record = next(it)
                items.append((record.ts, (kind, record, m.offset(), m)))
        return items

    def _unblock(self) -> None:
        """Release records that wait for a topic which has nothing more to give.

        End-of-partition events alone are not enough: librdkafka reports the end of a
        partition once per offset, so a partition assigned again to this consumer at the
        same offset (a rebalance) is never reported at its end again. The consumer's
        position against the last fetch's high watermark says the same thing, locally.
        """
        assert self.io is not None
        t = self.t
        for p, merger in self._mergers.items():
            kind = merger.waiting_for()
            if kind is not None and self.io.at_end(t.events_topic if kind == "event" else t.labels_topic, p):
                merger.mark_end(kind)
                self._release(p)
                self._backpressure(p)
            elif kind is None and (merger.buffered("event") or merger.buffered("label")):
                self._release(p)  # records held past the other topic's end until grace or max_wait allows
                self._backpressure(p)

    def _backpressure(self, p: int) -> None:
        """Bound the records a partition's merger holds while they wait for the other topic.

        A consumer catching up may fetch one topic far ahead of the other (measured: all
        70k labels of a backlog before any event). Over ``max_held / partitions`` records
        waiting, the topic's partition stops fetching; at half that it fetches again.
        """
        assert self.io is not None
        merger = self._mergers.get(p)
        if merger is None:
            return
        limit = max(1, self.max_held // max(1, len(self._mergers)))
        for kind, topic in (("event", self.t.events_topic), ("label", self.t.labels_topic)):
            held, tp = merger.buffered(kind), (topic, p)  # type: ignore[arg-type]
            if tp in self._paused:
                if held <= limit // 2:
                    self.io.resume(topic, p)
                    self._paused.discard(tp)
            elif held > limit:
                self.io.pause(topic, p)
                self._paused.add(tp)

    def _tick(self, now: float) -> None:
        """Idle watermark advance, for partitions with nothing held back: a partition
        whose records wait in its merger for the other topic is not idle, it is blocked."""
        for p, joiner in self.group.partitions.items():
            merger = self._mergers[p]
            if merger.buffered("event") == 0 and merger.buffered("label") == 0:
                self._handle(joiner.tick(now))

    def _release(self, p: int) -> None:
        """Feed the partition's records that are ready, in event-time order, to its joiner."""
        joiner = self.group.partitions[p]
        if self._items_into is not None and not self._rejects_held.get(p):
            # no reject waits in the merger: the native joiner takes its records itself
            out, n, last = joiner.process_merged(self._mergers[p], self._entry_names)  # type: ignore[union-attr]
            if n:
                self._advance(p, *last)
                self._joined(p, out)
            return
        inputs = self._mergers[p].take_payloads()  # joiner inputs (kind, record, offset, message)
        if not inputs:
            return
        good = inputs
        if self._rejects_held.get(p):  # records that failed to decode wait in the merger
            good = [x for x in inputs if x[1].__class__ is not Reject]
            if len(good) != len(inputs):
                self._rejects_held[p] -= len(inputs) - len(good)
                for _, reject, _, m in inputs:
                    if reject.__class__ is Reject:
                        self._dead_letter(m, reject.reason.value, reject.detail)
        # each topic's records come in offset order: the last of each kind is where it stands
        self._advance(p, *(next((x[2] for x in reversed(inputs) if x[0] == kind), None) for kind in ("event", "label")))
        if good:
            if self._items_into is not None:
                out = joiner.process(good, self._entry_names)  # type: ignore[arg-type, call-arg]
            else:
                out = joiner.process(good)  # type: ignore[arg-type]
            self._joined(p, out)

    def _advance(self, p: int, event_offset: int | None, label_offset: int | None) -> None:
        """The input offsets fed to partition ``p``'s joiner: the last event's and label's (None: none fed)."""
        if event_offset is not None:
            self._offsets[(self.t.events_topic, p)] = event_offset + 1
        if label_offset is not None:
            self._offsets[(self.t.labels_topic, p)] = label_offset + 1

    def _joined(self, p: int, out: JoinOutput) -> None:
        """Buffer what partition ``p``'s joiner gave, then enforce ``max_pending``."""
        self._buffers[p].extend(out.rows)  # all from partition p
        self._handle(out, examples=False)
        self._handle(self.group.enforce_capacity())

    def _handle(self, out: JoinOutput, examples: bool = True) -> None:
        if examples:
            for row in out.rows:
                self._buffers[row[5]].append(row)  # ExampleRow: (entry, names, label_ts, label, outcome, partition)
        for dl in out.dead_letters:
            topic = self.t.events_topic if dl.kind == "event" else self.t.labels_topic
            if dl.source is not None:  # the message itself: dead-letter its original bytes
                self._dead_letter(dl.source, dl.reason.value, dl.detail)
            else:
                record = getattr(dl, "record", None)
                value = None
                if isinstance(record, Event):
                    value = encode_event(record, self.t.record_schema)
                elif isinstance(record, Label):
                    value = encode_label(record, self.t.record_schema)
                key = record.id.encode() if record is not None else None
                self._produce_dead_letter(topic, dl.partition, dl.offset, key, value, dl.reason.value, dl.detail)

    def _dead_letter(self, m: Any, reason: str, detail: str) -> None:
        self._produce_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(), reason, detail)

    def _produce_dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None,
                             value: bytes | None, reason: str, detail: str) -> None:
        assert self.io is not None
        self.io.produce(self.t.dlq_topic, value, key, headers=dlq_headers(reason, detail, topic, partition, offset))
        self.metrics.child(self.metrics.dead_letters, reason).inc()

    def _too_large(self, row: ExampleRow, size: int) -> None:
        """Dead-letter an example whose one-row message is bigger than a topic takes by default."""
        ex = Example.from_row(row)
        value: bytes | None = encode_event(Event(ex.id, ex.event_ts, ex.features, ex.served_version, ex.prediction),
                                           self.t.record_schema)
        if len(value) > _MAX_MESSAGE_BYTES:  # type: ignore[arg-type]
            value = None  # the key and the detail still say which event it was
        self._produce_dead_letter(self.t.events_topic, ex.source_partition, ex.source_offset, ex.id.encode(),
                                  value, Reason.TOO_LARGE.value,
                                  f"example {ex.id!r} ({ex.outcome}) encodes to {size} bytes; an examples "
                                  f"message must stay under {_MAX_MESSAGE_BYTES} (lower max_record_bytes)")

    # Commit ----------------------------------------------------------------------------
    def commit(self, wait: bool = True) -> None:
        """Write buffered examples and run the commit procedure. With ``wait=False`` (the
        loop's periodic commit), in at-least-once mode the steps that wait for the
        broker's acknowledgements finish in later steps (:meth:`GroupIO.advance
        <ct_stream.kafka.group.GroupIO.advance>`), so the loop goes on joining meanwhile."""
        assert self.io is not None
        started = time.perf_counter()
        t = self.t
        for p, rows in self._buffers.items():
            for chunk, message in example_messages(rows, t.record_schema):
                if len(message) > _MAX_MESSAGE_BYTES:  # one row alone is more than the topic takes
                    self._too_large(chunk[0], len(message))
                    continue
                # key: the partition and the first row's source offset (entry[2])
                self.io.produce(t.examples_topic, message, key=f"{p}:{chunk[0][0][2]}".encode(),
                                partition=p)
        self._buffers.clear()
        changelog = []
        snapshotted = False  # at most one partition snapshots per commit (a snapshot is O(state): a pause)
        for p, joiner in self.group.partitions.items():
            writer, generation = self._changelogs[p], self._changelogs[p].generation
            for key, value in writer.records(joiner.drain_encoded(writer.max_bytes), joiner.pending + joiner.remembered,
                                             functools.partial(joiner.snapshot_encoded, writer.max_bytes),
                                             allow_snapshot=not snapshotted):
                changelog.append((t.state_topic, p, key, value))
            snapshotted = snapshotted or writer.generation != generation  # a snapshot starts a generation
        try:
            self.io.commit(dict(self._offsets), changelog, wait=wait)
        except Exception as e:  # noqa: BLE001 - any commit failure means: start over from the last commit
            raise _Restart(f"commit failed: {e}") from e
        self._last_commit = self.clock()
        self.metrics.child(self.metrics.commit_seconds).observe(time.perf_counter() - started)
        self._update_metrics()

    def _update_metrics(self) -> None:
        m = self.metrics
        counts = self.group.counts
        for key, metric, labels in (("joined", m.examples, ("joined",)), ("expired", m.examples, ("expired",)),
                                    ("corrections", m.examples, ("correction",)),
                                    ("expired_dropped", m.dropped, ()),
                                    ("capacity_expired", m.capacity_expired, ()),
                                    ("forgotten_early", m.forgotten_early, ()),
                                    ("duplicate_events", m.duplicates, ("event",)),
                                    ("duplicate_labels", m.duplicates, ("label",))):
            delta = counts[key] - self._reported[key]
            if delta > 0:
                m.child(metric, *labels).inc(delta)
                self._reported[key] = counts[key]
        pending_events = sum(j.pending_events for j in self.group.partitions.values())
        pending_labels = sum(j.pending_labels for j in self.group.partitions.values())
        m.child(m.pending, "event").set(pending_events)
        m.child(m.pending, "label").set(pending_labels)
        for kind in ("event", "label"):
            m.child(m.reorder_buffered, kind).set(sum(x.buffered(kind) for x in self._mergers.values()))  # type: ignore[arg-type]
        m.child(m.paused).set(len(self._paused))
        m.child(m.remembered).set(sum(j.remembered for j in self.group.partitions.values()))
        closed = counts["joined"] + counts["expired"] + counts["expired_dropped"] + counts["expired_dlq"]
        if closed:
            m.child(m.label_coverage).set(counts["joined"] / closed)
        if self.io is not None:
            lag = {"event": 0, "label": 0}
            for (topic, _), behind in self.io.lag().items():
                lag["event" if topic == self.t.events_topic else "label"] += behind
            for kind, behind in lag.items():
                m.child(m.lag, kind).set(behind)
        for joiner in self.group.partitions.values():
            m.label_delay.observe_many(joiner.drain_label_delays())

    def _start_over(self) -> None:
        if self.io is not None:
            try:
                self.io.close()
            except Exception as e:  # noqa: BLE001 - we are discarding this client anyway
                log.warning("closing the old clients failed: %s", e)
        self.io = None
        self.group = JoinerGroup(self.t.join, clock=self.clock)
        self._changelogs.clear()
        self._buffers.clear()
        self._mergers.clear()
        self._rejects_held.clear()
        self._offsets.clear()
        self._paused.clear()
        self.setup()

    def close(self) -> None:
        """Commit what is buffered, then leave the group."""
        if self.io is None:
            return
        try:
            self.commit()
        finally:
            self.io.close()
            self.io = None

