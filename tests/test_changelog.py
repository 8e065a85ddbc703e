"""The joiner's batched changelog (ct_stream.join.changelog), pure: no broker.

A "topic" here is a list of ``(key, value)`` records in offset order; compaction keeps
the latest record per key and drops tombstones."""

from __future__ import annotations

import doctest
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ct_stream.errors import CodecError, CtStreamError
from ct_stream.join import META_KEY, JoinOutput, PartitionJoiner
from ct_stream.join import changelog as changelog_module
from ct_stream.join.changelog import ChangelogState, ChangelogWriter, read_changelog
from tests.test_join import E, FakeClock, L, arrange, run, scenarios, spec, split

Topic = list[tuple[bytes, bytes | None]]


def compact(topic: Topic) -> Topic:
    latest: dict[bytes, bytes | None] = {}
    for k, v in topic:
        latest.pop(k, None)  # a rewritten key moves to its latest offset
        latest[k] = v
    return [(k, v) for k, v in latest.items() if v is not None]


def holding(topic: Topic) -> set[bytes]:
    """The keys whose latest record holds data."""
    return {k for k, _ in compact(topic)}


def state_of(j: PartitionJoiner) -> dict[str, Any]:
    """The joiner's state without the pending entries' sequence numbers (a snapshot
    numbers them by position, so two equivalent joiners may number them differently)."""
    return {k: (v[:1] + v[2:] if isinstance(v, list) and v[0] in "el" else v) for k, v in j.snapshot().items()}


def restore(topic: Topic, partition: int = 0, policy: str = "negative") -> tuple[PartitionJoiner, ChangelogState]:
    entries, st8 = read_changelog(partition, topic)
    return PartitionJoiner.restore(partition, spec(policy), entries, clock=FakeClock()), st8


class Worker:
    """A joiner and its changelog writer on one topic, committing like the runtime."""

    def __init__(self, j: PartitionJoiner, topic: Topic, state: ChangelogState | None = None,
                 **kw: Any) -> None:
        self.j, self.topic = j, topic
        kw.setdefault("delta_ratio", 1.0)  # the tests below count entries against the state size
        self.w = ChangelogWriter(j.partition, state, **kw)
        self.max_size = 0

    def commit(self, size: int | None = None) -> Topic:
        """Drain, write, append to the topic; ``size=0`` (with ``min_entries=1``) forces a snapshot."""
        if size is None:
            size = self.j.pending + self.j.remembered
        self.max_size = max(self.max_size, size)
        recs = self.w.records(self.j.drain_encoded(), size, self.j.snapshot_encoded)  # as the runtime does
        live = holding(self.topic)
        marker = f"{self.j.partition}|gen".encode()
        for k, v in recs:
            assert k.startswith(f"{self.j.partition}|".encode())
            if v is not None and k != marker:
                assert k not in live, f"{k!r} still holds data"  # never overwrite a live key
            if v is not None:
                assert len(v) <= self.w.max_bytes or len(orjson.loads(v)) == 1
        self.topic.extend(recs)
        return recs


def suffix(whole: list[Any], part: list[Any]) -> bool:
    return len(part) <= len(whole) and whole[len(whole) - len(part):] == part


