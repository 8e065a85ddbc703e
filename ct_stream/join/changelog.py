"""The joiner's state changelog as Kafka records: batched, log-structured, compacted.

A partition's join state (:class:`~ct_stream.join.PartitionJoiner`) is written to
partition ``p`` of the compacted topic ``<name>.joiner-state`` as a few records per
commit, not one per id. Pure: no Kafka here, only the keys and values of the records.

Format
    Every key starts with ``"<p>|"``. The state is a sequence of *generations*; a
    generation is one snapshot followed by deltas:

    - ``<p>|gen`` (the *marker*): orjson ``{"gen": G, "chunks": n}``, the live
      generation ``G`` and the number of its snapshot chunks. No marker: generation 0,
      which has deltas only (a partition that has never been snapshotted).
    - ``<p>|<G>|s|<i>``, ``i = 0 .. n-1``: the snapshot chunks of generation ``G``
      (:meth:`PartitionJoiner.snapshot <ct_stream.join.PartitionJoiner.snapshot>`).
    - ``<p>|<G>|d|<seq>``, ``seq = 0, 1, ...``: the delta chunks of generation ``G``, one
      or a few per commit (:meth:`PartitionJoiner.drain_changes
      <ct_stream.join.PartitionJoiner.drain_changes>`).

    A chunk's value is the JSON encoding (orjson's, or the native encoder's:
    docs/native.md) of a list of ``[key, value]`` pairs (joiner
    keys and JSON values, ``null`` deleting a key), at most ``max_bytes`` long (a chunk
    that encodes bigger is split; a single pair bigger than ``max_bytes`` is written
    alone). The state is the pairs of the live generation's snapshot chunks in order,
    then of its deltas in ``seq`` order, the latest value per key winning.

Writing
    Normally a commit writes the delta chunk(s) of what changed. Once the entries
    written as deltas since the last snapshot reach ``max(min_entries, delta_ratio *
    state size)`` (``delta_ratio`` 4 by default: a snapshot costs as much as writing its
    entries, so this bounds the snapshot work to a quarter of the delta work, while a
    restore reads at most about five times the state), the commit writes a snapshot
    instead (it already contains that commit's changes),
    in this order: the snapshot chunks of generation ``G' = G + 1`` (or higher, never a
    generation seen in the topic), then the marker ``{"gen": G'}``, then tombstones for
    every key of the previous generation and any stale key. So the topic holds about
    one snapshot plus up to ``delta_ratio`` times as many delta entries (at least
    ``min_entries``) per partition, and compaction reclaims the rest.

Crash safety
    In exactly-once mode a commit's records are one transaction: all or nothing. In
    at-least-once mode the records of one partition land in order (idempotent
    producer), so a crash leaves a prefix of them. Before the marker, generation ``G``
    is untouched and still complete (its keys are only tombstoned after the marker), and
    the new chunks are unreferenced garbage. After the marker, every chunk of ``G'`` is
    already there (written before it); the leftover keys of ``G`` are garbage. A crash
    in the middle of a multi-chunk delta leaves some of the commit's changes applied,
    as with any at-least-once changelog: the input is re-read from the last committed
    offsets either way. :func:`read_changelog` reports the garbage keys, and the
    restored writer tombstones them at its next snapshot. It never reuses a key that
    holds data: a snapshot takes a generation above every one seen, a delta a ``seq``
    above every one seen in the live generation. Gaps in the delta ``seq`` are
    tolerated (the deltas apply in order); keys that do not follow the format are
    ignored and left alone.

>>> w = ChangelogWriter(3, min_entries=4)
>>> recs = w.records({"a": ["d", "joined", 1.0]}, 1, dict)
>>> [(k.decode(), v) for k, v in recs]
[('3|0|d|0', b'[["a",["d","joined",1.0]]]')]
>>> recs += w.records({"b": None, "c": None, "d": None}, 1, lambda: {"x": 1})  # 4 delta entries: snapshot
>>> [(k.decode(), v) for k, v in recs[1:]]
[('3|1|s|0', b'[["x",1]]'), ('3|gen', b'{"gen":1,"chunks":1}'), ('3|0|d|0', None)]
>>> entries, state = read_changelog(3, recs)
>>> entries, state.generation, state.next_generation
([('x', 1)], 1, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson

from ct_stream.errors import CodecError, CtStreamError

__all__ = ["ChangelogState", "ChangelogWriter", "PackedPairs", "pack_pairs", "read_changelog"]

PROBE_KEY = b"\x00ct-stream-isolation-probe"
"""The key the transaction-isolation probe writes to the state topic (not ours)."""

_MARKER = b"gen"


@dataclass
class ChangelogState:
    """Where a partition's changelog stands: what a :class:`ChangelogWriter` needs to go
    on writing it (from :func:`read_changelog`; a fresh partition is the default)."""

    generation: int = 0
    """The live generation (0: no snapshot yet, deltas only)."""
    next_generation: int = 1
    """The generation of the next snapshot (above every generation seen)."""
    next_delta: int = 0
    """The ``seq`` of the next delta chunk of the live generation."""
    delta_entries: int = 0
    """Entries written as deltas in the live generation."""
    live_keys: list[bytes] = field(default_factory=list)
    """The keys of the live generation's chunks (tombstoned after the next marker)."""
    stale_keys: list[bytes] = field(default_factory=list)
    """Keys of other generations that still hold data (garbage from a crash)."""


