"""The pure joiner: unit tests of every rule, and property-based tests (hypothesis) of
the invariants: one outcome per event, the right labels, independence from batch
boundaries and from arrival order within the grace, and exact changelog restore."""

from __future__ import annotations

import doctest
import math
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ct_stream.errors import CodecError, CtStreamError, TopologyError
from ct_stream.join import META_KEY, DeadLetter, Example, Input, JoinerGroup, JoinOutput, PartitionJoiner
from ct_stream.join import joiner as joiner_module
from ct_stream.records import Event, Label, Reason
from ct_stream.topology import JoinSpec

D, G, IDLE = 10.0, 2.0, 5.0


def spec(policy: str = "negative", **kw: Any) -> JoinSpec:
    kw.setdefault("default_label", False if policy == "negative" else None)
    return JoinSpec(max_label_delay=D, grace=G, idle_timeout=IDLE, timeout_policy=policy, **kw)


class FakeClock:
    """A settable clock: tests move time by assignment, never by sleeping."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(i: str, ts: float, x: float = 1.0, sv: int | None = 3, pred: Any = 0.25) -> Event:
    return Event(i, ts, {"x": x, "c": "de", "b": True}, sv, pred)


def E(i: str, ts: float, offset: int, **kw: Any) -> Input:
    return Input("event", ev(i, ts, **kw), offset)


def L(i: str, ts: float, offset: int, label: Any = True) -> Input:
    return Input("label", Label(i, ts, label), offset)


def joiner(policy: str = "negative", clock: FakeClock | None = None, **kw: Any) -> PartitionJoiner:
    return PartitionJoiner(0, spec(policy, **kw), clock=clock or FakeClock())


def summary(out: JoinOutput) -> list[tuple[str, str, Any]]:
    return [(x.id, x.outcome, x.label) for x in out.examples]


def dead(out: JoinOutput) -> list[tuple[str, int, str]]:
    return [(d.kind, d.offset, d.reason.value) for d in out.dead_letters]


# ------------------------------------------------------------------------ the rules

def test_event_then_label_joins() -> None:
    j = joiner()
    assert j.process([E("a", 100.0, 7, x=2.5, sv=4, pred=0.75)]).examples == []
    out = j.process([L("a", 104.0, 3, True)])
    assert out.examples == [Example("a", 100.0, 104.0, True, "joined", 4, 0.75, 0, 7,
                                    {"x": 2.5, "c": "de", "b": True})]
    assert j.pending_events == 0 and j.pending_labels == 0 and j.remembered == 1
    assert j.counts["joined"] == 1 and j.counts["events"] == 1 and j.counts["labels"] == 1
    assert j.drain_label_delays() == [4.0] and j.drain_label_delays() == []


def test_label_before_event_waits_and_joins() -> None:
    j = joiner()
    assert j.process([L("a", 101.0, 0, False)]).examples == [] and j.pending_labels == 1
    out = j.process([E("a", 100.0, 5)])
    assert summary(out) == [("a", "joined", False)]
    assert out.examples[0].label_ts == 101.0 and out.examples[0].source_offset == 5
    assert j.pending_labels == 0 and j.drain_label_delays() == [1.0]


def test_negative_expiry_is_strict_and_carries_the_default_label() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0)])
    # deadline 110; watermark 112 - 2 = 110 is not past it
    assert j.process([E("b", 112.0, 1)]).examples == [] and j.watermark == 110.0
    out = j.process([E("c", 112.25, 2)])
    assert out.examples == [Example("a", 100.0, None, False, "expired", 3, 0.25, 0, 0,
                                    {"x": 1.0, "c": "de", "b": True})]
    assert j.counts["expired"] == 1 and j.pending_events == 2


def test_expiry_stops_at_a_deadline_equal_to_the_watermark() -> None:
    """Expiry is strict for every entry it reaches, not only the first: the loop over the
    front (``process``'s inline step 4) stops at a deadline equal to the watermark."""
    j = joiner()
    j.process([E("a", 100.0, 0), E("a2", 100.25, 1), E("b", 100.5, 2)])  # deadlines 110, 110.25, 110.5
    # watermark 110.1: the step that moves their wheel bucket to the front expires a
    assert [x.id for x in j.process([E("c", 112.1, 3)]).examples] == ["a"]
    # watermark 110.5: the front's loop expires a2 and stops at b
    assert [x.id for x in j.process([E("d", 112.5, 4)]).examples] == ["a2"] and j.pending_events == 3
    assert [x.id for x in j.process([E("e", 112.75, 5)]).examples] == ["b"]


def test_expiry_runs_in_deadline_order_then_sequence() -> None:
    j = joiner()
    j.process([E("b", 101.0, 0), E("a", 100.0, 1), E("c", 101.0, 2)])
    out = j.process([E("z", 200.0, 3)])
    assert [x.id for x in out.examples] == ["a", "b", "c"]


def test_drop_policy_counts_only_and_a_late_label_is_a_duplicate() -> None:
    j = joiner("drop")
    out = j.process([E("a", 100.0, 0), E("b", 113.0, 1)])
    assert out.examples == [] and out.dead_letters == []
    assert j.counts["expired_dropped"] == 1 and j.pending_events == 1
    out = j.process([L("a", 112.0, 0)])
    assert out.examples == [] and j.counts["duplicate_labels"] == 1 and j.counts["corrections"] == 0


def test_dlq_policy_dead_letters_the_event_with_reason_expired() -> None:
    j = joiner("dlq")
    out = j.process([E("a", 100.0, 9), E("b", 113.0, 10)])
    assert out.examples == [] and dead(out) == [("event", 9, "expired")]
    assert out.dead_letters[0].reason is Reason.EXPIRED and out.dead_letters[0].record.id == "a"  # type: ignore[union-attr]
    assert j.counts["expired_dlq"] == 1
    assert j.process([L("a", 112.5, 0)]).examples == [] and j.counts["duplicate_labels"] == 1


def test_label_without_event_becomes_unknown_id() -> None:
    j = joiner()
    j.process([L("ghost", 100.0, 4)])
    out = j.process([E("x", 112.5, 0)])
    assert dead(out) == [("label", 4, "unknown_id")] and out.examples == []
    assert j.counts["unknown_id"] == 1 and j.pending_labels == 0


def test_late_record_is_dead_lettered_and_moves_nothing() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0)])
    out = j.process([E("old", 97.5, 1), L("a", 97.0, 0)])
    assert dead(out) == [("event", 1, "late"), ("label", 0, "late")]
    assert out.examples == [] and j.counts["late"] == 2 and j.pending_events == 1
    assert j.watermark == 98.0 and j.max_ts == 100.0
    # exactly at the watermark is not late
    assert summary(j.process([L("a", 98.0, 1)])) == [("a", "joined", True)]


def test_duplicates_are_counted_and_dropped() -> None:
    j = joiner()
    out = j.process([E("a", 100.0, 0), E("a", 100.0, 1), L("b", 100.0, 0), L("b", 100.0, 1),
                     L("a", 101.0, 2), E("a", 100.0, 2), L("a", 101.0, 3),
                     E("b", 100.5, 3), E("b", 100.5, 4), L("b", 100.0, 4)])
    assert summary(out) == [("a", "joined", True), ("b", "joined", True)]
    assert out.examples[0].source_offset == 0 and out.examples[1].source_offset == 3
    assert j.counts["duplicate_events"] == 3 and j.counts["duplicate_labels"] == 3