# ----------------------------------------------------------------------- round trip

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios(reuse=True), st.data())
def test_writer_and_reader_round_trip_through_restarts_and_compaction(sc: dict[str, Any],
                                                                       data: st.DataObject) -> None:
    policy = sc["policy"]
    inputs = arrange(sc["records"], sc["noises"][0])
    batches = split(inputs, data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=12), label="cuts"))
    ops: list[Any] = []
    for batch in batches:
        ops += [batch, data.draw(st.sampled_from(["", "commit", "commit", 6.0]), label="op")]
    ops.append("commit")
    at = data.draw(st.integers(0, len(ops) - 1), label="restart point")
    kw = {"max_bytes": data.draw(st.sampled_from([200, 600, 5_000, 500_000]), label="max_bytes"),
          "min_entries": data.draw(st.sampled_from([1, 3, 10, 10_000]), label="min_entries"),
          "delta_ratio": data.draw(st.sampled_from([0.5, 1.0, 4.0]), label="delta_ratio")}
    original = Worker(PartitionJoiner(0, spec(policy), clock=FakeClock()), [], **kw)

    def apply(worker: Worker, op: Any, out: JoinOutput) -> None:
        if isinstance(op, list):
            out.extend(worker.j.process(op))
        elif isinstance(op, float):
            out.extend(worker.j.tick(now=op))
        elif op == "commit":
            worker.commit()

    committed, last_commit = state_of(original.j), -1
    for k, op in enumerate(ops[:at]):
        apply(original, op, JoinOutput())
        if op == "commit":
            committed, last_commit = state_of(original.j), k
    # a restart at `at`: the state as of the last commit, from the topic (sometimes compacted),
    # and the input again from there; the original goes on
    topic = list(original.topic)
    if data.draw(st.booleans(), label="compact"):
        topic = compact(topic)
    j, st8 = restore(topic, policy=policy)
    assert state_of(j) == committed
    restarted = Worker(j, topic, st8, **kw)
    outs = []
    for worker, todo in ((original, ops[at:]), (restarted, ops[last_commit + 1:])):
        out = JoinOutput()
        for op in todo:
            apply(worker, op, out)
        outs.append(out)
    assert suffix(outs[1].examples, outs[0].examples) and suffix(outs[1].dead_letters, outs[0].dead_letters)
    final = state_of(original.j)
    assert state_of(restarted.j) == final
    restored = []
    bound = max(kw["min_entries"], kw["delta_ratio"] * max(original.max_size, restarted.max_size))
    for worker in (original, restarted):
        for t in (worker.topic, compact(worker.topic)):
            r, st8 = restore(t, policy=policy)
            assert state_of(r) == final
            restored.append(r)
        # bounded: the live deltas stay under the snapshot threshold; no garbage survives compaction
        assert st8.delta_entries < bound and st8.stale_keys == []
    flush = run(original.j, [])  # the same expiry order (deadline ties by arrival) everywhere
    assert all(run(x, []) == flush for x in [restarted.j] + restored)


# ------------------------------------------------------------- snapshots and crashes

def joiner_with_state(n: int = 40) -> PartitionJoiner:
    j = PartitionJoiner(0, spec(), clock=FakeClock())
    j.process([E(f"a{k}", 100.0 + k / 10, k) for k in range(n)] +
              [L(f"a{k}", 101.0 + k / 10, k) for k in range(0, n, 3)])
    return j


