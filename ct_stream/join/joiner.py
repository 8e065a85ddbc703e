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
    drain, one JSON-able value per id (``None`` for an id the joiner no longer holds)
    plus :data:`META_KEY` (a dict). Ids forgotten at the horizon are the exception: that
    follows from the watermark, so it is not logged, and ``restore`` forgets them again
    from the restored watermark. :meth:`PartitionJoiner.snapshot` returns the whole
    state in the same form (without touching the change log).
    :meth:`PartitionJoiner.restore` rebuilds a joiner from such entries, the latest
    value per key winning (a snapshot followed by the drains taken after it, or all
    drains since the start); the restored joiner produces exactly the outputs the
    original would have produced. Counters and ``label_delays`` are metrics and start
    from zero; ``last_arrival`` is set to ``clock()``. Values are JSON arrays:
    ``["e", seq, offset, ts, features, served_version, prediction]`` (pending event),
    ``["l", seq, offset, ts, label]`` (pending label), ``["d", state, event_ts]``
    (done: ``joined``, ``corrected``, ``dropped``, ``dlq``) or ``["d", "expired",
    event_ts, offset, features, served_version, prediction]`` (an expired negative).
    ``features`` holds the values in the order of the meta entry's ``names`` (the
    feature names the joiner learnt from its first event): the base64 text of their
    little-endian float64s when every value is a finite float, else a list; or a dict
    for an event with other names. The meta entry is ``{"max_ts", "idle_watermark", "seq", "names"}``.
    ``seq`` only orders pending entries (it breaks deadline ties). Deadlines and
    horizons are recomputed from the timestamps with the spec given to ``restore``.
    The encoding and the Kafka record layout are :mod:`ct_stream.join.changelog`'s.

:class:`NativePartitionJoiner` follows the same rules with its state in Rust (the
native data path, docs/native.md); the worker uses it when the module is built
(:func:`partition_joiner_class`), and the tests compare the two on the same inputs.

