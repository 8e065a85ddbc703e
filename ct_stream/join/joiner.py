"""The windowed delayed-label joiner, as pure logic (the reference for its semantics).

One :class:`PartitionJoiner` serves one input partition: partition ``p`` of the events
topic and partition ``p`` of the labels topic (the two topics are co-partitioned by the
join id). It sees an ordered sequence of :class:`Input` records and turns them into
:class:`Example` rows and :class:`DeadLetter` records. Time is **event time**: the
only clock that moves the join is the records' ``ts``, except for the idle timeout
(:meth:`PartitionJoiner.tick`), which reads an injected clock.

Watermark
    ``max_ts`` is the largest ``ts`` seen on the partition (both kinds; ``-inf`` at
    first). ``watermark = max(max_ts - grace, idle watermark)``; it never goes back.

Per record, in arrival order (so the output never depends on how the inputs are cut
into batches):

1. **late**: ``ts < watermark`` (the watermark before this record) -> dead letter
   ``late``; nothing else changes (``max_ts`` does not move).
2. ``max_ts`` and the watermark move.
3. the record is handled:

   - **event** ``i``: pending already, or in the done memory -> duplicate (counted,
     dropped). A label for ``i`` is pending -> ``joined``. Otherwise it waits, with
     deadline ``ts + max_label_delay``.
   - **label** ``i``: event ``i`` is pending -> ``joined``. ``i`` expired as a
     negative and was not corrected yet -> one ``correction`` example (the event's
     fields, the true label). ``i`` is otherwise done, or a label for ``i`` is already
     pending -> duplicate. Otherwise it waits for its event, with deadline
     ``ts + max_label_delay``.
4. everything whose deadline is ``< watermark`` (strictly) expires, in deadline order
   (ties by arrival sequence number): a pending event under ``timeout_policy``
   (``negative``: an ``expired`` example carrying ``default_label``; ``drop``: counted
   only; ``dlq``: dead letter ``expired``); a pending label (its event never came):
   dead letter ``unknown_id``.

Done memory
    A joined, expired, dropped or dead-lettered id is remembered until
    ``watermark > event_ts + 2 * max_label_delay + grace`` (the horizon), then
    forgotten: the same id is new again. Within the horizon duplicates are caught and a
    label for an expired negative becomes its correction. A label that is not late and
    whose ts is at most the horizon always finds its id (the watermark is never above
    the ts of a record that is not late), so corrections are accepted for labels up to
    ``max_label_delay + grace`` after the event's deadline, and identical duplicate
    copies are always caught (a copy is either within the horizon or late). Expired
    negatives keep their event until corrected or forgotten, to build the correction.
    Forgetting is exact (an entry past the horizon is treated as absent); the memory is
    reclaimed by time bucket, in steps of ``max_label_delay / 8`` of event time.

Idle timeout
    ``tick(now)``: when no record arrived for ``>= idle_timeout`` clock seconds, the
    watermark becomes ``max(watermark, max_ts + (now - last_arrival) - grace)`` and
    expiry runs. Nothing happens before the first record.

Capacity
    :class:`JoinerGroup` holds the partitions of one worker and keeps pending events +
    pending labels ``<= max_pending`` after every ``process`` call: the entries with the
    smallest deadline across its partitions expire early (events under the policy,
    labels as ``unknown_id``), counted in ``capacity_expired`` as well as in their
    usual counter.

Changelog
    :meth:`PartitionJoiner.drain_changes` returns the state changed since the last
    drain, one value per id (orjson bytes, or ``None`` for an id the joiner no longer
    holds) plus :data:`META_KEY`. :meth:`PartitionJoiner.restore` rebuilds a joiner
    from the latest value per key; the restored joiner produces exactly the outputs
    the original would have produced. Counters and ``label_delays`` are metrics and
    start from zero; ``last_arrival`` is set to ``clock()``. Values are JSON arrays:
    ``["e", seq, offset, ts, features, served_version, prediction]`` (pending event),
    ``["l", seq, offset, ts, label]`` (pending label), ``["d", state, event_ts]``
    (done: ``joined``, ``corrected``, ``dropped``, ``dlq``) or ``["d", "expired",
    event_ts, offset, features, served_version, prediction]`` (an expired negative).
    Deadlines and horizons are recomputed from the timestamps with the spec given to
    ``restore``.

The module is pure: no Kafka, no I/O, no threads, no global state; time only through
the injected ``clock``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, NamedTuple, Sequence

import orjson

from ct_stream.errors import CodecError, CtStreamError, TopologyError
from ct_stream.records import Event, Label, Reason

if TYPE_CHECKING:
    from ct_stream.topology import JoinSpec

__all__ = [
    "Input",
    "Example",
    "DeadLetter",
    "JoinOutput",
    "PartitionJoiner",
    "JoinerGroup",
    "COUNTER_KEYS",
    "META_KEY",
]

META_KEY = "\x00meta"
"""The changelog key of a partition's watermark state (``max_ts``, idle watermark,
sequence counter). An id that starts with ``"\\x00"`` is stored under ``"\\x00" + id``,
so no id can collide with it."""

COUNTER_KEYS: tuple[str, ...] = (
    "events", "labels", "joined", "expired", "expired_dropped", "expired_dlq", "corrections",
    "duplicate_events", "duplicate_labels", "late", "unknown_id", "capacity_expired",
)
"""The keys of :attr:`PartitionJoiner.counts` (all present from the start, at 0)."""

_NEG_INF = -math.inf

# Done-memory states.
_JOINED = "joined"
_EXPIRED = "expired"      # expired as a negative: may still get one correction
_CORRECTED = "corrected"
_DROPPED = "dropped"
_DEAD_LETTERED = "dlq"
_DONE_STATES = frozenset((_JOINED, _EXPIRED, _CORRECTED, _DROPPED, _DEAD_LETTERED))


class Input(NamedTuple):
    """One input record: its kind, the decoded record, and its offset in its own topic."""

    kind: Literal["event", "label"]
    record: Event | Label
    offset: int


@dataclass(slots=True)
class Example:
    """One row of the examples topic (columns of :func:`ct_stream.records.example_schema`).

    ``source_partition`` and ``source_offset`` are the event's; ``label_ts`` is ``None``
    for an ``expired`` example.
    """

    id: str
    event_ts: float
    label_ts: float | None
    label: bool | str | float
    outcome: str  # "joined" | "expired" | "correction"
    served_version: int | None
    prediction: float | str | None
    source_partition: int
    source_offset: int
    features: dict[str, Any]


@dataclass(slots=True)
class DeadLetter:
    """A record the joiner sends to the dead-letter topic: which record (kind, partition,
    offset in its own topic), why, and a short message. ``record`` is the decoded record
    itself, for a runtime that no longer holds the original bytes (an event that
    expires under ``dlq`` arrived in an earlier batch)."""

    kind: Literal["event", "label"]
    partition: int
    offset: int
    reason: Reason
    detail: str
    record: Event | Label | None = field(default=None, repr=False, compare=False)


@dataclass
class JoinOutput:
    """What one call produced: examples and dead letters, in the order they happened."""

    examples: list[Example] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def extend(self, other: JoinOutput) -> None:
        """Append ``other``'s examples and dead letters to this output."""
        self.examples.extend(other.examples)
        self.dead_letters.extend(other.dead_letters)