def test_correction_after_negative_expiry_is_emitted_once() -> None:
    j = joiner()
    j.process([E("a", 100.0, 5, x=9.0, sv=2, pred=0.125)])
    assert summary(j.process([E("z", 113.0, 6)])) == [("a", "expired", False)]
    out = j.process([L("a", 112.0, 0, True)])
    assert out.examples == [Example("a", 100.0, 112.0, True, "correction", 2, 0.125, 0, 5,
                                    {"x": 9.0, "c": "de", "b": True})]
    again = j.process([L("a", 112.5, 1, True)])
    assert again.examples == [] and j.counts["corrections"] == 1 and j.counts["duplicate_labels"] == 1
    assert j.drain_label_delays() == []  # corrections are not joins


def test_done_memory_is_forgotten_after_the_horizon() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0), L("a", 101.0, 0)])
    horizon = 100.0 + 2 * D + G  # 122
    j.process([E("b", horizon + G, 1)])  # watermark == horizon: still remembered
    assert j.watermark == horizon and j.remembered == 1
    assert j.process([E("a", horizon + G, 2)]).examples == [] and j.counts["duplicate_events"] == 1
    # this copy moves the watermark past the horizon, but the record is handled (step 3)
    # before the expiry and forgetting (step 4): still a duplicate
    assert j.process([E("a", horizon + G + 0.5, 3)]).examples == [] and j.counts["duplicate_events"] == 2
    assert j.watermark > horizon and j.pending_events == 1
    assert j.remembered == 1  # forgotten, but its memory is reclaimed a bucket later
    j.process([E("a", horizon + G + 0.5, 4)])
    assert j.pending_events == 2 and j.counts["duplicate_events"] == 2  # b and the new a
    assert j.remembered == 0  # the new a replaced the forgotten entry
    out = j.process([L("a", horizon + G + 1, 1, False)])
    assert summary(out) == [("a", "joined", False)] and out.examples[0].source_offset == 4
    # the old a's memory bucket is reclaimed now (watermark 123); the new a stays remembered
    assert j.remembered == 1
    assert j.process([L("a", horizon + G + 1, 2, False)]).examples == [] and j.counts["duplicate_labels"] == 1
    # a label past the horizon of an expired negative is a new label, not a correction
    j.process([E("n", 200.0, 5)])
    assert summary(j.process([E("m", 212.5, 6)])) == [("n", "expired", False)]
    j.process([E("m2", 200.0 + 2 * D + G + G + 0.25, 7)])  # watermark 222.25 > 222
    assert j.process([L("n", 222.5, 3)]).examples == [] and j.pending_labels == 1
    assert j.drain_changes()["n"][0] == "l"  # a pending label, no done entry
    assert j.counts["corrections"] == 0


def test_done_memory_is_cleaned_physically_after_the_horizon() -> None:
    j = joiner()
    j.process([E(f"a{k}", 100.0 + k / 10, k) for k in range(20)] +
              [L(f"a{k}", 101.0, k) for k in range(20)])
    assert j.remembered == 20
    first = j.drain_changes()
    # forget times are <= 123.9, cleaned by bucket of D / 8 = 1.25 s: watermark 128 is past them all
    j.process([E("z", 130.0, 20)])
    assert j.remembered == 0
    second = j.drain_changes()
    # Forgetting at the horizon follows from the watermark, so it is not logged: a
    # joiner restored from both drains forgets the same ids from the restored watermark.
    assert not any(f"a{k}" in second for k in range(20))
    restored = PartitionJoiner.restore(0, spec(), list(first.items()) + list(second.items()))
    assert restored.remembered == 0 and restored.pending_events == 1
    assert summary(restored.process([E("a3", 131.0, 21), L("a3", 131.5, 21)])) == [("a3", "joined", True)]


def test_idle_tick_advances_the_watermark_and_expires() -> None:
    clock = FakeClock(1000.0)
    j = joiner(clock=clock)
    assert j.tick().examples == [] and j.watermark == -math.inf  # nothing before the first record
    j.process([E("a", 100.0, 0), L("ghost", 100.0, 0)])
    clock.now = 1000.0 + IDLE - 0.001
    assert j.tick() == JoinOutput() and j.watermark == 98.0  # quiet for less than idle_timeout
    clock.now = 1000.0 + 11.0
    assert j.tick() == JoinOutput() and j.watermark == 100.0 + 11.0 - G  # 109: nothing due yet
    clock.now = 1000.0 + 12.5
    out = j.tick()
    assert j.watermark == 110.5
    assert summary(out) == [("a", "expired", False)] and dead(out) == [("label", 0, "unknown_id")]
    # an explicit `now` is used instead of the clock
    assert j.tick(now=1000.0 + 20.0) == JoinOutput() and j.watermark == 118.0
    # a record behind the idle watermark is late
    assert dead(j.process([E("b", 117.0, 1)])) == [("event", 1, "late")]


def test_capacity_expires_the_oldest_across_partitions() -> None:
    clock = FakeClock()
    group = JoinerGroup(spec(max_pending=3), clock=clock)
    for p in (0, 1):
        group.add_partition(PartitionJoiner(p, group.spec, clock=clock))
    assert group.process(0, [E("p0-a", 100.0, 0), E("p0-b", 104.0, 1)]) == JoinOutput()
    # four pending, limit three: the smallest deadline anywhere goes (p0-a at 110, not p1-x at 111)
    out = group.process(1, [E("p1-a", 102.0, 0), L("p1-x", 101.0, 0)])
    assert summary(out) == [("p0-a", "expired", False)] and out.dead_letters == []
    assert out.examples[0].source_partition == 0 and group.pending == 3
    # five pending: p1-x (111) and p1-a (112) go; p1-b (113), p1-c (113.5), p0-b (114) stay
    out = group.process(1, [E("p1-b", 103.0, 1), E("p1-c", 103.5, 2)])
    assert dead(out) == [("label", 0, "unknown_id")] and out.dead_letters[0].partition == 1
    assert summary(out) == [("p1-a", "expired", False)]
    assert group.pending == 3 and group.partitions[0].pending_events == 1
    counts = group.counts
    assert counts["capacity_expired"] == 3 and counts["expired"] == 2 and counts["unknown_id"] == 1
    # an event expired early still gets its correction
    assert summary(group.process(0, [L("p0-a", 104.5, 0)])) == [("p0-a", "correction", True)]