@dataclass(frozen=True)
class PackedPairs:
    """Encoded ``[key, value]`` pairs already packed into chunks (JSON arrays of pairs)
    of at most a writer's ``max_bytes``, as :func:`pack_pairs` packs them: what the
    joiners' ``drain_encoded(max_bytes)`` and ``snapshot_encoded(max_bytes)`` give, for
    :meth:`ChangelogWriter.records`. ``len()`` is the number of pairs."""

    chunks: list[bytes]
    pairs: int

    def __len__(self) -> int:
        return self.pairs


def pack_pairs(pairs: list[bytes], max_bytes: int) -> list[bytes]:
    """Encoded ``[key, value]`` pairs as chunks (JSON arrays of them) of at most
    ``max_bytes`` (a lone pair may exceed it), cut where the next pair does not fit.

    >>> pack_pairs([b'["a",1]', b'["b",2]', b'["c",3]'], 18)
    [b'[["a",1],["b",2]]', b'[["c",3]]']
    """
    out: list[bytes] = []
    start, size = 0, 1
    for k, pair in enumerate(pairs):
        n = len(pair) + 1  # with its comma, or the closing bracket
        if size + n > max_bytes and k > start:
            out.append(b"[" + b",".join(pairs[start:k]) + b"]")
            start, size = k, 1
        size += n
    if start < len(pairs):
        out.append(b"[" + b",".join(pairs[start:]) + b"]")
    return out