The module is pure: no Kafka, no I/O, no threads, no global state; time only through
the injected ``clock``.
"""

from __future__ import annotations

import base64
import bisect
import functools
import heapq
import math
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, NamedTuple, Sequence

import orjson

from ct_stream.errors import CodecError, CtStreamError, TopologyError
from ct_stream.join.changelog import PackedPairs, pack_pairs
from ct_stream.native import module as _native
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
    "NativePartitionJoiner",
    "partition_joiner_class",
    "COUNTER_KEYS",
    "META_KEY",
]

META_KEY = "\x00meta"
"""The changelog key of a partition's watermark state (``max_ts``, idle watermark,
sequence counter). An id that starts with ``"\\x00"`` is stored under ``"\\x00" + id``,
so no id can collide with it."""

COUNTER_KEYS: tuple[str, ...] = (
    "events", "labels", "joined", "expired", "expired_dropped", "expired_dlq", "corrections",
    "duplicate_events", "duplicate_labels", "late", "unknown_id", "capacity_expired", "forgotten_early",
)
"""The keys of :attr:`PartitionJoiner.counts` (all present from the start, at 0)."""

_NEG_INF = -math.inf
_INF = math.inf

# Done-memory states.
_JOINED = "joined"
_EXPIRED = "expired"      # expired as a negative: may still get one correction
_CORRECTED = "corrected"
_DROPPED = "dropped"
_DEAD_LETTERED = "dlq"
_DONE_STATES = frozenset((_JOINED, _EXPIRED, _CORRECTED, _DROPPED, _DEAD_LETTERED))

# In an event entry in place of the feature values: the event's feature names differ from
# the joiner's, so the entry keeps the features dict itself (see PartitionJoiner).
_OWN_NAMES = object()


def _event_codec(names: tuple[str, ...]) -> tuple[Callable[..., tuple[Any, ...]], Callable[[tuple[Any, ...]], dict[str, Any]]]:
    """``(pack, unpack)`` for event entries with the feature ``names`` (str): ``pack(id, ts,
    offset, served_version, prediction, features)`` is the entry (``KeyError`` when a name
    is missing) and ``unpack(entry)`` its features dict. Generated code (the names are
    ``repr``'d literals): about 3x faster than ``dict(zip(names, entry[5:]))``. With the
    native data path, ``pack`` is ``ct_stream._native.event_entry``, which gives the same
    tuple and leaves it out of the cyclic garbage collector when its values are atomic
    (as CPython's collector does to such a tuple at its first collection)."""
    put = ", ".join(f"{n!r}: e[{5 + k}]" for k, n in enumerate(names))
    unpack = eval(f"lambda e: {{{put}}}")  # noqa: S307
    if _native is not None:  # the same entries, made natively and kept out of the cyclic collector
        return functools.partial(_native.event_entry, names), unpack
    got = "".join(f"f[{n!r}], " for n in names)
    pack = eval(f"lambda i, ts, offset, sv, pred, f: (i, ts, offset, sv, pred, {got})")  # noqa: S307
    return pack, unpack


class Input(NamedTuple):
    """One input record: its kind, the decoded record, its offset in its own topic, and
    an optional ``source`` the caller gets back on a dead letter made from this input
    (the runtime passes the Kafka message, so a late record is dead-lettered with its
    original bytes). Any 4-tuple in this order will do."""

    kind: Literal["event", "label"]
    record: Event | Label
    offset: int
    source: Any = None


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

    @classmethod
    def from_row(cls, row: ExampleRow) -> Example:
        """The example of a row of :attr:`JoinOutput.rows`."""
        e, names, label_ts, label, outcome, partition = row
        features = e[6] if len(e) == 7 and e[5] is _OWN_NAMES else dict(zip(names, e[5:]))  # type: ignore[arg-type]
        return cls(e[0], e[1], label_ts, label, outcome, e[3], e[4], partition, e[2], features)

    def row(self) -> ExampleRow:
        """This example as a row of :attr:`JoinOutput.rows` (``Example.from_row(x.row()) == x``)."""
        entry = (self.id, self.event_ts, self.source_offset, self.served_version, self.prediction, _OWN_NAMES,
                 self.features)
        return entry, None, self.label_ts, self.label, self.outcome, self.source_partition


ExampleRow = tuple[tuple[Any, ...], "tuple[str, ...] | None", "float | None", Any, str, int]
"""An example as the joiner emits it: ``(entry, names, label_ts, label, outcome,
partition)``, where ``entry`` is the event's pending entry (``(id, ts, offset,
served_version, prediction, *feature values)``, the values in the order of ``names``;
or ``(..., prediction, <own-names marker>, features dict)``). No object or features dict
per example: :func:`ct_stream.join.arrow.rows_to_arrow` turns rows into Arrow columns
directly, :meth:`Example.from_row` into an :class:`Example`."""


@dataclass(slots=True)
class DeadLetter:
    """A record the joiner sends to the dead-letter topic: which record (kind, partition,
    offset in its own topic), why, and a short message. ``record`` is the decoded record
    itself, for a runtime that no longer holds the original bytes (an event that
    expires under ``dlq`` arrived in an earlier batch); ``source`` is the input's
    ``source`` when the dead letter comes from an input of the same call (``late``)."""

    kind: Literal["event", "label"]
    partition: int
    offset: int
    reason: Reason
    detail: str
    record: Event | Label | None = field(default=None, repr=False, compare=False)
    source: Any = field(default=None, repr=False, compare=False)


@dataclass
class JoinOutput:
    """What one call produced: examples (as :data:`ExampleRow` rows) and dead letters, in
    the order they happened. :attr:`examples` builds the :class:`Example` objects."""

    rows: list[ExampleRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def examples(self) -> list[Example]:
        """The rows as :class:`Example` objects (built on each access)."""
        return [Example.from_row(r) for r in self.rows]

    def extend(self, other: JoinOutput) -> None:
        """Append ``other``'s examples and dead letters to this output."""
        self.rows.extend(other.rows)
        self.dead_letters.extend(other.dead_letters)


def _late_letter(kind: str, partition: int, offset: int, rec: Event | Label, source: Any, wm: float,
                 max_ts: float, grace: float) -> DeadLetter:
    """The dead letter of a record behind the watermark (step 1)."""
    return DeadLetter(kind, partition, offset, Reason.LATE,  # type: ignore[arg-type]
                      f"{kind} {rec.id!r}: ts {rec.ts!r} is behind the partition watermark {wm!r} "
                      f"(newest ts {max_ts!r}, grace {grace!r}s)", rec, source)


def _expiry_letter(e: tuple[Any, ...], event: bool, partition: int, delay: float, capacity: bool,
                   features: Callable[[tuple[Any, ...]], dict[str, Any]]) -> DeadLetter:
    """The dead letter of pending entry ``e`` expired (step 4, or early for ``capacity``):
    an event under the ``dlq`` policy, or a label whose event never came."""
    why = "max_pending reached: expired early" if capacity else f"no match within max_label_delay {delay!r}s"
    if event:
        return DeadLetter("event", partition, e[2], Reason.EXPIRED, f"event {e[0]!r}: no label; {why}",
                          Event(e[0], e[1], features(e), e[3], e[4]))
    return DeadLetter("label", partition, e[2], Reason.UNKNOWN_ID, f"label {e[0]!r}: no event; {why}",
                      Label(e[0], e[1], e[3]))


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

    Memory: a pending record is one flat tuple (an *entry*), shared by the id map, the
    deadline wheel and the change log; the decoded :class:`Event` and its features dict
    are not kept. An event entry is ``(id, ts, offset, served_version, prediction,
    *feature values)``, the values in the order of the joiner's feature names (those of
    the first event; an event with other names keeps its dict:
    ``(..., prediction, _OWN_NAMES, features)``); the features dict of an example is
    rebuilt when it is emitted. A label entry is ``(id, ts, offset, label)``.
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
        # Arrival sequence number of the next pending entry (events and labels).
        self._seq = 0
        # The feature names of event entries (see the class docstring), set by the first
        # event, and their codec (_event_codec).
        self._names: tuple[str, ...] | None = None
        self._pack: Callable[..., tuple[Any, ...]] | None = None
        self._unpack: Callable[[tuple[Any, ...]], dict[str, Any]] | None = None
        # id -> entry; an id is in at most one of the three maps.
        self._events: dict[str, tuple[Any, ...]] = {}
        self._labels: dict[str, tuple[Any, ...]] = {}
        # id -> its event's ts for a joined id (the most common: no tuple, nothing for the
        # garbage collector), else (state, event_ts, event entry or None); the event entry
        # is kept only for an expired negative (state _EXPIRED), to build a correction.
        self._done: dict[str, float | tuple[str, float, tuple[Any, ...] | None]] = {}
        # The deadline wheel: pending entries by deadline (ts + max_label_delay), in time
        # buckets of max_label_delay / 8, each bucket in arrival order; bucket
        # k = floor(deadline * _scale) (monotone in the deadline, so equal deadlines
        # share a bucket). The front holds every entry of the buckets <= _front_k,
        # sorted by (deadline, arrival) from _front_pos on (a stable sort of a bucket
        # keeps arrival order among equal deadlines: no sequence number is stored); the
        # later buckets wait in _wheel, their keys in the heap _wheel_keys. Entries are
        # deleted lazily: one no longer held by _events/_labels (joined) is stale.
        self._scale = 8 / self._delay
        self._wheel: dict[int, list[tuple[Any, ...]]] = {}
        self._wheel_keys: list[int] = []
        self._front: list[tuple[Any, ...]] = []
        self._front_pos = 0
        self._front_k: float = _NEG_INF
        self._stale = 0
        # process() handles the common cases inline (False: every record through _record)
        self._fast = True
        # The done memory is forgotten logically (an entry with event_ts + horizon below
        # the watermark is treated as absent) and cleaned physically by time bucket:
        # bucket k holds the ids whose forget time is in [k * width, (k + 1) * width);
        # it is emptied once (k + 1) * width < watermark. Cheaper than a heap entry per id.
        self._bucket_width = self._delay / 8
        self._buckets: dict[int, list[str]] = {}
        self._bucket_heap: list[int] = []
        # The change log since the last drain, in order: an id whose state changed, or
        # the entry of a new pending record (its sequence number is _log_seq + the number
        # of entries before it in the log).
        self._log: list[str | tuple[Any, ...]] = []
        self._log_seq = 0
        self._drained_meta: tuple[float, float, int, tuple[str, ...] | None] = (_NEG_INF, _NEG_INF, 0, None)
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
        """Join ``inputs`` (in arrival order) and return what they produced.

        The loop handles the common cases inline (the *fast path*): an event whose id the
        joiner does not hold, with the joiner's feature names, waits; a label whose event
        is pending joins it. Every other record goes through :meth:`_record` (the general
        path, which handles every case and is the reference: ``_fast = False`` sends every
        record there, and the tests check both give the same outputs and state). Step 4
        runs only when the watermark passes :meth:`_due`.
        """
        out = JoinOutput()
        if not inputs:
            return out
        self._last_arrival = self._clock()
        examples = out.rows
        names = self._names
        events, labels, done = self._events, self._labels, self._done
        log = self._log.append
        wheel, buckets = self._wheel, self._buckets
        delays = self._label_delays
        n_delays = len(delays)
        delay, grace, horizon, partition, width = self._delay, self._grace, self._horizon, self.partition, self._bucket_width
        scale, floor = self._scale, math.floor
        wm, max_ts = self._wm, self._max_ts
        due = self._due()
        pack, n_names = self._pack, len(self._names or ())
        fast = self._fast and pack is not None
        general = self._record
        # step 4's common case inline: due events at the front expiring as negatives
        front, expire_inline = self._front, self._fast and self._policy == "negative"
        default_label, n_expired = self._default_label, 0
        # the wheel bucket (deadline bucket) and the done-memory bucket the last new entry
        # went to: consecutive records mostly share them (valid until the next _expire)
        wheel_k: int | None = None
        wheel_bucket: list[tuple[Any, ...]] = []
        done_k: int | None = None
        done_bucket: list[str] = []
        n_events = n_added = 0
        for kind, rec, offset, source in inputs:
            ts = rec.ts
            # 1. late
            if ts < wm:
                if kind == "event":
                    n_events += 1
                elif kind != "label":
                    raise CtStreamError(f"Input.kind must be 'event' or 'label', got {kind!r}")
                self._late(kind, rec, offset, out, source)
                continue
            # 3. the record, before step 2 here: it only needs the watermark from before
            # it (done entries with event_ts + horizon < wm are forgotten: step 4 of the
            # previous record would have forgotten them), and a record of an unknown
            # kind raises before it moves anything
            i = rec.id
            if kind == "event":
                n_events += 1
                feats = rec.features  # type: ignore[union-attr]
                if not fast or i in events or i in labels or i in done or len(feats) != n_names:
                    if general(kind, rec, offset, ts, wm, out):
                        pack, names, n_names = self._pack, self._names, len(self._names or ())
                        fast = self._fast and pack is not None
                    due = self._due()
                else:  # a new event: it waits (== _record's case, inline)
                    try:
                        entry = pack(i, ts, offset, rec.served_version, rec.prediction, feats)  # type: ignore[misc, union-attr]
                    except KeyError:
                        entry = (i, ts, offset, rec.served_version, rec.prediction, _OWN_NAMES, feats)  # type: ignore[union-attr]
                    events[i] = entry
                    n_added += 1
                    log(entry)
                    k = floor((ts + delay) * scale)
                    if k == wheel_k:
                        wheel_bucket.append(entry)
                    else:
                        wheel_k, wheel_bucket = self._schedule(entry, k)  # type: ignore[assignment]
                        due = self._due()
            elif kind == "label":
                pe = events.pop(i, None) if fast else None
                if pe is None:
                    general(kind, rec, offset, ts, wm, out)
                    due = self._due()
                else:  # its event is pending: joined (== _record's case, inline)
                    ev_ts = pe[1]
                    examples.append((pe, names, ts, rec.label, "joined", partition))  # type: ignore[union-attr]
                    delays.append(ts - ev_ts)
                    done[i] = ev_ts  # == self._remember(i, _JOINED, ev_ts)
                    k = int((ev_ts + horizon) // width)
                    if k == done_k:
                        done_bucket.append(i)
                    else:
                        done_bucket = buckets.get(k)  # type: ignore[assignment]
                        if done_bucket is None:
                            self._bucket(i, k)
                            done_bucket = buckets[k]
                            due = self._due()
                        else:
                            done_bucket.append(i)
                        done_k = k
                    log(i)
            else:
                raise CtStreamError(f"Input.kind must be 'event' or 'label', got {kind!r}")
            # 2. max_ts and the watermark
            if ts > max_ts:
                self._max_ts = max_ts = ts
                if ts - grace > wm:
                    wm = self._wm = ts - grace
            # 4. expiry, when the watermark passed the first deadline or done-memory
            # bucket that may be due (a stale entry at the front only costs an early look)
            if wm > due:
                if expire_inline:  # == _expire's loop for the due live events at the front
                    pos = start = self._front_pos
                    n_front = len(front)
                    while pos < n_front:
                        e = front[pos]
                        ets = e[1]
                        if not ets + delay < wm:
                            break
                        ei = e[0]
                        if events.get(ei) is not e:
                            if labels.get(ei) is e:
                                break  # a label without its event: _expire dead-letters it
                            self._stale -= 1  # stale: joined since
                            pos += 1
                            continue
                        pos += 1
                        del events[ei]
                        n_expired += 1
                        examples.append((e, names, None, default_label, "expired", partition))
                        done[ei] = (_EXPIRED, ets, e)  # == self._remember(ei, _EXPIRED, ets, e)
                        k = int((ets + horizon) // width)
                        bucket = buckets.get(k)
                        if bucket is None:
                            self._bucket(ei, k)
                        else:
                            bucket.append(ei)
                        log(ei)
                    if pos != start:
                        self._front_pos = pos
                        due = self._due()
                if wm > due:
                    self._expire(out)
                    due = self._due()
                elif self._front_pos > 1024:
                    self._trim_front()  # == what _expire does last (the front's head stays)
                if wheel_k is not None and wheel_k <= self._front_k:  # its bucket went to the front
                    wheel_k = None
                if done_k is not None and buckets.get(done_k) is not done_bucket:  # forgotten
                    done_k = None
        n_joined = len(delays) - n_delays  # one label delay per joined example
        self._seq += n_added
        self._stale += n_joined
        counts = self.counts
        counts["events"] += n_events
        counts["labels"] += len(inputs) - n_events
        counts["joined"] += n_joined
        counts["expired"] += n_expired
        if self._stale > 1024 and self._stale > self.pending:
            self._compact()
        return out

    def _record(self, kind: str, rec: Event | Label, offset: int, ts: float, forget_wm: float,
                out: JoinOutput) -> bool:
        """Step 3 for one record that is not late (the general path of :meth:`process`):
        ``forget_wm`` is the watermark before it (step 3 does not depend on step 2). Counts duplicates and corrections itself; joins are counted by ``process``
        (one label delay each). Returns whether it learnt the feature names."""
        i = rec.id
        events, labels, done = self._events, self._labels, self._done
        d = done.get(i)
        # in the done memory, not forgotten
        known = d is not None and (d[1] if type(d) is tuple else d) + self._horizon >= forget_wm
        learnt = False
        if kind == "event":
            if i in events or known:
                self.counts["duplicate_events"] += 1
                return False
            if d is not None:  # past the horizon: forgotten, the id is new again
                del done[i]
            pl = labels.pop(i, None)
            if pl is None:
                feats = rec.features  # type: ignore[union-attr]
                if self._pack is None:
                    self._learn_names(feats)
                    learnt = True
                e = self._event_entry(i, ts, offset, feats, rec.served_version, rec.prediction)  # type: ignore[union-attr]
                events[i] = e
                self._add_pending(e)
            else:
                e = (i, ts, offset, rec.served_version, rec.prediction, _OWN_NAMES, rec.features)  # type: ignore[union-attr]
                out.rows.append((e, None, pl[1], pl[3], "joined", self.partition))
                self._label_delays.append(pl[1] - ts)
                self._remember(i, _JOINED, ts)
                self._log.append(i)
            return learnt
        e = events.pop(i, None)
        if e is not None:
            ev_ts = e[1]
            out.rows.append((e, self._names, ts, rec.label, "joined", self.partition))  # type: ignore[union-attr]
            self._label_delays.append(ts - ev_ts)
            self._remember(i, _JOINED, ev_ts)
            self._log.append(i)
        elif known:
            if type(d) is tuple and d[0] == _EXPIRED:
                e = d[2]  # type: ignore[index]
                out.rows.append((e, self._names, ts, rec.label, "correction", self.partition))  # type: ignore[union-attr, index]
                self.counts["corrections"] += 1
                done[i] = (_CORRECTED, d[1], None)  # type: ignore[index]
                self._log.append(i)
            else:
                self.counts["duplicate_labels"] += 1
        elif i in labels:
            self.counts["duplicate_labels"] += 1
        else:
            if d is not None:  # past the horizon: forgotten, the id is new again
                del done[i]
            e = (i, ts, offset, rec.label)  # type: ignore[union-attr]
            labels[i] = e
            self._add_pending(e)
        return False

    def _due(self) -> float:
        """A watermark below which step 4 has nothing to do: ``process`` runs
        :meth:`_expire` once the watermark is above it. It is the first front entry's
        deadline (exactly: that entry expires when the watermark is above it), or, with
        the front used up, the start of the next wheel bucket, and the end of the oldest
        done-memory bucket, whichever is smaller. The last two are lowered by a relative
        1e-12 (far more than the rounding of ``_peek``'s and ``_forget_past_horizon``'s
        own tests), so an early look is possible but a late one is not. Valid until the
        front, the wheel's first key or the done buckets' first key changes."""
        due = math.inf
        pos, front = self._front_pos, self._front
        if pos < len(front):
            due = front[pos][1] + self._delay
        elif self._wheel_keys:
            x = self._wheel_keys[0] / self._scale
            due = x - abs(x) * 1e-12 - 1e-12
        if self._bucket_heap:
            x = (self._bucket_heap[0] + 1) * self._bucket_width
            x = x - abs(x) * 1e-12 - 1e-12
            if x < due:
                due = x
        return due

    def _schedule(self, e: tuple[Any, ...], k: int) -> tuple[int | None, list[tuple[Any, ...]] | None]:
        """Put the new pending entry ``e`` (already in its map and the change log) in the
        wheel bucket ``k`` (its deadline's) or the front; return ``(k, bucket)`` when it
        went to a wheel bucket, else ``(None, None)``."""
        if k > self._front_k:
            bucket = self._wheel.get(k)
            if bucket is None:
                bucket = self._wheel[k] = [e]
                heapq.heappush(self._wheel_keys, k)
            else:
                bucket.append(e)
            return k, bucket
        self._to_front(e)
        return None, None

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
        e = self._peek()
        return None if e is None else e[1] + self._delay

    def expire_oldest(self, n: int) -> JoinOutput:
        """Expire up to ``n`` pending entries early, smallest deadline first (for
        capacity): events under the policy, labels as ``unknown_id``; each is also
        counted in ``capacity_expired``."""
        out = JoinOutput()
        while n > 0:
            e = self._peek()
            if e is None:
                break
            self._front_pos += 1
            self._expire_entry(e, out, True)
            self.counts["capacity_expired"] += 1
            n -= 1
        self._trim_front()
        return out

    def oldest_memory(self) -> int | None:
        """The time bucket of the done-memory ids forgotten first (``None`` when empty)."""
        return self._bucket_heap[0] if self._bucket_heap else None

    def forget_oldest(self) -> int:
        """Forget the done-memory ids of the oldest time bucket now, before their horizon
        (for ``max_remembered``); return how many. A forgotten id is new again: a later
        duplicate of it is joined anew, a late label for its expired negative waits as a
        label instead of making a correction. Counted in ``forgotten_early``."""
        if not self._bucket_heap:
            return 0
        k = heapq.heappop(self._bucket_heap)
        done, horizon, width, log = self._done, self._horizon, self._bucket_width, self._log
        n = 0
        for i in self._buckets.pop(k):
            d = done.get(i)
            if d is not None and int(((d[1] if type(d) is tuple else d) + horizon) // width) <= k:
                del done[i]
                log.append(i)
                n += 1
        self.counts["forgotten_early"] += n
        return n

    # Internals ---------------------------------------------------------------------
    def _features(self, e: tuple[Any, ...]) -> dict[str, Any]:
        """The features dict of event entry ``e`` (a new dict unless the entry kept its own)."""
        if len(e) == 7 and e[5] is _OWN_NAMES:
            return e[6]  # type: ignore[no-any-return]
        return self._unpack(e)  # type: ignore[misc]

    def _learn_names(self, features: dict[str, Any]) -> None:
        """Take the feature names of ``features`` as the joiner's (if they are all str)."""
        names = tuple(features)
        if self._pack is None and all(type(n) is str for n in names):
            self._names = names
            self._pack, self._unpack = _event_codec(names)

    def _event_entry(self, i: str, ts: float, offset: int, features: dict[str, Any],
                     served_version: int | None, prediction: float | str | None) -> tuple[Any, ...]:
        """The entry of a pending event (what :meth:`process` builds inline)."""
        if self._pack is None:
            self._learn_names(features)
        if self._pack is not None and len(features) == len(self._names):  # type: ignore[arg-type]
            try:
                return self._pack(i, ts, offset, served_version, prediction, features)
            except KeyError:
                pass
        return (i, ts, offset, served_version, prediction, _OWN_NAMES, features)

    def _add_pending(self, e: tuple[Any, ...]) -> None:
        """Schedule the new pending entry ``e`` (the latest arrival; already in its map)."""
        self._seq += 1
        self._log.append(e)
        self._schedule(e, math.floor((e[1] + self._delay) * self._scale))

    def _to_front(self, e: tuple[Any, ...]) -> None:
        """Put the new entry ``e`` (the latest arrival) in its place in the front: after
        every entry with a deadline <= its own."""
        front, delay = self._front, self._delay
        deadline = e[1] + delay
        if self._front_pos >= len(front) or front[-1][1] + delay <= deadline:
            front.append(e)
        else:
            bisect.insort_right(front, e, lo=self._front_pos, key=lambda x: x[1] + delay)

    def _peek(self, wm: float | None = None) -> tuple[Any, ...] | None:
        """The live pending entry with the smallest (deadline, arrival), or ``None``;
        stale entries before it are dropped. When the front is used up the next wheel
        bucket moves there; with ``wm``, only a bucket ``k <= floor(wm * scale)`` (i.e.
        ``k <= wm * scale``): a later bucket holds no deadline below ``wm``."""
        front, events, labels = self._front, self._events, self._labels
        pos = self._front_pos
        while True:
            n = len(front)
            while pos < n:
                e = front[pos]
                i = e[0]
                if events.get(i) is e or labels.get(i) is e:
                    self._front_pos = pos
                    return e
                pos += 1
                self._stale -= 1
            front.clear()
            pos = self._front_pos = 0
            keys = self._wheel_keys
            if not keys or (wm is not None and keys[0] > wm * self._scale):
                return None
            k = heapq.heappop(keys)
            bucket = self._wheel.pop(k)
            delay = self._delay
            bucket.sort(key=lambda x: x[1] + delay)  # stable: arrival order among equal deadlines
            front.extend(bucket)
            self._front_k = k

    def _trim_front(self) -> None:
        """Release the front's consumed slots once they are most of it."""
        pos = self._front_pos
        if pos > 1024 and 2 * pos > len(self._front):
            del self._front[:pos]
            self._front_pos = 0

    def _late(self, kind: str, rec: Event | Label, offset: int, out: JoinOutput, source: Any) -> None:
        self.counts["late"] += 1
        out.dead_letters.append(_late_letter(kind, self.partition, offset, rec, source, self._wm, self._max_ts,
                                             self._grace))

    def _expire(self, out: JoinOutput) -> None:
        """Step 4: expire pending entries, then forget done entries, with deadline < watermark."""
        wm = self._wm
        if wm == _NEG_INF:
            return
        delay, front, events, labels = self._delay, self._front, self._events, self._labels
        expire_entry = self._expire_entry
        while True:
            pos = self._front_pos
            if pos < len(front):
                e = front[pos]
                if not e[1] + delay < wm:  # the front is sorted: nothing after e is due either
                    break
                self._front_pos = pos + 1
                if events.get(e[0]) is e or labels.get(e[0]) is e:
                    expire_entry(e, out, False)
                else:
                    self._stale -= 1
            elif self._peek(wm) is None:  # moves the next due wheel bucket to the front
                break
        if self._front_pos > 1024:  # == self._trim_front(), without the call in the common case
            self._trim_front()
        bucket_heap = self._bucket_heap
        if bucket_heap and bucket_heap[0] < wm / self._bucket_width - 1:  # == _forget_past_horizon's test
            self._forget_past_horizon(wm)

    def _forget_past_horizon(self, wm: float) -> None:
        """Forget the done entries of the buckets past the horizon at watermark ``wm``.

        Not written to the change log: which entries are forgotten follows from the
        watermark alone (and an entry past the horizon counts as forgotten even while
        still held), so :meth:`restore` forgets the same ones from the restored
        watermark.
        """
        bucket_heap = self._bucket_heap
        clean_below = self._clean_below(wm)
        if bucket_heap and bucket_heap[0] < clean_below:
            done, horizon, width = self._done, self._horizon, self._bucket_width
            pop = heapq.heappop
            while bucket_heap and bucket_heap[0] < clean_below:
                k = pop(bucket_heap)
                for i in self._buckets.pop(k):
                    d = done.get(i)
                    if d is None:
                        continue
                    if type(d) is tuple:
                        d = d[1]
                    if d + horizon < wm:
                        del done[i]
                    elif int((d + horizon) // width) <= k:
                        # float rounding at a bucket edge: look again with the next bucket
                        # (an id re-used after it was forgotten is already in its own bucket)
                        self._bucket(i, k + 1)

    def _clean_below(self, wm: float) -> float:
        """Bucket ``k`` is past the horizon when ``k < wm / width - 1``, i.e. ``(k + 1) * width < wm``."""
        return wm / self._bucket_width - 1

    def _remember(self, i: str, state: str, event_ts: float, kept: tuple[Any, ...] | None = None) -> None:
        """Put ``i`` in the done memory (replacing a forgotten entry, if any) with its
        ``state``, its event's ts and, for an expired negative, the event entry."""
        self._done[i] = event_ts if state == _JOINED else (state, event_ts, kept)
        self._bucket(i, int((event_ts + self._horizon) // self._bucket_width))

    def _bucket(self, i: str, k: int) -> None:
        bucket = self._buckets.get(k)
        if bucket is None:
            self._buckets[k] = [i]
            heapq.heappush(self._bucket_heap, k)
        else:
            bucket.append(i)

    def _expire_entry(self, e: tuple[Any, ...], out: JoinOutput, capacity: bool) -> None:
        """Expire the live pending entry ``e`` (already taken off the front); ``capacity``:
        early, at ``max_pending``."""
        i, ts = e[0], e[1]
        counts = self.counts
        self._log.append(i)
        if self._events.get(i) is not e:
            del self._labels[i]
            counts["unknown_id"] += 1
            out.dead_letters.append(_expiry_letter(e, False, self.partition, self._delay, capacity, self._features))
            return
        del self._events[i]
        policy = self._policy
        kept = None
        if policy == "negative":
            counts["expired"] += 1
            out.rows.append((e, self._names, None, self._default_label, "expired", self.partition))
            state, kept = _EXPIRED, e
        elif policy == "drop":
            counts["expired_dropped"] += 1
            state = _DROPPED
        else:
            counts["expired_dlq"] += 1
            out.dead_letters.append(_expiry_letter(e, True, self.partition, self._delay, capacity, self._features))
            state = _DEAD_LETTERED
        self._done[i] = (state, ts, kept)  # == self._remember(...)
        k = int((ts + self._horizon) // self._bucket_width)
        bucket = self._buckets.get(k)
        if bucket is None:
            self._bucket(i, k)
        else:
            bucket.append(i)

    def _compact(self) -> None:
        """Drop the stale entries from the wheel (amortised O(1) per join)."""
        ev, lb = self._events.get, self._labels.get  # an entry is held when its map still points at it
        for bucket in self._wheel.values():
            bucket[:] = [e for e in bucket if ev(e[0]) is e or lb(e[0]) is e]
        self._front[:] = [e for e in self._front[self._front_pos:] if ev(e[0]) is e or lb(e[0]) is e]
        self._front_pos = 0
        self._stale = 0

    # Changelog ---------------------------------------------------------------------
    def drain_changes(self) -> dict[str, Any]:
        """The state changes since the last drain: ``{key: JSON-able value or None}``.

        One entry per changed id (its current state as a list, see the module docstring;
        ``None`` when the joiner no longer holds it, except after forgetting at the
        horizon, which is not logged), plus :data:`META_KEY` (a dict) when
        the watermark state or the sequence counter changed. Drain regularly: the change
        log grows until drained (and holds the entries of records that stopped pending
        since). A value may share objects (a features dict) with the joiner: encode it
        before the joiner runs again, do not change it.
        """
        seq = self._log_seq
        changed: dict[str, int | None] = {}  # id -> sequence number of its latest new pending entry
        tup = tuple
        for c in self._log:
            if type(c) is tup:
                changed[c[0]] = seq
                seq += 1
            elif c not in changed:
                changed[c] = None  # type: ignore[index]
        changes: dict[str, Any] = {}
        events, labels, done = self._events, self._labels, self._done
        # ids never collide with META_KEY: one that starts with "\x00" gets another in front
        # (looked for only when some id holds a "\x00" at all)
        escape = "\x00" in "".join(changed)
        for i, created in changed.items():
            key = "\x00" + i if escape and i[:1] == "\x00" else i
            e = events.get(i)
            if e is not None:  # pending now, so its latest new entry is this one
                changes[key] = ["e", created, e[2], e[1], _feature_state(e), e[3], e[4]]
                continue
            e = labels.get(i)
            if e is not None:
                changes[key] = ["l", created, e[2], e[1], e[3]]
                continue
            d = done.get(i)
            changes[key] = None if d is None else ["d", _JOINED, d] if type(d) is not tup else _done_value(d)
        meta = self._end_drain()
        if meta is not None:
            changes[META_KEY] = meta
        return changes

    def drain_encoded(self, max_bytes: int | None = None) -> dict[str, Any] | list[bytes] | PackedPairs:
        """:meth:`drain_changes` for :meth:`ChangelogWriter.records
        <ct_stream.join.changelog.ChangelogWriter.records>`: with the native data path
        (docs/native.md), each ``[key, value]`` pair encoded as JSON straight from the
        joiner's state, without the lists and dicts of :meth:`drain_changes` in between
        (with ``max_bytes``, packed into the writer's chunks: :class:`PackedPairs`);
        without it (or for a value the native encoder does not take), :meth:`drain_changes`
        itself. The decoded pairs are the same either way."""
        pairs = None
        if _native is not None:
            pairs = _native.encode_changes(self._log, self._log_seq, self._events, self._labels, self._done,
                                           _OWN_NAMES, _JOINED)
        if pairs is None:  # the reference
            return self.drain_changes()
        meta = self._end_drain()
        if meta is not None:
            pairs.append(orjson.dumps((META_KEY, meta)))
        return pairs if max_bytes is None else PackedPairs(pack_pairs(pairs, max_bytes), len(pairs))

    def _end_drain(self) -> dict[str, Any] | None:
        """Start the next change log; the meta entry's value when it changed since the last drain."""
        self._log = []
        self._log_seq = self._seq
        meta = (self._max_ts, self._idle_wm, self._seq, self._names)
        if meta == self._drained_meta:
            return None
        self._drained_meta = meta
        return self._meta_value()

    def snapshot(self) -> dict[str, Any]:
        """The whole state as changelog entries (same keys and values as
        :meth:`drain_changes`): every pending event and label, every done entry still
        held, and :data:`META_KEY`; ``restore(snapshot().items())`` continues exactly as
        this joiner. The change log is not touched.

        A pending entry created since the last drain keeps its sequence number; the
        older ones (whose numbers are not stored) are numbered ``0, 1, ...`` in
        (deadline, arrival) order, which keeps their arrival order among equal
        deadlines and stays below the numbers of the undrained ones. So the drains
        taken after a snapshot apply on top of it. O(state); for compaction, not per
        record.
        """
        events, labels, features = self._events, self._labels, _feature_state
        fresh: dict[str, int] = {}  # id -> sequence number, for live entries not drained yet
        seq = self._log_seq
        for c in self._log:
            if type(c) is tuple:
                if events.get(c[0]) is c or labels.get(c[0]) is c:
                    fresh[c[0]] = seq
                seq += 1
        snap: dict[str, Any] = {}
        rank = 0
        # every live pending entry once, in (deadline, arrival) order
        for e in self._by_deadline():
            i = e[0]
            key = _key(i)
            if events.get(i) is e:
                tag = "e"
            elif labels.get(i) is e:
                tag = "l"
            else:
                continue  # stale (joined or expired since)
            s = fresh.get(i)
            if s is None:
                s, rank = rank, rank + 1
            snap[key] = ["e", s, e[2], e[1], features(e), e[3], e[4]] if tag == "e" else \
                ["l", s, e[2], e[1], e[3]]
        done, tup, joined = self._done, tuple, _JOINED
        escape = "\x00" in "".join(done)  # as in drain_changes
        snap.update({("\x00" + i if escape and i[:1] == "\x00" else i): ["d", joined, d] if type(d) is not tup
                     else _done_value(d) for i, d in done.items()})
        snap[META_KEY] = self._meta_value()
        return snap

    def snapshot_encoded(self, max_bytes: int | None = None) -> dict[str, Any] | list[bytes] | PackedPairs:
        """:meth:`snapshot` for :meth:`ChangelogWriter.records
        <ct_stream.join.changelog.ChangelogWriter.records>`, encoded natively as
        :meth:`drain_encoded` is (or :meth:`snapshot` itself); the same pairs either way."""
        pairs = None
        if _native is not None:
            pairs = _native.encode_snapshot(self._by_deadline(), self._log, self._log_seq,
                                            self._events, self._labels, self._done, _OWN_NAMES, _JOINED)
        if pairs is None:  # the reference
            return self.snapshot()
        pairs.append(orjson.dumps((META_KEY, self._meta_value())))
        return pairs if max_bytes is None else PackedPairs(pack_pairs(pairs, max_bytes), len(pairs))

    def _by_deadline(self) -> list[tuple[Any, ...]]:
        """The wheel's entries (stale ones too) in (deadline, arrival) order: the
        unconsumed front (sorted), then the wheel buckets by key, each in arrival order,
        stably sorted by deadline (equal deadlines share a bucket, in arrival order)."""
        delay = self._delay
        entries = self._front[self._front_pos:]
        for k in sorted(self._wheel):
            entries += sorted(self._wheel[k], key=lambda x: x[1] + delay)
        return entries

    def _meta_value(self) -> dict[str, Any]:
        """The :data:`META_KEY` value: watermark state, sequence counter, feature names."""
        return {"max_ts": _enc_float(self._max_ts), "idle_watermark": _enc_float(self._idle_wm), "seq": self._seq,
                "names": None if self._names is None else list(self._names)}

    @classmethod
    def restore(cls, partition: int, spec: JoinSpec, entries: Iterable[tuple[str, Any]], *,
                clock: Callable[[], float] = time.monotonic) -> PartitionJoiner:
        """A joiner rebuilt from changelog entries as :meth:`drain_changes` and
        :meth:`snapshot` return them (decoded JSON; the latest value per key wins,
        ``None`` deletes). Raises :class:`~ct_stream.errors.CodecError` for a value of the
        wrong shape."""
        j = cls(partition, spec, clock=clock)
        _restore_into(j, partition, entries)
        return j

    # restore()'s steps (the same for NativePartitionJoiner) ----------------------------
    def _restore_pending(self, event: bool, e: tuple[Any, ...]) -> None:
        (self._events if event else self._labels)[e[0]] = e
        self._add_pending(e)

    def _restore_meta(self, max_ts: float, idle_wm: float, seq: int) -> None:
        self._max_ts, self._idle_wm, self._seq = max_ts, idle_wm, seq
        self._log = []
        self._log_seq = self._seq
        self._wm = max(self._max_ts - self._grace, self._idle_wm)
        self._forget_past_horizon(self._wm)  # as the original did at this watermark, unlogged
        self._drained_meta = (self._max_ts, self._idle_wm, self._seq, self._names)


class NativePartitionJoiner:
    """:class:`PartitionJoiner` with its state in Rust (``ct_stream._native.JoinState``,
    docs/native.md): the same rules, outputs, change log, snapshots and restore (the
    tests run both on the same inputs and compare everything they expose), with one map
    from id to its pending or done entry and a deadline queue in place of the Python
    dicts and the wheel. Only with the native data path; :func:`partition_joiner_class`
    picks it when it is there. Ids are ``str`` (what the decoders give).

    >>> from ct_stream.records import Event, Label
    >>> from ct_stream.topology import JoinSpec
    >>> if _native is not None:
    ...     j = NativePartitionJoiner(0, JoinSpec(max_label_delay=10, grace=2, default_label=False),
    ...                               clock=lambda: 0.0)
    ...     out = j.process([Input("event", Event("a", 100.0, {"x": 1.0}), 0),
    ...                      Input("label", Label("a", 103.0, True), 0)])
    ...     print([(x.id, x.outcome, x.label) for x in out.examples])
    ... else:
    ...     print([('a', 'joined', True)])
    [('a', 'joined', True)]
    """

    def __init__(self, partition: int, spec: JoinSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        _check_spec(spec)
        if _native is None:
            raise CtStreamError("NativePartitionJoiner needs ct_stream._native (built with cargo: docs/native.md)")
        self.partition = partition
        self.spec = spec
        self._clock = clock
        self._delay = float(spec.max_label_delay)
        self._grace = float(spec.grace)
        self._idle_timeout = float(spec.idle_timeout)
        self._state = _native.JoinState(partition, self._delay, self._grace, spec.timeout_policy,
                                        spec.default_label, _OWN_NAMES, CtStreamError)
        self._drained_meta: tuple[float, float, int, tuple[str, ...] | None] = (_NEG_INF, _NEG_INF, 0, None)
        self._last_arrival = clock()

    # Views -------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """The partition's watermark (``-inf`` before the first record)."""
        return self._state.watermark  # type: ignore[no-any-return]

    @property
    def max_ts(self) -> float:
        """The largest ``ts`` accepted on this partition (``-inf`` before the first record)."""
        return self._state.max_ts  # type: ignore[no-any-return]

    @property
    def pending_events(self) -> int:
        """Events waiting for their label."""
        return self._state.pending_events  # type: ignore[no-any-return]

    @property
    def pending_labels(self) -> int:
        """Labels waiting for their event."""
        return self._state.pending_labels  # type: ignore[no-any-return]

    @property
    def pending(self) -> int:
        """Pending events + pending labels (what ``max_pending`` bounds)."""
        return self._state.pending_events + self._state.pending_labels  # type: ignore[no-any-return]

    @property
    def remembered(self) -> int:
        """Ids held in the done memory (see :attr:`PartitionJoiner.remembered`)."""
        return self._state.remembered  # type: ignore[no-any-return]

    @property
    def counts(self) -> Counter[str]:
        """The counters (a new ``Counter`` with every key of :data:`COUNTER_KEYS`)."""
        return Counter(dict(zip(COUNTER_KEYS, self._state.counts())))

    @property
    def _names(self) -> tuple[str, ...] | None:
        return self._state.names  # type: ignore[no-any-return]

    def drain_label_delays(self) -> list[float]:
        """``label.ts - event.ts`` of every joined example since the last drain."""
        return self._state.drain_label_delays()  # type: ignore[no-any-return]

    # Processing --------------------------------------------------------------------
    def process(self, inputs: Sequence[Input], entry_names: tuple[str, ...] | None = None) -> JoinOutput:
        """Join ``inputs`` (in arrival order) and return what they produced.

        A record may also be the joiner's entry tuple itself, as the native decoder packs
        it for the worker (``Decoder.items``: ``(id, ts, offset, served_version,
        prediction, *feature values)`` for an event, ``(id, ts, offset, label)`` for a
        label), the feature values in the order of ``entry_names``: then no ``Event``,
        ``Label`` or features dict is made at all. The rules and outputs are the same.
        """
        if not inputs:
            return JoinOutput()
        self._last_arrival = self._clock()
        return self._output(*self._state.process(inputs, entry_names))

    def process_merged(self, merger: Any, entry_names: tuple[str, ...] | None = None
                       ) -> tuple[JoinOutput, int, tuple[int | None, int | None]]:
        """:meth:`process` of what the native ``merger`` (``ct_stream._native.Merger``)
        releases now, taken from its queues in Rust: the parts ``Decoder.items_into``
        queued are read as they are, with no ``(kind, record, offset, message)`` tuple per
        record (made only for the dead letter of a late record). Returns the output, how
        many inputs were taken, and the offsets of the last event and the last label
        among them (``None`` for a kind with none).
        """
        rows, dead, n, (event_offset, label_offset) = self._state.process_merged(merger, entry_names)
        if not n:
            return JoinOutput(), 0, (None, None)
        self._last_arrival = self._clock()
        return self._output(rows, dead), n, (event_offset, label_offset)

    def tick(self, now: float | None = None) -> JoinOutput:
        """Advance the watermark by idle time and expire (:meth:`PartitionJoiner.tick`)."""
        state = self._state
        if state.max_ts == _NEG_INF:
            return JoinOutput()
        if now is None:
            now = self._clock()
        elapsed = now - self._last_arrival
        if elapsed < self._idle_timeout:
            return JoinOutput()
        wm = state.max_ts + elapsed - self._grace
        if wm > state.watermark:
            return self._output(*state.advance_idle(wm))
        return JoinOutput()

    def oldest_deadline(self) -> float | None:
        """The smallest deadline among pending events and labels, or ``None``."""
        return self._state.oldest_deadline()  # type: ignore[no-any-return]

    def expire_oldest(self, n: int) -> JoinOutput:
        """Expire up to ``n`` pending entries early, smallest deadline first (capacity)."""
        return self._output(*self._state.expire_oldest(n))

    def oldest_memory(self) -> int | None:
        """The time bucket of the done-memory ids forgotten first (``None`` when empty)."""
        return self._state.oldest_memory()  # type: ignore[no-any-return]

    def forget_oldest(self) -> int:
        """Forget the oldest time bucket of the done memory now (see :meth:`PartitionJoiner.forget_oldest`)."""
        return self._state.forget_oldest()  # type: ignore[no-any-return]

    def _output(self, rows: list[ExampleRow], dead: list[tuple[Any, ...]]) -> JoinOutput:
        """The :class:`JoinOutput` of the state's rows and dead-letter tuples (see native/src/joinstate.rs)."""
        out = JoinOutput(rows)
        p, letters = self.partition, out.dead_letters
        for d in dead:
            if d[0] == 0:  # late: (0, input, watermark, max_ts)
                kind, rec, offset, source = d[1]
                if not isinstance(rec, (Event, Label)):  # an entry record: a tuple or an EventEntry (see process)
                    rec = Event(rec[0], rec[1], self._features(rec), rec[3], rec[4]) if kind == "event" \
                        else Label(rec[0], rec[1], rec[3])
                letters.append(_late_letter(kind, p, offset, rec, source, d[2], d[3], self._grace))
            else:  # (1, label entry, capacity): no event came; (2, event entry, capacity): dlq
                letters.append(_expiry_letter(d[1], d[0] == 2, p, self._delay, d[2], self._features))
        return out

    def _features(self, e: tuple[Any, ...]) -> dict[str, Any]:
        if len(e) == 7 and e[5] is _OWN_NAMES:
            return e[6]  # type: ignore[no-any-return]
        return dict(zip(self._names or (), e[5:]))

    # Changelog ---------------------------------------------------------------------
    def drain_changes(self) -> dict[str, Any]:
        """The state changes since the last drain (:meth:`PartitionJoiner.drain_changes`)."""
        changes = {_key(i): self._value(raw) for i, raw in self._state.drain_raw()}
        meta = self._end_drain()
        if meta is not None:
            changes[META_KEY] = meta
        return changes

    def drain_encoded(self, max_bytes: int | None = None) -> dict[str, Any] | list[bytes] | PackedPairs:
        """:meth:`drain_changes` as JSON pairs, encoded from the state in Rust (with
        ``max_bytes``, packed into chunks there too: :class:`PackedPairs`), or
        :meth:`drain_changes` itself for a value the native encoder does not take."""
        meta = self._meta_key()
        extra = None if meta == self._drained_meta else orjson.dumps((META_KEY, self._meta_value()))
        got = self._state.drain_encoded(max_bytes, extra)
        if got is None:
            return self.drain_changes()
        self._drained_meta = meta
        return got[0] if max_bytes is None else PackedPairs(*got)

    def snapshot(self) -> dict[str, Any]:
        """The whole state as changelog entries (:meth:`PartitionJoiner.snapshot`)."""
        snap = {_key(i): self._value(raw) for i, raw in self._state.snapshot_raw()}
        snap[META_KEY] = self._meta_value()
        return snap

    def snapshot_encoded(self, max_bytes: int | None = None) -> dict[str, Any] | list[bytes] | PackedPairs:
        """:meth:`snapshot` as JSON pairs, encoded from the state in Rust (with
        ``max_bytes``, packed as :meth:`drain_encoded` packs them)."""
        got = self._state.snapshot_encoded(max_bytes, orjson.dumps((META_KEY, self._meta_value())))
        if got is None:
            return self.snapshot()
        return got[0] if max_bytes is None else PackedPairs(*got)

    @staticmethod
    def _value(raw: tuple[Any, ...] | None) -> list[Any] | None:
        """A changelog value from the state's raw form (see native/src/joinstate.rs)."""
        if raw is None:
            return None
        if raw[0] == "e":
            e = raw[2]
            return ["e", raw[1], e[2], e[1], _feature_state(e), e[3], e[4]]
        if raw[0] == "l":
            e = raw[2]
            return ["l", raw[1], e[2], e[1], e[3]]
        return ["d", _JOINED, raw[2]] if raw[1] == _JOINED else _done_value((raw[1], raw[2], raw[3]))

    def _meta_key(self) -> tuple[float, float, int, tuple[str, ...] | None]:
        """What the meta entry holds: a drain writes it when this changed since the last one."""
        state = self._state
        return state.max_ts, state.idle_watermark, state.seq, state.names

    def _end_drain(self) -> dict[str, Any] | None:
        meta = self._meta_key()
        if meta == self._drained_meta:
            return None
        self._drained_meta = meta
        return self._meta_value()

    def _meta_value(self) -> dict[str, Any]:
        state = self._state
        names = state.names
        return {"max_ts": _enc_float(state.max_ts), "idle_watermark": _enc_float(state.idle_watermark),
                "seq": state.seq, "names": None if names is None else list(names)}

    @classmethod
    def restore(cls, partition: int, spec: JoinSpec, entries: Iterable[tuple[str, Any]], *,
                clock: Callable[[], float] = time.monotonic) -> NativePartitionJoiner:
        """A joiner rebuilt from changelog entries (:meth:`PartitionJoiner.restore`)."""
        j = cls(partition, spec, clock=clock)
        _restore_into(j, partition, entries)
        return j

    # restore()'s steps
    def _learn_names(self, features: dict[str, Any]) -> None:
        self._state.learn_names(features)

    def _event_entry(self, i: str, ts: float, offset: int, features: dict[str, Any],
                     served_version: int | None, prediction: float | str | None) -> tuple[Any, ...]:
        return self._state.event_entry(i, ts, offset, features, served_version, prediction)  # type: ignore[no-any-return]

    def _remember(self, i: str, state: str, event_ts: float, kept: tuple[Any, ...] | None = None) -> None:
        self._state.restore_done(i, state, event_ts, kept)

    def _restore_pending(self, event: bool, e: tuple[Any, ...]) -> None:
        self._state.restore_pending(event, e)

    def _restore_meta(self, max_ts: float, idle_wm: float, seq: int) -> None:
        self._state.restore_meta(max_ts, idle_wm, seq)
        self._drained_meta = self._meta_key()


def _key(i: str) -> str:
    """The changelog key of id ``i`` (one that starts with ``"\\x00"`` gets another in front)."""
    return "\x00" + i if i[:1] == "\x00" else i


def partition_joiner_class() -> type[PartitionJoiner] | type[NativePartitionJoiner]:
    """The partition joiner the runtime uses: :class:`NativePartitionJoiner` with the
    native data path, else :class:`PartitionJoiner` (the same results either way)."""
    return NativePartitionJoiner if _native is not None else PartitionJoiner


def _restore_into(j: PartitionJoiner | NativePartitionJoiner, partition: int,
                  entries: Iterable[tuple[str, Any]]) -> None:
    """Load changelog ``entries`` (latest value per key wins) into the fresh joiner ``j``
    (see :meth:`PartitionJoiner.restore`)."""
    latest: dict[str, Any] = {}
    for key, value in entries:
        latest[key] = value
    pending: list[tuple[int, bool, tuple[Any, ...]]] = []  # (seq, is an event, entry)
    seq_counter = 0
    max_ts = idle_wm = _NEG_INF
    names: tuple[str, ...] | None = None
    meta = latest.get(META_KEY)
    try:
        if meta is not None and meta.get("names") is not None:
            names = tuple(meta["names"])
            if not all(type(n) is str for n in names):
                raise ValueError("feature names are strings")
            j._learn_names(dict.fromkeys(names))
    except (AttributeError, TypeError, ValueError) as e:
        raise CodecError(f"joiner state, partition {partition}, key {META_KEY!r}: {e}") from e

    def feats(x: Any) -> dict[str, Any]:
        if type(x) is dict:
            return x
        if (type(x) is list or type(x) is tuple) and names is not None and len(x) == len(names):
            return dict(zip(names, x))
        if type(x) is str and names:
            return dict(zip(names, _feature_values(x, len(names))))
        raise ValueError(f"features are a dict, a list of {len(names or ())} values in the meta entry's "
                         f"names, or the base64 text of as many float64 values, got {x!r:.80}")

    for key, v in latest.items():
        if v is None:
            continue
        try:
            if key == META_KEY:
                max_ts = _dec_float(v["max_ts"])
                idle_wm = _dec_float(v["idle_watermark"])
                seq_counter = int(v["seq"])
                continue
            i = key[1:] if key.startswith("\x00") else key
            if type(v) is not list:
                raise ValueError(f"an entry is a list, got {type(v).__name__}")
            tag = v[0]
            if tag == "d" and v[1] in _DONE_STATES:
                state, event_ts = v[1], float(v[2])
                if state == _EXPIRED:
                    kept = j._event_entry(i, event_ts, int(v[3]), feats(v[4]), v[5], v[6])
                    j._remember(i, state, event_ts, kept)
                else:
                    j._remember(i, state, event_ts)
                continue
            seq = int(v[1])
            if tag == "e":
                pending.append((seq, True, j._event_entry(i, float(v[3]), int(v[2]), feats(v[4]), v[5], v[6])))
            elif tag == "l":
                pending.append((seq, False, (i, float(v[3]), int(v[2]), v[4])))
            else:
                raise ValueError(f"unknown entry {v[:3]!r}")
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CodecError(f"joiner state, partition {partition}, key {key!r}: {e}") from e
    pending.sort(key=lambda p: p[0])  # arrival order: it breaks deadline ties
    for _, event, e in pending:
        j._restore_pending(event, e)
    max_seq = pending[-1][0] if pending else -1
    j._restore_meta(max_ts, idle_wm, max(seq_counter, max_seq + 1))


def _done_value(d: float | tuple[Any, ...]) -> list[Any]:
    """The changelog value of a done entry (a joined event's ts, or ``(state, event_ts, entry)``)."""
    if type(d) is not tuple:
        return ["d", _JOINED, d]
    if d[2] is None:
        return ["d", d[0], d[1]]
    e = d[2]
    return ["d", d[0], d[1], e[2], _feature_state(e), e[3], e[4]]


def _feature_state(e: tuple[Any, ...]) -> dict[str, Any] | tuple[Any, ...] | str:
    """The features of event entry ``e`` as the changelog stores them: the values in the
    joiner's feature-name order (the names are in the meta entry), as the base64 text of
    their little-endian float64s when every value is a finite float (exact, and a third
    of the decimal text's cost to write), else as a JSON array; or the entry's own dict
    when it has other names."""
    if len(e) == 7 and e[5] is _OWN_NAMES:
        return e[6]  # type: ignore[no-any-return]
    values = e[5:]
    if values and all(type(v) is float and _NEG_INF < v < _INF for v in values):
        return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode("ascii")
    return values


def _feature_values(x: str, n: int) -> tuple[float, ...]:
    """The ``n`` float64 values of a changelog features text (see :func:`_feature_state`);
    ``ValueError`` for text that is not base64 of exactly ``n`` of them."""
    raw = base64.b64decode(x.encode("ascii"), validate=True)  # binascii.Error is a ValueError
    if len(raw) != 8 * n:
        raise ValueError(f"features text of {len(raw)} bytes; {n} float64 values take {8 * n}")
    return struct.unpack(f"<{n}d", raw)


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
        self.max_remembered: int = spec.max_remembered
        self.partitions: dict[int, PartitionJoiner | NativePartitionJoiner] = {}
        self._retired: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))

    def add_partition(self, joiner: PartitionJoiner | NativePartitionJoiner) -> None:
        """Take over ``joiner`` (a fresh or restored partition); its partition must be new here."""
        if joiner.partition in self.partitions:
            raise CtStreamError(f"partition {joiner.partition} is already in this joiner group")
        self.partitions[joiner.partition] = joiner

    def remove_partition(self, p: int) -> PartitionJoiner | NativePartitionJoiner | None:
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

    def _enforce_memory(self) -> None:
        """Keep the done memory of all partitions within ``max_remembered``: forget the
        oldest time bucket (across partitions) until it fits."""
        over = sum(j.remembered for j in self.partitions.values()) - self.max_remembered
        while over > 0:
            oldest = min(((k, p) for p, j in self.partitions.items() if (k := j.oldest_memory()) is not None),
                         default=None)
            if oldest is None:
                return
            self.partitions[oldest[1]].forget_oldest()
            over = sum(j.remembered for j in self.partitions.values()) - self.max_remembered

    def enforce_capacity(self) -> JoinOutput:
        """Expire early what exceeds ``max_pending`` (what :meth:`process` does after
        joining, for a caller that calls each partition's ``process`` itself)."""
        out = JoinOutput()
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
        self._enforce_memory()
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