def test_max_remembered_forgets_the_oldest_closed_ids_early() -> None:
    clock = FakeClock()
    group = JoinerGroup(spec(max_remembered=50), clock=clock)
    for p in (0, 1):
        group.add_partition(PartitionJoiner(p, group.spec, clock=clock))
    for k in range(200):  # ids close (join) in event-time order, alternating partitions
        p, ts = k % 2, 100.0 + k * 0.1
        group.process(p, [E(f"i{k}", ts, k), L(f"i{k}", ts + 0.05, k)])
        assert sum(j.remembered for j in group.partitions.values()) <= 50
    counts = group.counts
    assert counts["joined"] == 200 and counts["forgotten_early"] >= 150
    # forgetting early does not follow from the watermark, so it is logged: a restored
    # joiner does not hold the forgotten ids either
    p0 = group.partitions[0]
    restored = PartitionJoiner.restore(0, group.spec, p0.drain_changes().items(), clock=clock)
    assert restored.remembered == p0.remembered < 100
    # the oldest were forgotten: a duplicate of i0 is new again; the newest is still caught
    newest = group.partitions[1]
    assert summary(group.process(0, [E("i0", 120.0, 900), L("i0", 120.1, 900)])) == [("i0", "joined", True)]
    assert group.process(1, [E("i199", 120.2, 901)]).examples == [] and newest.counts["duplicate_events"] == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.tuples(st.booleans(), st.integers(0, 15),
                                                                  st.integers(0, 40)), max_size=8)),
                max_size=12),
       st.integers(1, 6))
def test_group_pending_never_exceeds_max_pending(batches: list[Any], max_pending: int) -> None:
    group = JoinerGroup(spec(max_pending=max_pending), clock=FakeClock())
    for p in range(3):
        group.add_partition(PartitionJoiner(p, group.spec, clock=FakeClock()))
    offsets: Counter[tuple[int, bool]] = Counter()
    for p, records in batches:
        inputs = []
        for is_event, i, t in records:
            off = offsets[(p, is_event)]
            offsets[(p, is_event)] += 1
            inputs.append(E(f"{i}", 100.0 + t / 4, off) if is_event else L(f"{i}", 100.0 + t / 4, off))
        group.process(p, inputs)
        assert group.pending <= max_pending


def test_group_rejects_unknown_and_repeated_partitions() -> None:
    group = JoinerGroup(spec(), clock=FakeClock())
    group.add_partition(PartitionJoiner(0, group.spec, clock=FakeClock()))
    with pytest.raises(CtStreamError):
        group.add_partition(PartitionJoiner(0, group.spec, clock=FakeClock()))
    with pytest.raises(CtStreamError):
        group.process(1, [E("a", 1.0, 0)])
    group.process(0, [E("a", 1.0, 0), E("a", 1.0, 1)])
    assert group.remove_partition(0) is not None and group.remove_partition(0) is None
    assert group.counts["events"] == 2 and group.counts["duplicate_events"] == 1  # counts outlive the partition


def test_negative_policy_needs_a_default_label_and_kinds_are_checked() -> None:
    with pytest.raises(TopologyError):
        PartitionJoiner(0, JoinSpec(timeout_policy="negative"))
    with pytest.raises(CtStreamError):
        joiner().process([Input("labels", Label("a", 1.0, True), 0)])  # type: ignore[arg-type]
    j = joiner()
    with pytest.raises(CtStreamError):  # the records before it are handled; it moves nothing
        j.process([E("a", 100.0, 0), Input("labels", Label("a", 200.0, True), 0)])  # type: ignore[arg-type]
    assert (j.max_ts, j.watermark, j.pending_events) == (100.0, 98.0, 1)


# ------------------------------------------------------------------------ changelog