class ChangelogWriter:
    """Turns one partition's drained changes into state-topic records (see the module
    docstring). ``state`` continues a changelog read back by :func:`read_changelog`."""

    def __init__(self, partition: int, state: ChangelogState | None = None, *, max_bytes: int = 500_000,
                 min_entries: int = 10_000, delta_ratio: float = 4.0) -> None:
        if max_bytes < 64:
            raise CtStreamError(f"ChangelogWriter.max_bytes: got {max_bytes!r}; allowed: >= 64")
        if not delta_ratio > 0:
            raise CtStreamError(f"ChangelogWriter.delta_ratio: got {delta_ratio!r}; allowed: > 0")
        self.partition = partition
        self.max_bytes = max_bytes
        self.min_entries = min_entries
        self.delta_ratio = delta_ratio
        s = state or ChangelogState()
        self.generation = s.generation
        self._next_gen = max(s.next_generation, s.generation + 1)
        self._next_delta = s.next_delta
        self.delta_entries = s.delta_entries
        self._live = list(s.live_keys)
        self._stale = list(s.stale_keys)
        self._prefix = f"{partition}|"
        self._per_chunk = 1_000.0  # pairs per chunk, learnt from the bytes per pair seen

    def snapshot_due(self, n_changes: int, joiner_state_size: int) -> bool:
        """True when a commit of ``n_changes`` changes would write a snapshot (see :meth:`records`)."""
        return bool(n_changes) and \
            self.delta_entries + n_changes >= max(self.min_entries, self.delta_ratio * joiner_state_size)

    def records(self, changes: dict[str, Any] | list[bytes] | PackedPairs, joiner_state_size: int,
                snapshot: Callable[[], dict[str, Any] | list[bytes] | PackedPairs],
                allow_snapshot: bool = True) -> list[tuple[bytes, bytes | None]]:
        """The records for one commit: the delta chunks of ``changes`` (the joiner's
        :meth:`drain_changes`, already taken, or the encoded pairs of
        :meth:`drain_encoded <ct_stream.join.PartitionJoiner.drain_encoded>`, packed or
        not: :class:`PackedPairs` of this writer's ``max_bytes``), or, once the
        delta entries since the last snapshot reach ``max(min_entries, delta_ratio *
        joiner_state_size)``, a snapshot (``snapshot()``, taken after the drain: a dict as
        :meth:`snapshot` gives, or encoded pairs as :meth:`snapshot_encoded` gives) with its
        marker and tombstones. Write them in this order.
        ``allow_snapshot=False`` writes deltas even when a snapshot is due (it comes at a
        later commit): the runtime lets one partition snapshot per commit, so partitions
        that grow alike do not all pause the same commit."""
        if not changes:
            return []
        if allow_snapshot and self.snapshot_due(len(changes), joiner_state_size):
            return self._snapshot_records(snapshot())
        out: list[tuple[bytes, bytes | None]] = []
        base = f"{self._prefix}{self.generation}|d|"
        chunks = self._chunks(list(changes.items())) if isinstance(changes, dict) else \
            changes.chunks if isinstance(changes, PackedPairs) else self._pack(changes)
        for chunk in chunks:
            key = f"{base}{self._next_delta}".encode()
            self._next_delta += 1
            self._live.append(key)
            out.append((key, chunk))
        self.delta_entries += len(changes)
        return out

    def _snapshot_records(self, snap: dict[str, Any] | list[bytes] | PackedPairs) -> list[tuple[bytes, bytes | None]]:
        """Snapshot chunks of a new generation, its marker, then tombstones for the old keys."""
        gen = self._next_gen
        chunks = self._chunks(list(snap.items())) if isinstance(snap, dict) else \
            snap.chunks if isinstance(snap, PackedPairs) else self._pack(snap)
        keys = [f"{self._prefix}{gen}|s|{i}".encode() for i in range(len(chunks))]
        out: list[tuple[bytes, bytes | None]] = list(zip(keys, chunks))
        out.append(((self._prefix + "gen").encode(), orjson.dumps({"gen": gen, "chunks": len(chunks)})))
        out.extend((k, None) for k in self._live)
        out.extend((k, None) for k in self._stale)
        self.generation, self._next_gen = gen, gen + 1
        self._next_delta = self.delta_entries = 0
        self._live, self._stale = keys, []
        return out

    def _chunks(self, pairs: list[tuple[str, Any]]) -> list[bytes]:
        """``pairs`` encoded as chunks of at most ``max_bytes`` (a lone pair may exceed it)."""
        out: list[bytes] = []
        start, n = 0, len(pairs)
        while start < n:
            size = max(1, int(self._per_chunk))
            part = pairs[start:start + size]
            encoded = self._encode(part, out)
            self._per_chunk = 0.8 * self.max_bytes * len(part) / max(1, encoded)
            start += len(part)
        return out

    def _pack(self, pairs: list[bytes]) -> list[bytes]:
        """Encoded ``[key, value]`` pairs as chunks of at most ``max_bytes``
        (:func:`pack_pairs`): the bytes ``_chunks`` gives for the decoded pairs, cut where
        the size says."""
        return pack_pairs(pairs, self.max_bytes)

    def _encode(self, part: list[tuple[str, Any]], out: list[bytes]) -> int:
        """Append ``part``'s chunk(s) to ``out`` (halving while too big); return the bytes."""
        try:
            value = orjson.dumps(part)
        except TypeError as e:
            raise CodecError(f"joiner state, partition {self.partition}: a value does not encode: {e}") from e
        if len(value) <= self.max_bytes or len(part) == 1:
            out.append(value)
            return len(value)
        half = len(part) // 2
        return self._encode(part[:half], out) + self._encode(part[half:], out)