def test_a_snapshot_replaces_the_deltas_and_tombstones_the_previous_generation() -> None:
    j = PartitionJoiner(2, spec(), clock=FakeClock())
    w = Worker(j, [], min_entries=10, max_bytes=300)
    j.process([E("a", 100.0, 0), E("b", 100.0, 1)])
    assert [k for k, _ in w.commit()] == [b"2|0|d|0"]  # a, b, meta: 3 entries
    j.process([L("a", 101.0, 0), E("c", 101.0, 2)])
    assert [k for k, _ in w.commit()] == [b"2|0|d|1"]  # 6
    assert w.commit() == []  # nothing changed: nothing written
    j.process([E(f"x{k}", 102.0, 3 + k) for k in range(4)])
    recs = w.commit()  # 6 + 5 >= 10: a snapshot of generation 1 instead of a delta
    keys = [k for k, _ in recs]
    n = keys.index(b"2|gen")
    assert n >= 2 and keys[:n] == [f"2|1|s|{i}".encode() for i in range(n)]  # split under 300 bytes
    assert orjson.loads(recs[n][1]) == {"gen": 1, "chunks": n}  # type: ignore[arg-type]
    assert recs[n + 1:] == [(b"2|0|d|0", None), (b"2|0|d|1", None)]
    assert all(len(v) <= 300 for _, v in recs[:n])  # type: ignore[arg-type]
    snap = dict(pair for _, v in recs[:n] for pair in orjson.loads(v))  # type: ignore[arg-type]
    assert snap == orjson.loads(orjson.dumps(j.snapshot()))
    j.process([E("y", 103.0, 9)])
    assert [k for k, _ in w.commit()] == [b"2|1|d|0"]
    j.process([E(f"z{k}", 104.0, 10 + k) for k in range(12)])  # 2 + 13 < max(10, state 21): deltas
    deltas = [k for k, _ in w.commit()]
    assert len(deltas) >= 2 and deltas == [f"2|1|d|{i}".encode() for i in range(1, len(deltas) + 1)]
    j.process([L(f"z{k}", 105.0, 30 + k) for k in range(12)])  # 15 + 13 >= max(10, state 20)
    keys = [k for k, _ in w.commit()]
    m = keys.index(b"2|gen")
    assert keys[:m] == [f"2|2|s|{i}".encode() for i in range(m)]
    assert keys[m + 1:] == [f"2|1|s|{i}".encode() for i in range(n)] + [b"2|1|d|0"] + deltas
    assert all(k.startswith(b"2|2|") or k == b"2|gen" for k in holding(w.topic))
    r, st8 = restore(w.topic, partition=2)
    assert state_of(r) == state_of(j) and (st8.generation, st8.next_generation, st8.next_delta) == (2, 3, 0)
    assert st8.live_keys == keys[:m] and st8.stale_keys == []


@pytest.mark.parametrize("min_entries", [1, 100])
def test_a_crash_at_any_point_of_a_snapshot_leaves_a_readable_state(min_entries: int) -> None:
    j = joiner_with_state()
    w = Worker(j, [], min_entries=min_entries, max_bytes=400)
    w.commit()  # a snapshot of generation 1 (min_entries 1) or a delta of generation 0
    j.process([E("b", 104.0, 50), L("a1", 104.5, 50)])
    assert not any(k.endswith(b"|gen") for k, _ in w.commit())
    old = state_of(j)
    j.process([E(f"c{k}", 104.5 + k / 10, 51 + k) for k in range(5)] + [L("a2", 105.0, 51)])
    new = state_of(j)
    before = list(w.topic)
    w.w.min_entries = 1
    recs = w.commit(size=0)
    marker = [k for k, _ in recs].index(b"0|gen")
    assert marker >= 3 and len(recs) > marker + 1  # several chunks, then tombstones
    for cut in range(len(recs) + 1):  # the first `cut` records landed, then the worker died
        topic = before + recs[:cut]
        for t in (topic, compact(topic)):
            r, st8 = restore(t)
            assert state_of(r) == (new if cut > marker else old), cut
            # the restarted writer never reuses a key holding data (Worker.commit checks) and
            # its next snapshot clears the garbage
            again = Worker(r, list(t), st8, min_entries=1, max_bytes=400)
            r.process([E("d", 106.0, 60)])
            again.commit()
            r.process([E("e", 106.0, 61)])
            again.commit(size=0)
            r2, st8 = restore(compact(again.topic))
            assert state_of(r2) == state_of(r) and st8.stale_keys == []
            assert {k.split(b"|")[1] for k in holding(again.topic)} == {b"gen", str(st8.generation).encode()}


def test_the_restored_writer_counts_the_live_deltas_towards_the_next_snapshot() -> None:
    j = joiner_with_state(6)
    w = Worker(j, [], min_entries=20)
    w.commit()  # 7 entries
    j.process([E("b", 101.0, 50)])
    w.commit()  # 9
    r, st8 = restore(w.topic)
    assert (st8.generation, st8.next_generation, st8.next_delta, st8.delta_entries) == (0, 1, 2, 9)
    assert st8.live_keys == [b"0|0|d|0", b"0|0|d|1"]
    again = Worker(r, w.topic, st8, min_entries=20)
    r.process([E(f"c{k}", 101.0, 51 + k) for k in range(10)])
    recs = again.commit()  # 9 + 11 >= 20: a snapshot (a writer that forgot the 9 would write a delta)
    assert [k for k, _ in recs][-3:] == [b"0|gen", b"0|0|d|0", b"0|0|d|1"]