def json_rt(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` through JSON and back, as the changelog stores them."""
    return orjson.loads(orjson.dumps(changes))  # type: ignore[no-any-return]


def test_changelog_coalesces_per_id_and_deletes_ids_no_longer_held() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0), L("a", 101.0, 0), L("b", 100.0, 1)])
    changes = j.drain_changes()
    assert set(changes) == {"a", "b", META_KEY}
    assert changes["a"] == ["d", "joined", 100.0]  # a joined id stays a value, not None
    assert changes["b"] == ["l", 1, 1, 100.0, True]
    assert changes[META_KEY] == {"max_ts": 101.0, "idle_watermark": None, "seq": 2,
                                "names": ["x", "c", "b"]}
    assert orjson.loads(orjson.dumps(changes)) == changes  # JSON values, as the changelog writes them
    assert j.drain_changes() == {}  # nothing changed since
    j.process([E("z", 200.0, 1)])  # forgets a (past the horizon), b becomes unknown_id, z pends
    changes = j.drain_changes()
    assert changes["b"] is None and changes["z"][0] == "e"
    assert "a" not in changes  # forgetting at the horizon is not logged (restore redoes it)


def test_reserved_key_cannot_collide_with_an_id() -> None:
    j = joiner()
    j.process([E(META_KEY, 100.0, 0)])
    changes = j.drain_changes()
    assert "\x00" + META_KEY in changes and changes[META_KEY]["max_ts"] == 100.0
    r = PartitionJoiner.restore(0, j.spec, changes.items(), clock=FakeClock())
    assert summary(r.process([L(META_KEY, 101.0, 0)])) == [(META_KEY, "joined", True)]
    snap = r.snapshot()  # the id is done now: its done entry is escaped in a snapshot too
    assert snap["\x00" + META_KEY][:2] == ["d", "joined"] and "max_ts" in snap[META_KEY]
    again = PartitionJoiner.restore(0, j.spec, snap.items(), clock=FakeClock())
    assert summary(again.process([L(META_KEY, 102.0, 1)])) == []  # a duplicate label: already joined


@pytest.mark.parametrize("label", ["cat", 2.5])
def test_restored_expired_negative_builds_the_same_correction(label: Any) -> None:
    j = joiner(default_label="none" if isinstance(label, str) else 0.0)
    j.process([E("a", 100.0, 3, x=-0.0, sv=None, pred="dog" if isinstance(label, str) else 1e-300),
               E("z", 113.0, 4)])
    r = PartitionJoiner.restore(0, j.spec, json_rt(j.drain_changes()).items(), clock=FakeClock())
    expected = j.process([L("a", 112.0, 0, label)])
    assert expected.examples[0].outcome == "correction"
    assert r.process([L("a", 112.0, 0, label)]) == expected


@pytest.mark.parametrize("entry", [
    ("a", ["q", 1]), ("a", b'["l", 0, 0, 1.0, true]'), ("a", {"e": 1}), ("a", ["e", 0, 0, 1.0, [1], None, None]),
    ("a", ["e", "x", 0, 1.0, {}, None, None]), ("a", ["l", 0, 0]), ("a", 3), (META_KEY, ["max_ts"]),
    (META_KEY, {"max_ts": "soon", "idle_watermark": None, "seq": 0}),
])
def test_restore_rejects_a_corrupt_value(entry: tuple[str, Any]) -> None:
    with pytest.raises(CodecError):
        PartitionJoiner.restore(0, spec(), [entry], clock=FakeClock())


def test_restore_reads_feature_values_by_the_meta_names_and_own_dicts_as_they_are() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0), E("b", 100.2, 1)])
    j.process([Input("event", Event("c", 100.4, {"other": 1.0}, None, None), 2)])  # other names: kept as a dict
    changes = json_rt(j.drain_changes())
    assert changes["a"][4] == [1.0, "de", True] and changes["c"][4] == {"other": 1.0}
    r = PartitionJoiner.restore(0, j.spec, changes.items(), clock=FakeClock())
    for label in (L("a", 101.0, 0), L("c", 101.0, 1)):
        assert r.process([label]) == j.process([label])
    meta = changes[META_KEY]
    for bad_meta, bad_a in (({**meta, "names": ["x", "c"]}, None), ({**meta, "names": [1, 2, 3]}, None),
                            (meta, ["e", 0, 0, 100.0, [1.0, "de"], 3, 0.25])):
        bad = {**changes, META_KEY: bad_meta, **({"a": bad_a} if bad_a else {})}
        with pytest.raises(CodecError):
            PartitionJoiner.restore(0, j.spec, bad.items(), clock=FakeClock())


def test_all_float_features_are_stored_as_float64_text_and_restore_exactly() -> None:
    """Features that are all finite floats go to the changelog as the base64 text of their
    float64s (bit for bit: -0.0, the smallest subnormal, the largest double); a restored
    joiner gives the same examples, from that text and from the JSON array an earlier
    version wrote; text of the wrong size or alphabet is a CodecError."""
    import base64
    import struct

    values = (-0.0, 5e-324, 1.7976931348623157e308)
    j = joiner()
    j.process([Input("event", Event("a", 100.0, dict(zip("xyz", values)), None, None), 0),
               Input("event", Event("b", 100.1, {"x": 1.0, "y": 2.0, "z": 3}, None, None), 1)])  # an int: an array
    changes = json_rt(j.drain_changes())
    text = changes["a"][4]
    assert text == base64.b64encode(struct.pack("<3d", *values)).decode() and changes["b"][4] == [1.0, 2.0, 3]
    earlier = {**changes, "a": [*changes["a"][:4], list(values), *changes["a"][5:]]}
    for log in (changes, earlier):
        r = PartitionJoiner.restore(0, j.spec, log.items(), clock=FakeClock())
        [row] = r.process([L("a", 101.0, 0)]).rows
        assert [struct.pack("<d", v) for v in row[0][5:]] == [struct.pack("<d", v) for v in values]
    for bad in (text[:-4], text + "AAAA", "é" + text[1:], text[:-1] + "!", ""):
        with pytest.raises(CodecError):
            PartitionJoiner.restore(0, j.spec, {**changes, "a": [*changes["a"][:4], bad, None, None]}.items(),
                                    clock=FakeClock())


def test_snapshot_is_the_whole_state_and_leaves_the_change_log_alone() -> None:
    j = joiner()
    j.process([E("a", 100.0, 0), L("a", 101.0, 0), L("b", 100.0, 1), E("c", 100.5, 1), E("d", 100.5, 2)])
    first = j.drain_changes()
    j.process([E("e", 100.5, 3)])  # not drained yet: keeps its sequence number (4) in the snapshot
    snap = j.snapshot()
    assert snap == {"a": ["d", "joined", 100.0], "b": ["l", 0, 1, 100.0, True],
                    "c": ["e", 1, 1, 100.5, (1.0, "de", True), 3, 0.25],  # values in the meta's names order
                    "d": ["e", 2, 2, 100.5, (1.0, "de", True), 3, 0.25],
                    "e": ["e", 4, 3, 100.5, (1.0, "de", True), 3, 0.25],
                    META_KEY: {"max_ts": 101.0, "idle_watermark": None, "seq": 5, "names": ["x", "c", "b"]}}
    assert first["c"][1] == 2 and first["d"][1] == 3  # drained numbers; the snapshot's keep their order
    assert set(j.drain_changes()) == {"e", META_KEY}  # the snapshot did not consume the change log
    r = PartitionJoiner.restore(0, j.spec, json_rt(snap).items(), clock=FakeClock())
    for x in (j, r):
        x.process([E("z", 113.0, 4)])
    assert r.drain_changes() == j.drain_changes()
    assert run(r, []) == run(j, [])


def test_doctests() -> None:
    result = doctest.testmod(joiner_module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ property tests
#
# Scenario: events with unique ids, event time rising by 0..1 s per event (quarters, so
# deadlines tie often), then filler events every 1 s for 20 s past the last real one
# (event time stays dense past every label). Some events get a label at
# event.ts + delay, delay in [0, 1.5 * max_label_delay]; some records are duplicated
# as identical copies. Arrival order is the order of ts + noise, noise in [0, grace/2):
# a record can only arrive after records whose ts is < its own ts + grace/2, so no
# record is ever late (the watermark before it is < ts - grace/2).

QUARTERS_MAX = int(1.5 * D * 4)  # 60 quarters = 15 s


def order_safe_delay_quarters() -> st.SearchStrategy[int]:
    """Label delays for which the outcome cannot depend on arrival order (noise < G/2).

    An event e expires right after the first record r with r.ts > e.ts + D + G (12 s).
    - delay <= D + G/2 - 0.25 (10.75 s): the label's key is < e.ts + 11.75 < r.ts <= r's
      key, so the label always arrives before r: always ``joined``.
    - delay >= 14 s: event time is dense (gaps <= 1 s), so some event r has
      r.ts in (e.ts + 12, e.ts + 13] and key < e.ts + 14 <= the label's key: the label
      always arrives after the expiry: always expired + ``correction`` (negative) or a
      duplicate label (drop/dlq).
    Delays between 11 and 13.75 s can go either way, depending on the order.
    """
    return st.one_of(st.integers(0, int((D + G / 2) * 4) - 1), st.integers(56, QUARTERS_MAX))


@st.composite
def scenarios(draw: st.DrawFn, order_safe: bool = False, reuse: bool = False) -> dict[str, Any]:
    gaps = draw(st.lists(st.integers(0, 4), min_size=6, max_size=30))
    n = len(gaps)
    ts = 1000.0
    events: list[Event] = []
    floats = draw(st.booleans())  # all-float features: the changelog writes them as float64 text
    for k, gap in enumerate(gaps):
        ts += gap / 4
        events.append(Event(f"e{k}", ts, {"x": float(k), "c": k / 3 - 1.0 if floats else f"c{k % 3}"}, k % 4, k / 8))
    events += [Event(f"f{m}", ts + m, {"x": -1.0, "c": -0.0 if floats else "f"}, None, None) for m in range(1, 21)]
    delays = order_safe_delay_quarters() if order_safe else st.integers(0, QUARTERS_MAX)
    choices = draw(st.lists(st.one_of(st.none(), st.tuples(delays, st.booleans())), min_size=n, max_size=n))
    labels = [Label(e.id, e.ts + c[0] / 4, c[1]) for e, c in zip(events, choices) if c is not None]
    records: list[tuple[str, Event | Label]] = [("event", e) for e in events] + [("label", x) for x in labels]
    if reuse:  # ids seen again later, some within the done horizon (22 s), some past it
        for k, later, label in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(40, 120),
                                                       st.one_of(st.none(), st.booleans())), max_size=6)):
            e = events[k]
            records.append(("event", Event(e.id, e.ts + later / 4, {"x": 0.5, "c": "r"}, 1, None)))
            if label is not None:
                records.append(("label", Label(e.id, e.ts + later / 4 + 1, label)))
    dups = draw(st.lists(st.integers(0, len(records) - 1), max_size=8))
    records += [records[k] for k in dups]
    rnd = draw(st.randoms(use_true_random=False))
    noises = [[rnd.randrange(100) for _ in records] for _ in range(2)]
    return {"events": events, "labels": {x.id: x for x in labels}, "records": records,
            "noises": noises, "policy": draw(st.sampled_from(["negative", "drop", "dlq"]))}


def arrange(records: list[tuple[str, Any]], noise: list[int]) -> list[Input]:
    """Records in the order of ts + noise (noise < G/2), with per-topic offsets."""
    order = sorted(range(len(records)), key=lambda k: records[k][1].ts + noise[k] / 100 * (G / 2))
    offsets = {"event": 0, "label": 0}
    inputs = []
    for k in order:
        kind, rec = records[k]
        inputs.append(Input(kind, rec, offsets[kind]))  # type: ignore[arg-type]
        offsets[kind] += 1
    return inputs


def split(inputs: list[Input], cuts: list[int]) -> list[list[Input]]:
    bounds = [0] + sorted(c % (len(inputs) + 1) for c in cuts) + [len(inputs)]
    return [inputs[a:b] for a, b in zip(bounds, bounds[1:])]


def run(j: PartitionJoiner, batches: list[list[Input]]) -> JoinOutput:
    """Process the batches, then flush: an idle tick far in the future expires everything."""
    out = JoinOutput()
    for batch in batches:
        out.extend(j.process(batch))
    out.extend(j.tick(now=1e6))
    return out


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios())
def test_every_event_has_exactly_one_outcome_and_the_right_label(sc: dict[str, Any]) -> None:
    policy = sc["policy"]
    inputs = arrange(sc["records"], sc["noises"][0])
    j = PartitionJoiner(0, spec(policy), clock=FakeClock())
    out = run(j, [inputs])
    events, labels = {e.id: e for e in sc["events"]}, sc["labels"]
    first_offset = {}
    for x in inputs:
        if x.kind == "event":
            first_offset.setdefault(x.record.id, x.offset)
    offset_to_id = {x.offset: x.record.id for x in inputs if x.kind == "event"}

    # no record is late and every label finds its event (the generator's guarantees)
    assert all(d.reason is Reason.EXPIRED and d.kind == "event" for d in out.dead_letters)
    dlq_ids = [offset_to_id[d.offset] for d in out.dead_letters]
    joined = [x for x in out.examples if x.outcome == "joined"]
    expired = [x for x in out.examples if x.outcome == "expired"]
    corrections = [x for x in out.examples if x.outcome == "correction"]
    closed = [x.id for x in joined] + [x.id for x in expired] + dlq_ids
    # (a) exactly one of joined / expired / dropped / dead-lettered per event
    assert len(closed) == len(set(closed))
    assert len(events) - len(closed) == j.counts["expired_dropped"]
    assert set(closed) <= set(events)
    if policy != "drop":
        assert set(closed) == set(events)
    assert len({x.id for x in corrections}) == len(corrections)
    # (b) labels and the event's own fields
    for x in out.examples:
        e = events[x.id]
        assert (x.event_ts, x.features, x.served_version, x.prediction) == \
            (e.ts, e.features, e.served_version, e.prediction)
        assert x.source_partition == 0 and x.source_offset == first_offset[x.id]
    for x in joined + corrections:
        assert (x.label, x.label_ts) == (labels[x.id].label, labels[x.id].ts)
    for x in expired:
        assert x.label is False and x.label_ts is None
    expired_ids = {x.id for x in expired}
    assert {x.id for x in corrections} <= expired_ids
    if policy == "negative":  # every label is within the horizon: an expired labelled event is corrected
        assert {x.id for x in corrections} == expired_ids & set(labels)
    assert {x.id for x in joined} <= set(labels)
    assert sorted(j.drain_label_delays()) == sorted(x.label_ts - x.event_ts for x in joined)  # type: ignore[operator]
    assert j.pending_events == j.pending_labels == 0 and j.remembered == 0


@PROPERTY
@given(scenarios(), st.lists(st.integers(0, 10_000), min_size=1, max_size=12))
def test_output_does_not_depend_on_batch_boundaries(sc: dict[str, Any], cuts: list[int]) -> None:
    inputs = arrange(sc["records"], sc["noises"][0])
    whole = run(PartitionJoiner(0, spec(sc["policy"]), clock=FakeClock()), [inputs])
    j = PartitionJoiner(0, spec(sc["policy"]), clock=FakeClock())
    cut = run(j, split(inputs, cuts))
    assert cut.examples == whole.examples and cut.dead_letters == whole.dead_letters
    assert Counter((x.id, x.outcome, x.label) for x in cut.examples) == \
        Counter((x.id, x.outcome, x.label) for x in whole.examples)


@PROPERTY
@given(scenarios(order_safe=True))
def test_output_does_not_depend_on_arrival_order_within_the_grace(sc: dict[str, Any]) -> None:
    outs = []
    for noise in sc["noises"]:
        out = run(PartitionJoiner(0, spec(sc["policy"]), clock=FakeClock()), [arrange(sc["records"], noise)])
        assert not any(d.reason is Reason.LATE for d in out.dead_letters)
        outs.append(out)
    a, b = (Counter((x.id, x.outcome, x.label) for x in out.examples) for out in outs)
    assert a == b
    ids_a, ids_b = (sorted(d.record.id for d in out.dead_letters) for out in outs)  # type: ignore[union-attr]
    assert ids_a == ids_b


@PROPERTY
@given(scenarios(reuse=True), st.data())
def test_restore_from_the_changelog_continues_identically(sc: dict[str, Any], data: st.DataObject) -> None:
    restore_scenario(sc, data, PartitionJoiner, PartitionJoiner)


def restore_scenario(sc: dict[str, Any], data: st.DataObject, original_cls: Any, restored_cls: Any) -> None:
    """Run a ``original_cls`` joiner through the scenario's batches up to a drawn point,
    restore a ``restored_cls`` joiner from all it drained, and check that both go on alike."""
    inputs = arrange(sc["records"], sc["noises"][0])
    batches = split(inputs, data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=12), label="cuts"))
    # between batches: nothing, a drain, or an idle tick (constant clock 0, so `now` is the
    # idle time; below IDLE it does nothing, above it the watermark jumps)
    ops: list[Any] = []
    for batch in batches:
        ops.append(batch)
        ops.append(data.draw(st.sampled_from(["", "drain", 2.0, 6.0, 9.0]), label="op"))
    at = data.draw(st.integers(0, len(ops)), label="restore point")
    policy = sc["policy"]
    original = original_cls(0, spec(policy), clock=FakeClock())
    changelog: list[tuple[str, Any]] = []
    for op in ops[:at]:
        changes = apply_op(original, op, JoinOutput())
        if changes is not None:
            changelog.extend(json_rt(changes).items())
    changelog.extend(json_rt(original.drain_changes()).items())
    restored = restored_cls.restore(0, spec(policy), changelog, clock=FakeClock())
    assert_continues_identically(original, restored, ops[at:])


def apply_op(j: PartitionJoiner, op: Any, out: JoinOutput) -> dict[str, Any] | None:
    """Run one step of a scenario: a batch, an idle tick at ``now=op`` (a float), or a
    ``"drain"`` (its changes are returned)."""
    if isinstance(op, list):
        out.extend(j.process(op))
    elif isinstance(op, float):
        out.extend(j.tick(now=op))
    return j.drain_changes() if op == "drain" else None


def assert_continues_identically(original: PartitionJoiner, restored: PartitionJoiner, ops: list[Any]) -> None:
    """``restored`` holds what ``original`` holds, and both give the same outputs and
    changes through ``ops`` and a final flush."""
    assert (restored.watermark, restored.pending_events, restored.pending_labels, restored.remembered) == \
        (original.watermark, original.pending_events, original.pending_labels, original.remembered)
    outs = []
    for j in (original, restored):
        out = JoinOutput()
        for op in ops:
            apply_op(j, op, out)
        outs.append(out)
    assert outs[0] == outs[1]
    assert original.drain_changes() == restored.drain_changes()
    assert run(original, []) == run(restored, [])


@PROPERTY
@given(scenarios(reuse=True), st.data())
def test_restore_from_a_snapshot_and_later_drains_continues_identically(sc: dict[str, Any],
                                                                        data: st.DataObject) -> None:
    inputs = arrange(sc["records"], sc["noises"][0])
    batches = split(inputs, data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=12), label="cuts"))
    ops: list[Any] = []
    for batch in batches:
        ops += [batch, data.draw(st.sampled_from(["", "drain", 2.0, 6.0, 9.0]), label="op")]
    snap_at = data.draw(st.integers(0, len(ops)), label="snapshot point")
    at = data.draw(st.integers(snap_at, len(ops)), label="restore point")
    drain_first = data.draw(st.booleans(), label="drain before the snapshot")  # what the worker does
    policy = sc["policy"]
    original = PartitionJoiner(0, spec(policy), clock=FakeClock())
    twin = PartitionJoiner(0, spec(policy), clock=FakeClock())  # the same, never snapshotted
    for op in ops[:snap_at]:
        for j in (original, twin):
            apply_op(j, op, JoinOutput())
    if drain_first:
        assert original.drain_changes() == twin.drain_changes()
    changelog = list(json_rt(original.snapshot()).items())
    for op in ops[snap_at:at]:
        changes = apply_op(original, op, JoinOutput())
        assert changes == apply_op(twin, op, JoinOutput())  # the snapshot left the change log alone
        if changes is not None:
            changelog.extend(json_rt(changes).items())
    changelog.extend(json_rt(original.drain_changes()).items())
    twin.drain_changes()
    restored = PartitionJoiner.restore(0, spec(policy), changelog, clock=FakeClock())
    assert_continues_identically(original, restored, ops[at:])


def test_dead_letter_record_is_not_part_of_equality() -> None:
    a = DeadLetter("event", 0, 1, Reason.LATE, "x", ev("a", 1.0))
    assert a == DeadLetter("event", 0, 1, Reason.LATE, "x")


# ------------------------------------------------------------- fast path vs general path

# ids either side of the native state's inline key bound (22 bytes; 'é' is two), and one
# that is another id and a NUL (an inline key's unused bytes are NULs)
POOL = [f"i{k}" for k in range(13)] + ["i" * 22, "i" * 23, "é" * 11, "é" * 11 + "i", "é" * 10 + "i", "i1\x00"]


@st.composite
def messy_inputs(draw: st.DrawFn) -> list[Input]:
    """Random records from a small id pool: events and labels in any order, duplicates,
    re-used ids, late records (ts jumping back), ties, and events whose feature names
    differ from the first event's (so they keep their own dict). The id pool: ``POOL``."""
    n = draw(st.integers(1, 80))
    ts = 1000.0
    inputs = []
    offsets = {"event": 0, "label": 0}
    for _ in range(n):
        ts += draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 7.0, -1.0, -4.0]))
        kind = draw(st.sampled_from(["event", "label"]))
        i = POOL[draw(st.integers(0, len(POOL) - 1))]
        if kind == "event":
            shape = draw(st.integers(0, 5))
            feats: dict[str, Any] = {"x": ts, "c": "a", "b": True} if shape else {"x": ts, "other": 1}
            rec: Event | Label = Event(i, ts, feats, draw(st.sampled_from([None, 1])), 0.5)
        else:
            rec = Label(i, ts, draw(st.booleans()))
        inputs.append(Input(kind, rec, offsets[kind]))  # type: ignore[arg-type]
        offsets[kind] += 1
    return inputs


@PROPERTY
@given(messy_inputs(), st.sampled_from(["negative", "drop", "dlq"]), st.data())
def test_fast_path_gives_what_the_general_path_gives(inputs: list[Input], policy: str,
                                                     data: st.DataObject) -> None:
    """``process`` handles the common cases inline; ``_fast = False`` sends every record
    through ``_record``, the general path. Both give the same outputs, changes, snapshots,
    counters and state, whatever the batches and the drains, ticks and capacity expiries
    between them."""
    batches = split(inputs, data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8), label="cuts"))
    ops = [op for batch in batches
           for op in (batch, data.draw(st.sampled_from(["", "drain", "snapshot", "capacity", 6.0]), label="op"))]
    fast = PartitionJoiner(0, spec(policy), clock=FakeClock())
    general = PartitionJoiner(0, spec(policy), clock=FakeClock())
    general._fast = False
    results = []
    for j in (fast, general):
        out, seen = JoinOutput(), []
        for op in ops:
            if op == "snapshot":
                seen.append(j.snapshot())
            elif op == "capacity":
                out.extend(j.expire_oldest(1))
            else:
                seen.append(apply_op(j, op, out))
        out.extend(j.tick(now=1e6))
        seen += [j.drain_changes(), j.snapshot(), dict(j.counts), j.drain_label_delays(),
                 (j.watermark, j.pending_events, j.pending_labels, j.remembered)]
        results.append((out, seen))
    assert results[0][0].examples == results[1][0].examples
    assert results[0][0].dead_letters == results[1][0].dead_letters
    assert [(d.detail, d.record) for d in results[0][0].dead_letters] == \
        [(d.detail, d.record) for d in results[1][0].dead_letters]
    assert results[0][1] == results[1][1]


def test_fast_path_is_taken_for_the_common_case() -> None:
    """A new event and the label that joins it do not reach the general path."""
    j = joiner()
    calls = []
    general = j._record
    j._record = lambda *a: calls.append(a[0]) or general(*a)  # type: ignore[method-assign]
    j.process([E("a", 100.0, 0)])  # the first event teaches the feature names: general path
    assert calls == ["event"]
    out = j.process([E("b", 101.0, 1), L("b", 102.0, 0), L("a", 103.0, 1)])
    assert calls == ["event"] and [x.outcome for x in out.examples] == ["joined", "joined"]


# ------------------------------------------------- the native state against the reference

native_only = pytest.mark.skipif(joiner_module._native is None, reason="needs ct_stream._native (cargo)")


def drive(j: Any, ops: list[Any]) -> tuple[JoinOutput, list[Any]]:
    """Run ``ops`` (batches, drains, snapshots, capacity expiries, idle ticks, early
    forgetting) on ``j``, then flush; what it gave and every view of its state."""
    out, seen = JoinOutput(), []
    for op in ops:
        if op == "snapshot":
            seen.append(j.snapshot())
        elif op == "encoded":
            seen.append(sorted(map(orjson.loads, j.snapshot_encoded())))
        elif op == "capacity":
            out.extend(j.expire_oldest(1))
            seen.append(j.oldest_deadline())
        elif op == "forget":
            seen.append((j.oldest_memory(), j.forget_oldest()))
        elif op in ("packed", "packed snapshot"):  # the chunks the changelog writer takes
            packed = j.drain_encoded(max_bytes=300) if op == "packed" else j.snapshot_encoded(max_bytes=300)
            chunks = [orjson.loads(c) for c in packed.chunks]
            assert all(len(c) <= 300 or len(orjson.loads(c)) == 1 for c in packed.chunks)
            assert len(packed) == sum(map(len, chunks))
            seen.append(sorted(pair for chunk in chunks for pair in chunk))
        else:
            seen.append(apply_op(j, op, out))
        seen.append((j.watermark, j.max_ts, j.pending_events, j.pending_labels, j.remembered))
    out.extend(j.tick(now=1e6))
    seen += [j.drain_changes(), j.snapshot(), dict(j.counts), j.drain_label_delays(),
             (j.watermark, j.pending_events, j.pending_labels, j.remembered)]
    return out, seen


def assert_same_outputs(a: JoinOutput, b: JoinOutput) -> None:
    assert a.examples == b.examples
    assert a.rows == b.rows  # the rows themselves: entries and names tuples included
    assert a.dead_letters == b.dead_letters
    assert [(d.detail, d.record, d.source) for d in a.dead_letters] == \
        [(d.detail, d.record, d.source) for d in b.dead_letters]


@native_only
@PROPERTY
@given(messy_inputs(), st.sampled_from(["negative", "drop", "dlq"]), st.data())
def test_native_state_gives_what_the_reference_gives(inputs: list[Input], policy: str, data: st.DataObject) -> None:
    """:class:`NativePartitionJoiner` (the state in Rust) against :class:`PartitionJoiner`
    on the same inputs: the same rows, dead letters (with their details), changes,
    snapshots (decoded and encoded), counters and state after every step."""
    batches = split(inputs, data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8), label="cuts"))
    ops = [op for batch in batches
           for op in (batch, data.draw(st.sampled_from(["", "drain", "snapshot", "encoded", "capacity", "forget",
                                                        "packed", "packed snapshot", 6.0, 30.0]), label="op"))]
    ref = drive(PartitionJoiner(0, spec(policy), clock=FakeClock()), ops)
    got = drive(joiner_module.NativePartitionJoiner(0, spec(policy), clock=FakeClock()), ops)
    assert_same_outputs(got[0], ref[0])
    assert got[1] == ref[1]


@native_only
@PROPERTY
@given(scenarios(reuse=True), st.data())
def test_native_and_reference_restore_each_others_changelog(sc: dict[str, Any], data: st.DataObject) -> None:
    """The change log is one format: a native joiner restored from a reference joiner's
    drains (and the other way round) continues exactly as the original."""
    classes = [joiner_module.NativePartitionJoiner, PartitionJoiner]
    native_first = data.draw(st.booleans(), label="the original is native")
    restore_scenario(sc, data, *(classes if native_first else classes[::-1]))


@native_only
def test_native_encoded_drain_decodes_to_the_reference_drain() -> None:
    """``drain_encoded`` of the native state is the reference's ``drain_changes``, pair by pair."""
    inputs = [E("a", 100.0, 0), E("b", 100.5, 1), L("a", 101.0, 0), L("z", 101.5, 1), E("c", 115.0, 2)]
    ref, nat = joiner(), joiner_module.NativePartitionJoiner(0, spec(), clock=FakeClock())
    for j in (ref, nat):
        j.process(inputs)
    pairs = nat.drain_encoded()
    assert isinstance(pairs, list) and dict(map(orjson.loads, pairs)) == json_rt(ref.drain_changes())
    assert nat.drain_encoded() == [] and ref.drain_changes() == {}


def test_the_worker_joins_with_the_native_state_when_it_is_built() -> None:
    """With the module the worker restores into the native joiner and feeds it the
    decoder's packed entries (in the schema's feature order), which the decoder queues
    into the native mergers itself; without it, the reference."""
    from ct_stream.runtime.joiner import JoinerWorker
    from ct_stream.topology import Topology

    t = Topology(name="w", events_topic="w.events", labels_topic="w.labels", features={"b": "float", "a": "int"},
                 label_type="binary")
    worker = JoinerWorker(t, "127.0.0.1:9")  # nothing connects before setup()
    native = joiner_module._native is not None
    assert joiner_module.partition_joiner_class() is \
        (joiner_module.NativePartitionJoiner if native else PartitionJoiner)
    assert (worker._items_into is not None) == native and worker._entry_names == ("b", "a")


class FakeMessage:
    """The parts of a confluent-kafka message the native decoder's ``items`` reads."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset


#: the two forms of entries ``Decoder.items`` packs: tuples (a schema with an int and a
#: str feature) and ``EventEntry`` objects (every feature a float)
#: (``multiclass``: class-name labels and predictions)
CONTRACT_SCHEMAS = {"mixed": {"x": "float", "n": "int", "c": "str"}, "floats": {"x": "float", "n": "float"},
                    "floats multiclass": {"x": "float", "n": "float"}}


@st.composite
def contract_inputs(draw: st.DrawFn, floats: bool = False, multiclass: bool = False) -> list[Input]:
    """Random records that follow a record schema (so the native decoder packs them):
    events and labels from a small id pool in any order, duplicates, late records
    (``floats``: for the all-float schema of :data:`CONTRACT_SCHEMAS`)."""
    n = draw(st.integers(1, 80))
    ts, inputs, offsets = 1000.0, [], {"event": 0, "label": 0}
    for _ in range(n):
        ts += draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 7.0, -1.0, -4.0]))
        kind = draw(st.sampled_from(["event", "label"]))
        i = f"i{draw(st.integers(0, 12))}"
        features = {"x": ts, "n": float(draw(st.integers(-3, 3)))} if floats else \
            {"x": ts, "n": draw(st.integers(-3, 3)), "c": "a"}
        prediction = draw(st.sampled_from([None, "b", "c"] if multiclass else [None, 0.5]))
        rec: Event | Label = Event(i, ts, features, draw(st.sampled_from([None, 1])), prediction) \
            if kind == "event" else Label(i, ts, draw(st.sampled_from(["b", "c"]) if multiclass else st.booleans()))
        inputs.append(Input(kind, rec, offsets[kind]))  # type: ignore[arg-type]
        offsets[kind] += 1
    return inputs


@native_only
@PROPERTY
@pytest.mark.parametrize("form", sorted(CONTRACT_SCHEMAS))
@given(data=st.data(), policy=st.sampled_from(["negative", "drop", "dlq"]))
def test_entry_records_from_the_decoder_join_as_the_decoded_records(form: str, policy: str,
                                                                    data: st.DataObject) -> None:
    """The worker's native path: ``Decoder.items`` packs the joiner's entries straight
    from the message bytes (no ``Event`` / ``Label``), and the native joiner takes them:
    entry tuples, or ``EventEntry`` objects for an all-float schema. The examples, dead
    letters (details and records), changes (decoded, and encoded natively), snapshots
    and counters are those of the reference joiner fed the decoded records (the feature
    names may be learnt one record earlier: the meta entry's ``names`` is compared once
    both know them); the examples' Arrow messages are the same bytes."""
    from ct_stream.join.arrow import example_messages
    from ct_stream.records import RecordSchema, encode_event, encode_label

    inputs = data.draw(contract_inputs(floats=form != "mixed", multiclass="multiclass" in form), label="inputs")
    schema = RecordSchema(features=CONTRACT_SCHEMAS[form], label_type="multiclass" if "multiclass" in form else "binary")
    decoder = schema._native_decoder
    names = tuple(schema.features)
    packed: list[Any] = []
    for x in inputs:
        value = encode_event(x.record, schema) if x.kind == "event" else encode_label(x.record, schema)
        items, missing = decoder.items(x.kind, [FakeMessage(value, x.offset)], x.kind == "event")
        assert missing == []
        packed.append(items[0][1])
    flat = joiner_module._native.EventEntry  # type: ignore[union-attr]
    assert all(type(p[1]) is (flat if form != "mixed" and p[0] == "event" else tuple) for p in packed)
    cuts = data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8), label="cuts")
    ops = data.draw(st.lists(st.sampled_from(["", "drain", "encoded", "snapshot", "encoded snapshot", 6.0]),
                             min_size=12, max_size=12), label="ops")
    bounds = [0] + sorted(c % (len(inputs) + 1) for c in cuts) + [len(inputs)]
    kw = {"default_label": "c"} if "multiclass" in form and policy == "negative" else {}
    ref = PartitionJoiner(0, spec(policy, **kw), clock=FakeClock())
    nat = joiner_module.NativePartitionJoiner(0, spec(policy, **kw), clock=FakeClock())
    outs = [JoinOutput(), JoinOutput()]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        outs[0].extend(ref.process(inputs[a:b]))
        outs[1].extend(nat.process(packed[a:b], names))  # type: ignore[arg-type]
        op = ops[k % len(ops)]
        if op == "drain":
            want, got = ref.drain_changes(), nat.drain_changes()
            if ref._names is None:  # not learnt yet by the reference: the rest must agree
                want.pop(META_KEY, None)
                got.pop(META_KEY, None)
            assert got == want
        elif op == "encoded":  # the pairs encoded in Rust, from the entries themselves
            want, pairs = json_rt(ref.drain_changes()), nat.drain_encoded()
            got = dict(map(orjson.loads, pairs))
            if ref._names is None:
                want.pop(META_KEY, None)
                got.pop(META_KEY, None)
            assert got == want
        elif op == "snapshot" and ref._names is not None:
            assert nat.snapshot() == ref.snapshot()
        elif op == "encoded snapshot" and ref._names is not None:
            assert dict(map(orjson.loads, nat.snapshot_encoded())) == json_rt(ref.snapshot())
        elif op == 6.0:
            outs[0].extend(ref.tick(now=6.0))
            outs[1].extend(nat.tick(now=6.0))
    for j, out in zip((ref, nat), outs):
        out.extend(j.tick(now=1e6))
    assert outs[1].examples == outs[0].examples
    assert [m for _, m in example_messages(outs[1].rows, schema)] == \
        [m for _, m in example_messages(outs[0].rows, schema)]
    assert [(d.kind, d.offset, d.reason, d.detail, d.record) for d in outs[1].dead_letters] == \
        [(d.kind, d.offset, d.reason, d.detail, d.record) for d in outs[0].dead_letters]
    assert dict(nat.counts) == dict(ref.counts)
    assert (nat.watermark, nat.pending, nat.remembered) == (ref.watermark, ref.pending, ref.remembered)


@native_only
@PROPERTY
@given(data=st.data(), floats=st.booleans(), policy=st.sampled_from(["negative", "dlq"]))
def test_the_native_joiner_takes_the_merger_records_as_take_payloads_gives_them(floats: bool, policy: str,
                                                                                data: st.DataObject) -> None:
    """``NativePartitionJoiner.process_merged`` (the worker's native path) reads the native
    merger's queues itself: the parts ``Decoder.items_into`` queued (no payload tuple per
    record) and records queued as Python objects (``add``, as the worker ``put``s what
    Python decoded). Step after step it gives what ``take_payloads`` then ``process``
    give: the same rows, dead letters (a late record's with the same message), number of
    inputs and last offset of each kind, and the same state."""
    from ct_stream.records import RecordSchema, encode_event, encode_label

    inputs = data.draw(contract_inputs(floats=floats), label="inputs")
    schema = RecordSchema(features=CONTRACT_SCHEMAS["floats" if floats else "mixed"], label_type="binary")
    decoder, names = schema._native_decoder, tuple(schema.features)
    native = joiner_module._native
    mergers = [native.Merger(G, 0.0, FakeClock()) for _ in range(2)]  # type: ignore[union-attr]
    joiners = [joiner_module.NativePartitionJoiner(0, spec(policy), clock=FakeClock()) for _ in range(2)]
    cuts = data.draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=6), label="cuts")
    bounds = [0] + sorted(c % (len(inputs) + 1) for c in cuts) + [len(inputs)]
    outs = [JoinOutput(), JoinOutput()]
    for a, b in zip(bounds, bounds[1:]):
        for kind in ("event", "label"):
            batch = [x for x in inputs[a:b] if x.kind == kind]
            encode = encode_event if kind == "event" else encode_label
            msgs = [FakeMessage(encode(x.record, schema), x.offset) for x in batch]  # type: ignore[arg-type]
            if data.draw(st.booleans(), label=f"{kind}s as decoded records"):
                for m in mergers:
                    m.add(kind, [(x.record.ts, (kind, x.record, x.offset, msg)) for x, msg in zip(batch, msgs)])
            else:
                for m in mergers:
                    assert decoder.items_into(m, kind, msgs, kind == "event")[1] == []
        for m in mergers:
            m.mark_end("event")
            m.mark_end("label")
        taken = mergers[0].take_payloads()
        outs[0].extend(joiners[0].process(taken, names))
        out, n, offsets = joiners[1].process_merged(mergers[1], names)
        outs[1].extend(out)
        assert n == len(taken)
        assert offsets == tuple(next((x[2] for x in reversed(taken) if x[0] == kind), None)
                                for kind in ("event", "label"))
        assert mergers[1].buffered("event") == mergers[0].buffered("event") == 0
        assert joiners[1].drain_changes() == joiners[0].drain_changes()
    for j, out in zip(joiners, outs):
        out.extend(j.tick(now=1e6))
    assert_same_outputs(outs[1], outs[0])
    assert dict(joiners[1].counts) == dict(joiners[0].counts)
    assert joiners[1].snapshot() == joiners[0].snapshot()