def _check_spec(spec: JoinSpec) -> None:
    if spec.timeout_policy not in ("negative", "drop", "dlq"):
        raise TopologyError("join.timeout_policy", spec.timeout_policy, "one of 'negative', 'drop', 'dlq'")
    if spec.timeout_policy == "negative" and spec.default_label is None:
        raise TopologyError("join.default_label", None,
                            "a label value when timeout_policy is 'negative' (Topology sets it from label_type)")


class PartitionJoiner:
    """The join state of one input partition (see the module docstring for the rules).

    ``clock`` (seconds, monotonic) is read once per :meth:`process` call and by
    :meth:`tick`; nothing else reads time.

    >>> from ct_stream.records import Event, Label
    >>> from ct_stream.topology import JoinSpec
    >>> spec = JoinSpec(max_label_delay=10, grace=2, default_label=False)
    >>> j = PartitionJoiner(0, spec, clock=lambda: 0.0)
    >>> out = j.process([Input("event", Event("a", 100.0, {"x": 1.0}), 0),
    ...                  Input("label", Label("a", 103.0, True), 0),
    ...                  Input("event", Event("b", 101.0, {"x": 2.0}), 1)])
    >>> [(x.id, x.outcome, x.label, x.label_ts) for x in out.examples]
    [('a', 'joined', True, 103.0)]
    >>> out = j.process([Input("event", Event("c", 114.0, {"x": 3.0}), 2)])  # watermark 112 > 111
    >>> [(x.id, x.outcome, x.label, x.label_ts) for x in out.examples]
    [('b', 'expired', False, None)]
    >>> out = j.process([Input("label", Label("b", 113.0, True), 1)])  # b's label after all
    >>> [(x.id, x.outcome, x.label, x.label_ts) for x in out.examples]
    [('b', 'correction', True, 113.0)]
    >>> out = j.process([Input("label", Label("a", 100.5, True), 2)])  # behind the watermark
    >>> [(d.kind, d.offset, d.reason.value) for d in out.dead_letters]
    [('label', 2, 'late')]
    >>> j.watermark, j.pending_events, j.counts["joined"], j.counts["corrections"]
    (112.0, 1, 1, 1)
    """

    def __init__(self, partition: int, spec: JoinSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        _check_spec(spec)
        self.partition = partition
        self.spec = spec
        self._clock = clock
        self._delay = float(spec.max_label_delay)
        self._grace = float(spec.grace)
        self._idle_timeout = float(spec.idle_timeout)
        self._horizon = 2 * self._delay + self._grace
        self._policy: str = spec.timeout_policy
        self._default_label = spec.default_label
        self._max_ts = _NEG_INF
        self._idle_wm = _NEG_INF
        self._wm = _NEG_INF
        self._seq = 0
        # id -> (record, offset, seq); an id is in at most one of the three maps.
        self._events: dict[str, tuple[Event, int, int]] = {}
        self._labels: dict[str, tuple[Label, int, int]] = {}
        # id -> (state, event_ts, event or None, event offset or None); the event is
        # kept only for an expired negative (state _EXPIRED), to build a correction.
        self._done: dict[str, tuple[str, float, Event | None, int | None]] = {}
        # (deadline, seq, id, kind) of pending entries, lazily deleted: an entry whose
        # map value is gone or has another seq is stale.
        self._heap: list[tuple[float, int, str, str]] = []
        self._stale = 0
        # The done memory is forgotten logically (an entry with event_ts + horizon below
        # the watermark is treated as absent) and cleaned physically by time bucket:
        # bucket k holds the ids whose forget time is in [k * width, (k + 1) * width);
        # it is emptied once (k + 1) * width < watermark. Cheaper than a heap entry per id.
        self._bucket_width = self._delay / 8
        self._buckets: dict[int, list[str]] = {}
        self._bucket_heap: list[int] = []
        self._dirty: set[str] = set()
        self._drained_meta: tuple[float, float, int] = (_NEG_INF, _NEG_INF, 0)
        self._last_arrival = clock()
        self._label_delays: list[float] = []
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))

    # Views -------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """The partition's watermark (``-inf`` before the first record)."""
        return self._wm

    @property
    def max_ts(self) -> float:
        """The largest ``ts`` accepted on this partition (``-inf`` before the first record)."""
        return self._max_ts

    @property
    def pending_events(self) -> int:
        """Events waiting for their label."""
        return len(self._events)

    @property
    def pending_labels(self) -> int:
        """Labels waiting for their event."""
        return len(self._labels)

    @property
    def pending(self) -> int:
        """Pending events + pending labels (what ``max_pending`` bounds)."""
        return len(self._events) + len(self._labels)

    @property
    def remembered(self) -> int:
        """Ids held in the done memory (joined/expired/dropped/dead-lettered). Ids past the
        horizon are cleaned in steps of ``max_label_delay / 8`` of event time, so this
        may count a few that are already forgotten."""
        return len(self._done)

    def drain_label_delays(self) -> list[float]:
        """``label.ts - event.ts`` of every joined example since the last drain."""
        delays, self._label_delays = self._label_delays, []
        return delays

    # Processing --------------------------------------------------------------------
    def process(self, inputs: Sequence[Input]) -> JoinOutput:
        """Join ``inputs`` (in arrival order) and return what they produced."""
        out = JoinOutput()
        if not inputs:
            return out
        self._last_arrival = self._clock()
        examples = out.examples
        events, labels, done, dirty = self._events, self._labels, self._done, self._dirty
        heap, bucket_heap = self._heap, self._bucket_heap
        delays = self._label_delays
        delay, grace, horizon, partition = self._delay, self._grace, self._horizon, self.partition
        push = heapq.heappush
        buckets, width = self._buckets, self._bucket_width
        wm = self._wm
        clean_below = self._clean_below(wm)
        n_events = n_labels = n_joined = n_corrections = dup_events = dup_labels = 0
        for kind, rec, offset in inputs:
            ts = rec.ts
            if kind == "event":
                n_events += 1
            elif kind == "label":
                n_labels += 1
            else:
                raise CtStreamError(f"Input.kind must be 'event' or 'label', got {kind!r}")
            # 1. late
            if ts < wm:
                self._late(kind, rec, offset, out)
                continue
            # done entries with event_ts + horizon < forget_wm are forgotten (step 4 of
            # the previous record would have forgotten them)
            forget_wm = wm
            # 2. max_ts and the watermark
            if ts > self._max_ts:
                self._max_ts = ts
                if ts - grace > wm:
                    wm = self._wm = ts - grace
                    clean_below = wm / width - 1  # == self._clean_below(wm)
            # 3. the record
            i = rec.id
            if kind == "event":
                if i in events:
                    dup_events += 1
                else:
                    d = done.get(i)
                    if d is not None and d[1] + horizon >= forget_wm:
                        dup_events += 1
                    else:
                        if d is not None:  # past the horizon: forgotten, the id is new again
                            del done[i]
                        pl = labels.pop(i, None)
                        if pl is None:
                            seq = self._seq
                            self._seq = seq + 1
                            events[i] = (rec, offset, seq)  # type: ignore[assignment]
                            push(heap, (ts + delay, seq, i, "event"))
                        else:
                            lab = pl[0]
                            examples.append(Example(i, ts, lab.ts, lab.label, "joined", rec.served_version,  # type: ignore[union-attr]
                                                    rec.prediction, partition, offset, rec.features))  # type: ignore[union-attr]
                            delays.append(lab.ts - ts)
                            n_joined += 1
                            self._stale += 1
                            done[i] = (_JOINED, ts, None, None)  # == self._remember(...)
                            k = int((ts + horizon) // width)
                            bucket = buckets.get(k)
                            if bucket is None:
                                self._bucket(i, k)
                            else:
                                bucket.append(i)
                        dirty.add(i)
            else:
                pe = events.pop(i, None)
                if pe is not None:
                    ev, ev_offset, _ = pe
                    ev_ts = ev.ts
                    examples.append(Example(i, ev_ts, ts, rec.label, "joined", ev.served_version,  # type: ignore[union-attr]
                                            ev.prediction, partition, ev_offset, ev.features))
                    delays.append(ts - ev_ts)
                    n_joined += 1
                    self._stale += 1
                    done[i] = (_JOINED, ev_ts, None, None)  # == self._remember(...)
                    k = int((ev_ts + horizon) // width)
                    bucket = buckets.get(k)
                    if bucket is None:
                        self._bucket(i, k)
                    else:
                        bucket.append(i)
                    dirty.add(i)
                else:
                    d = done.get(i)
                    if d is not None and d[1] + horizon >= forget_wm:
                        if d[0] == _EXPIRED:
                            ev = d[2]  # type: ignore[assignment]
                            examples.append(Example(i, d[1], ts, rec.label, "correction",  # type: ignore[union-attr]
                                                    ev.served_version, ev.prediction, partition, d[3],  # type: ignore[arg-type]
                                                    ev.features))
                            n_corrections += 1
                            done[i] = (_CORRECTED, d[1], None, None)
                            dirty.add(i)
                        else:
                            dup_labels += 1
                    elif i in labels:
                        dup_labels += 1
                    else:
                        if d is not None:  # past the horizon: forgotten, the id is new again
                            del done[i]
                        seq = self._seq
                        self._seq = seq + 1
                        labels[i] = (rec, offset, seq)  # type: ignore[assignment]
                        push(heap, (ts + delay, seq, i, "label"))
                        dirty.add(i)
            # 4. expiry
            if (heap and heap[0][0] < wm) or (bucket_heap and bucket_heap[0] < clean_below):
                self._expire(out)
        counts = self.counts
        counts["events"] += n_events
        counts["labels"] += n_labels
        counts["joined"] += n_joined
        counts["corrections"] += n_corrections
        counts["duplicate_events"] += dup_events
        counts["duplicate_labels"] += dup_labels
        if self._stale > 1024 and 2 * self._stale > len(heap):
            self._compact()
        return out

    def tick(self, now: float | None = None) -> JoinOutput:
        """Advance the watermark by idle time (``now`` defaults to ``clock()``) and expire.

        Does nothing before the first record or while the partition has been quiet for
        less than ``idle_timeout``.
        """
        out = JoinOutput()
        if self._max_ts == _NEG_INF:
            return out
        if now is None:
            now = self._clock()
        elapsed = now - self._last_arrival
        if elapsed < self._idle_timeout:
            return out
        wm = self._max_ts + elapsed - self._grace
        if wm > self._wm:
            self._wm = self._idle_wm = wm
            self._expire(out)
        return out

    def oldest_deadline(self) -> float | None:
        """The smallest deadline among pending events and labels, or ``None``."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def expire_oldest(self, n: int) -> JoinOutput:
        """Expire up to ``n`` pending entries early, smallest deadline first (for
        capacity): events under the policy, labels as ``unknown_id``; each is also
        counted in ``capacity_expired``."""
        out = JoinOutput()
        heap = self._heap
        while n > 0 and heap:
            entry = heapq.heappop(heap)
            if not self._is_live(entry):
                self._stale -= 1
                continue
            self._expire_entry(entry, out, capacity=True)
            self.counts["capacity_expired"] += 1
            n -= 1
        return out

    # Internals ---------------------------------------------------------------------
    def _is_live(self, entry: tuple[float, int, str, str]) -> bool:
        _, seq, i, kind = entry
        held = (self._events if kind == "event" else self._labels).get(i)
        return held is not None and held[2] == seq

    def _late(self, kind: str, rec: Event | Label, offset: int, out: JoinOutput) -> None:
        self.counts["late"] += 1
        out.dead_letters.append(DeadLetter(
            kind, self.partition, offset, Reason.LATE,  # type: ignore[arg-type]
            f"{kind} {rec.id!r}: ts {rec.ts!r} is behind the partition watermark {self._wm!r} "
            f"(newest ts {self._max_ts!r}, grace {self._grace!r}s)", rec))

    def _expire(self, out: JoinOutput) -> None:
        """Step 4: expire pending entries, then forget done entries, with deadline < watermark."""
        wm = self._wm
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] < wm:
            entry = pop(heap)
            if self._is_live(entry):
                self._expire_entry(entry, out, capacity=False)
            else:
                self._stale -= 1
        bucket_heap = self._bucket_heap
        clean_below = self._clean_below(wm)
        if bucket_heap and bucket_heap[0] < clean_below:
            done, horizon, width, dirty = self._done, self._horizon, self._bucket_width, self._dirty
            while bucket_heap and bucket_heap[0] < clean_below:
                k = pop(bucket_heap)
                for i in self._buckets.pop(k):
                    d = done.get(i)
                    if d is None:
                        continue
                    if d[1] + horizon < wm:
                        del done[i]
                        dirty.add(i)
                    elif int((d[1] + horizon) // width) <= k:
                        # float rounding at a bucket edge: look again with the next bucket
                        # (an id re-used after it was forgotten is already in its own bucket)
                        self._bucket(i, k + 1)

    def _clean_below(self, wm: float) -> float:
        """Bucket ``k`` is past the horizon when ``k < wm / width - 1``, i.e. ``(k + 1) * width < wm``."""
        return wm / self._bucket_width - 1

    def _remember(self, i: str, entry: tuple[str, float, Event | None, int | None]) -> None:
        """Put ``i`` in the done memory (replacing a forgotten entry, if any)."""
        self._done[i] = entry
        self._bucket(i, int((entry[1] + self._horizon) // self._bucket_width))

    def _bucket(self, i: str, k: int) -> None:
        bucket = self._buckets.get(k)
        if bucket is None:
            self._buckets[k] = [i]
            heapq.heappush(self._bucket_heap, k)
        else:
            bucket.append(i)

    def _expire_entry(self, entry: tuple[float, int, str, str], out: JoinOutput, *, capacity: bool) -> None:
        """Expire one live pending entry (popped from the heap)."""
        _, _, i, kind = entry
        counts = self.counts
        self._dirty.add(i)
        why = "max_pending reached: expired early" if capacity else \
            f"no match within max_label_delay {self._delay!r}s"
        if kind == "label":
            lab, offset, _ = self._labels.pop(i)
            counts["unknown_id"] += 1
            out.dead_letters.append(DeadLetter("label", self.partition, offset, Reason.UNKNOWN_ID,
                                               f"label {i!r}: no event; {why}", lab))
            return
        ev, offset, _ = self._events.pop(i)
        policy = self._policy
        if policy == "negative":
            counts["expired"] += 1
            out.examples.append(Example(i, ev.ts, None, self._default_label, "expired", ev.served_version,
                                        ev.prediction, self.partition, offset, ev.features))
            state, kept = _EXPIRED, ev
        elif policy == "drop":
            counts["expired_dropped"] += 1
            state, kept = _DROPPED, None
        else:
            counts["expired_dlq"] += 1
            out.dead_letters.append(DeadLetter("event", self.partition, offset, Reason.EXPIRED,
                                               f"event {i!r}: no label; {why}", ev))
            state, kept = _DEAD_LETTERED, None
        self._remember(i, (state, ev.ts, kept, offset if kept is not None else None))

    def _compact(self) -> None:
        """Rebuild the pending heap without its stale entries (amortised O(1) per join)."""
        delay = self._delay
        heap = [(ev.ts + delay, seq, i, "event") for i, (ev, _, seq) in self._events.items()]
        heap += [(lab.ts + delay, seq, i, "label") for i, (lab, _, seq) in self._labels.items()]
        heapq.heapify(heap)
        self._heap[:] = heap
        self._stale = 0

    # Changelog ---------------------------------------------------------------------
    def drain_changes(self) -> dict[str, bytes | None]:
        """The state changes since the last drain: ``{key: orjson bytes or None}``.

        One entry per changed id (its current state; ``None`` when the joiner no longer
        holds it), plus :data:`META_KEY` when the watermark state or the sequence
        counter changed. Drain regularly: the set of changed ids grows until drained.
        """
        changes: dict[str, bytes | None] = {}
        events, labels, done, dumps = self._events, self._labels, self._done, orjson.dumps
        for i in self._dirty:
            key = "\x00" + i if i[:1] == "\x00" else i  # ids never collide with META_KEY
            e = events.get(i)
            if e is not None:
                ev = e[0]
                changes[key] = dumps(["e", e[2], e[1], ev.ts, ev.features, ev.served_version, ev.prediction])
                continue
            lb = labels.get(i)
            if lb is not None:
                lab = lb[0]
                changes[key] = dumps(["l", lb[2], lb[1], lab.ts, lab.label])
                continue
            d = done.get(i)
            if d is None:
                changes[key] = None
            elif d[2] is None:
                changes[key] = dumps(["d", d[0], d[1]])
            else:
                ev = d[2]
                changes[key] = dumps(["d", d[0], d[1], d[3], ev.features, ev.served_version, ev.prediction])
        self._dirty = set()
        meta = (self._max_ts, self._idle_wm, self._seq)
        if meta != self._drained_meta:
            changes[META_KEY] = dumps({"max_ts": _enc_float(meta[0]), "idle_watermark": _enc_float(meta[1]),
                                       "seq": meta[2]})
            self._drained_meta = meta
        return changes

    @classmethod
    def restore(cls, partition: int, spec: JoinSpec, entries: Iterable[tuple[str, bytes | None]], *,
                clock: Callable[[], float] = time.monotonic) -> PartitionJoiner:
        """A joiner rebuilt from changelog entries (the latest value per key wins; ``None``
        deletes). Raises :class:`~ct_stream.errors.CodecError` for a value that does not
        decode."""
        latest: dict[str, bytes | None] = {}
        for key, value in entries:
            latest[key] = value
        j = cls(partition, spec, clock=clock)
        delay = j._delay
        max_seq = -1
        for key, value in latest.items():
            if value is None:
                continue
            try:
                v = orjson.loads(value)
                if key == META_KEY:
                    j._max_ts = _dec_float(v["max_ts"])
                    j._idle_wm = _dec_float(v["idle_watermark"])
                    j._seq = int(v["seq"])
                    continue
                i = key[1:] if key.startswith("\x00") else key
                tag = v[0]
                if tag == "d" and v[1] in _DONE_STATES:
                    state, event_ts = v[1], float(v[2])
                    if state == _EXPIRED:
                        j._remember(i, (state, event_ts, Event(i, event_ts, v[4], v[5], v[6]), int(v[3])))
                    else:
                        j._remember(i, (state, event_ts, None, None))
                    continue
                seq = int(v[1])
                if tag == "e":
                    ev = Event(i, float(v[3]), v[4], v[5], v[6])
                    j._events[i] = (ev, int(v[2]), seq)
                    j._heap.append((ev.ts + delay, seq, i, "event"))
                elif tag == "l":
                    lab = Label(i, float(v[3]), v[4])
                    j._labels[i] = (lab, int(v[2]), seq)
                    j._heap.append((lab.ts + delay, seq, i, "label"))
                else:
                    raise ValueError(f"unknown entry {v[:3]!r}")
                max_seq = max(max_seq, seq)
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, IndexError) as e:
                raise CodecError(f"joiner state, partition {partition}, key {key!r}: {e}") from e
        j._seq = max(j._seq, max_seq + 1)
        j._wm = max(j._max_ts - j._grace, j._idle_wm)
        heapq.heapify(j._heap)
        j._drained_meta = (j._max_ts, j._idle_wm, j._seq)
        return j


def _enc_float(x: float) -> float | None:
    return None if x == _NEG_INF else x


def _dec_float(x: Any) -> float:
    return _NEG_INF if x is None else float(x)


class JoinerGroup:
    """The partition joiners of one worker, with the ``max_pending`` bound over all of them.

    After every :meth:`process` call, while pending events + labels exceed
    ``spec.max_pending``, the entry with the smallest deadline across the partitions
    expires early (ties: the lower partition).
    """

    def __init__(self, spec: JoinSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        _check_spec(spec)
        self.spec = spec
        self._clock = clock
        self.max_pending: int = spec.max_pending
        self.partitions: dict[int, PartitionJoiner] = {}
        self._retired: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))

    def add_partition(self, joiner: PartitionJoiner) -> None:
        """Take over ``joiner`` (a fresh or restored partition); its partition must be new here."""
        if joiner.partition in self.partitions:
            raise CtStreamError(f"partition {joiner.partition} is already in this joiner group")
        self.partitions[joiner.partition] = joiner

    def remove_partition(self, p: int) -> PartitionJoiner | None:
        """Give up partition ``p``; return its joiner (``None`` if it was not here). Its
        counts stay in :attr:`counts`."""
        joiner = self.partitions.pop(p, None)
        if joiner is not None:
            self._retired.update(joiner.counts)
        return joiner

    @property
    def pending(self) -> int:
        """Pending events + labels over all partitions."""
        return sum(j.pending for j in self.partitions.values())

    @property
    def counts(self) -> Counter[str]:
        """The counters of every partition this group has held, summed (a new ``Counter``);
        they only grow, also across ``remove_partition``."""
        total = Counter(self._retired)
        for j in self.partitions.values():
            total.update(j.counts)
        return total

    def process(self, partition: int, inputs: Sequence[Input]) -> JoinOutput:
        """Join ``inputs`` on ``partition``, then enforce ``max_pending``."""
        joiner = self.partitions.get(partition)
        if joiner is None:
            raise CtStreamError(f"partition {partition} is not assigned to this joiner group")
        out = joiner.process(inputs)
        self._enforce_capacity(out)
        return out

    def tick(self, now: float | None = None) -> JoinOutput:
        """Tick every partition (idle watermark advance) with the same ``now``."""
        if now is None:
            now = self._clock()
        out = JoinOutput()
        for p in sorted(self.partitions):
            out.extend(self.partitions[p].tick(now))
        return out

    def _enforce_capacity(self, out: JoinOutput) -> None:
        excess = self.pending - self.max_pending
        if excess <= 0:
            return
        oldest = []
        for p, j in self.partitions.items():
            d = j.oldest_deadline()
            if d is not None:
                oldest.append((d, p))
        heapq.heapify(oldest)
        while excess > 0 and oldest:
            _, p = heapq.heappop(oldest)
            j = self.partitions[p]
            out.extend(j.expire_oldest(1))
            excess -= 1
            d = j.oldest_deadline()
            if d is not None:
                heapq.heappush(oldest, (d, p))