# ------------------------------------------------------------------------ chunking

@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.one_of(st.none(), st.text(max_size=300),
                                                        st.lists(st.integers(-2**63, 2**63 - 1), max_size=40)), max_size=60),
       st.integers(64, 2_000))
def test_chunks_stay_under_max_bytes_and_keep_the_order(changes: dict[str, Any], max_bytes: int) -> None:
    w = ChangelogWriter(5, max_bytes=max_bytes, min_entries=10**9)
    pairs: list[Any] = []
    for _ in range(2):  # the second call uses what the first learnt about the sizes
        recs = w.records(changes, 0, dict)
        for _, v in recs:
            assert v is not None
            chunk = orjson.loads(v)
            assert len(v) <= max_bytes or len(chunk) == 1
            pairs += [tuple(p) for p in chunk]
    assert pairs == 2 * list(changes.items())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.one_of(st.none(), st.text(max_size=300),
                                                          st.lists(st.integers(-2**63, 2**63 - 1), max_size=40))),
                max_size=60),
       st.integers(64, 2_000))
def test_encoded_pairs_are_packed_under_max_bytes_in_order(items: list[tuple[str, Any]], max_bytes: int) -> None:
    """``records`` of pairs already encoded (``PartitionJoiner.drain_encoded``): the same
    pairs, in order, in chunks of at most ``max_bytes`` (a lone pair may be bigger), each
    chunk exactly the JSON array of its pairs."""
    w = ChangelogWriter(5, max_bytes=max_bytes, min_entries=10**9)
    encoded = [orjson.dumps(p) for p in items]
    recs = w.records(encoded, 0, dict)
    chunks = [orjson.loads(v) for _, v in recs]  # type: ignore[arg-type]
    assert [tuple(p) for c in chunks for p in c] == items
    for (_, v), chunk in zip(recs, chunks):
        assert v == orjson.dumps(chunk) and (len(v) <= max_bytes or len(chunk) == 1)  # type: ignore[arg-type]
    sizes = [len(v) for _, v in recs]  # type: ignore[arg-type]
    for a, (b, chunk) in zip(sizes, zip(sizes[1:], chunks[1:])):  # a chunk is cut only when the next pair does not fit
        assert a + len(orjson.dumps(chunk[0])) + 1 > max_bytes
    assert [k for k, _ in recs] == [f"5|0|d|{n}".encode() for n in range(len(recs))]


def test_a_pair_bigger_than_max_bytes_is_written_alone() -> None:
    w = ChangelogWriter(0, max_bytes=100, min_entries=10**9)
    recs = w.records({"a": 1, "big": "x" * 500, "b": 2}, 0, dict)
    assert [orjson.loads(v) for _, v in recs] == [[["a", 1]], [["big", "x" * 500]], [["b", 2]]]  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the reader

def sample_topic() -> Topic:
    j = joiner_with_state(10)
    w = Worker(j, [], min_entries=1, max_bytes=200)
    w.commit()  # generation 1
    j.process([E("b", 101.0, 50)])
    w.commit()  # 0|1|d|0
    return w.topic


def test_the_reader_ignores_other_partitions_the_probe_and_foreign_keys() -> None:
    topic = sample_topic()
    expected, _ = read_changelog(0, topic)
    noise: Topic = [(b"\x00ct-stream-isolation-probe", b"x"), (b"10|gen", b"junk"), (b"00|gen", b"junk"),
                    (b"1|1|s|0", b"junk"), (b"0|a-legacy-id", b"junk"), (b"0|1|x|0", b"junk"),
                    (b"0|01|s|0", b"junk"), (b"0|1|s|-1", b"junk"), (None, b"junk")]  # type: ignore[list-item]
    assert read_changelog(0, noise[:4] + topic + noise[4:])[0] == expected
    # a corrupt chunk of a dead generation is garbage, not an error
    entries, st8 = read_changelog(0, topic + [(b"0|7|s|0", b"not json"), (b"0|0|d|3", b"[1]")])
    assert entries == expected and st8.stale_keys == [b"0|7|s|0", b"0|0|d|3"] and st8.next_generation == 8