def _number(b: bytes) -> int | None:
    """``b`` as a non-negative int if it is one in canonical decimal, else ``None``."""
    if not b.isdigit() or (len(b) > 1 and b[:1] == b"0"):
        return None
    return int(b)


def read_changelog(partition: int, records: Iterable[tuple[bytes | None, bytes | None]]
                   ) -> tuple[list[tuple[str, Any]], ChangelogState]:
    """The joiner entries of ``partition``'s changelog and the writer state to go on.

    ``records`` are the state partition's ``(key, value)`` in offset order; keys of other
    partitions, the probe key and keys outside the format are ignored. The entries are
    the live generation's snapshot pairs then its delta pairs, for
    :meth:`PartitionJoiner.restore <ct_stream.join.PartitionJoiner.restore>`. Raises
    :class:`~ct_stream.errors.CodecError` for a marker or a live chunk that does not
    decode, or a missing snapshot chunk.
    """
    prefix = f"{partition}|".encode()
    cut = len(prefix)
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        if key is not None and key.startswith(prefix) and key != PROBE_KEY:
            latest[key] = value
    marker: bytes | None = None
    chunks: dict[int, dict[int, bytes | None]] = {}   # gen -> i -> snapshot chunk
    deltas: dict[int, dict[int, bytes | None]] = {}   # gen -> seq -> delta chunk
    max_gen = 0
    for key, value in latest.items():
        rest = key[cut:]
        if rest == _MARKER:
            marker = value
            continue
        parts = rest.split(b"|")
        if len(parts) != 3 or parts[1] not in (b"s", b"d"):
            continue
        gen, n = _number(parts[0]), _number(parts[2])
        if gen is None or n is None:
            continue
        max_gen = max(max_gen, gen)
        (chunks if parts[1] == b"s" else deltas).setdefault(gen, {})[n] = value
    live, n_chunks = 0, 0
    if marker is not None:
        try:
            m = orjson.loads(marker)
            live, n_chunks = m["gen"], m["chunks"]
            if type(live) is not int or type(n_chunks) is not int or live < 0 or n_chunks < 0:
                raise ValueError(f"bad marker {m!r}")
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as e:
            raise CodecError(f"joiner state, partition {partition}, key {(prefix + _MARKER)!r}: {e}") from e
    max_gen = max(max_gen, live)
    entries: list[tuple[str, Any]] = []
    state = ChangelogState(generation=live, next_generation=max_gen + 1)
    snap = chunks.get(live, {})
    for i in range(n_chunks):
        value = snap.get(i)
        key = prefix + f"{live}|s|{i}".encode()
        if value is None:
            raise CodecError(f"joiner state, partition {partition}: snapshot chunk {key!r} of generation "
                             f"{live} is missing ({n_chunks} chunks)")
        entries.extend(_decode_chunk(partition, key, value))
        state.live_keys.append(key)
    live_deltas = deltas.get(live, {})
    for seq in sorted(live_deltas):
        value = live_deltas[seq]
        state.next_delta = seq + 1
        if value is None:
            continue
        key = prefix + f"{live}|d|{seq}".encode()
        pairs = _decode_chunk(partition, key, value)
        entries.extend(pairs)
        state.delta_entries += len(pairs)
        state.live_keys.append(key)
    for kind, by_gen in ((b"s", chunks), (b"d", deltas)):
        for gen, values in by_gen.items():
            for n, value in values.items():
                if value is not None and (gen != live or (kind == b"s" and n >= n_chunks)):
                    state.stale_keys.append(prefix + b"%d|%s|%d" % (gen, kind, n))
    return entries, state


def _decode_chunk(partition: int, key: bytes, value: bytes) -> list[tuple[str, Any]]:
    """The ``(key, value)`` pairs of one chunk; :class:`CodecError` when it is not a list of pairs."""
    try:
        pairs = orjson.loads(value)
        if type(pairs) is not list:
            raise ValueError(f"a chunk is a list of pairs, got {type(pairs).__name__}")
        out = []
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise ValueError(f"a chunk holds [key, value] pairs, got {str(pair)[:80]}")
            out.append((pair[0], pair[1]))
        return out
    except (orjson.JSONDecodeError, ValueError) as e:
        raise CodecError(f"joiner state, partition {partition}, key {key!r}: {e}") from e