@pytest.mark.parametrize("key, value", [
    (b"0|1|s|0", b"not json"), (b"0|1|d|0", b"{\"a\": 1}"), (b"0|1|d|0", b"[[\"a\"]]"), (b"0|1|d|0", b"[[1, 2]]"),
    (b"0|1|s|1", None), (b"0|gen", b"[1]"), (b"0|gen", b"{\"gen\": 1}"), (b"0|gen", b"{\"gen\": 1, \"chunks\": 99}"),
    (b"0|gen", b"{\"gen\": \"1\", \"chunks\": 1}"),
])
def test_a_corrupt_live_chunk_or_a_missing_snapshot_chunk_is_a_codec_error(key: bytes, value: bytes | None) -> None:
    with pytest.raises(CodecError):
        read_changelog(0, sample_topic() + [(key, value)])


def test_restore_rejects_a_chunk_that_decodes_to_a_bad_entry() -> None:
    entries, _ = read_changelog(0, [(b"0|0|d|0", b'[["a", ["q", 1]]]')])
    with pytest.raises(CodecError):
        PartitionJoiner.restore(0, spec(), entries, clock=FakeClock())


def test_an_unencodable_value_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        ChangelogWriter(0).records({"a": ["e", 0, 0, 1.0, {1: "non-str key"}, None, None]}, 0, dict)


def test_meta_key_survives_the_round_trip() -> None:
    j = joiner_with_state(3)
    w = Worker(j, [])
    w.commit()
    entries, _ = read_changelog(0, w.topic)
    assert dict(entries)[META_KEY]["seq"] == 3


def test_doctests() -> None:
    result = doctest.testmod(changelog_module)
    assert result.attempted > 0 and result.failed == 0


def test_by_default_deltas_grow_to_four_times_the_state_before_a_snapshot() -> None:
    j = joiner_with_state(6)
    w = ChangelogWriter(0, min_entries=1)
    assert w.delta_ratio == 4.0
    size = j.pending + j.remembered
    written = 0
    while True:
        j.process([E(f"n{written}", 101.0, 100 + written)])
        changes = j.drain_changes()
        recs = w.records(changes, size, j.snapshot)
        if any(k == b"0|gen" for k, _ in recs):
            break
        written += len(changes)
    assert 3 * size < written + len(changes) and written < 4 * size + 10
    with pytest.raises(CtStreamError, match="delta_ratio: got 0"):
        ChangelogWriter(0, delta_ratio=0)


def test_a_due_snapshot_can_wait_for_a_later_commit_and_the_deltas_still_restore() -> None:
    w = ChangelogWriter(0, min_entries=3)
    first = w.records({"a": ["d", "joined", 1.0], "b": ["d", "joined", 2.0]}, 0, lambda: {"x": 1})
    assert w.snapshot_due(1, 0) and not w.snapshot_due(0, 0)
    deferred = w.records({"c": ["d", "joined", 3.0]}, 0, lambda: {"unused": 1}, allow_snapshot=False)
    assert [k for k, _ in deferred] == [b"0|0|d|1"]  # a delta, though a snapshot was due
    snap = w.records({"d": None}, 0, lambda: {"a": ["d", "joined", 1.0], "c": ["d", "joined", 3.0]})
    assert (b"0|gen", b'{"gen":1,"chunks":1}') in snap
    entries, state = read_changelog(0, first + deferred)
    assert dict(entries) == {"a": ["d", "joined", 1.0], "b": ["d", "joined", 2.0], "c": ["d", "joined", 3.0]}
    entries, state = read_changelog(0, first + deferred + snap)
    assert dict(entries) == {"a": ["d", "joined", 1.0], "c": ["d", "joined", 3.0]} and state.generation == 1
