"""PartitionMerger: events and labels of a partition released in event-time order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ct_stream.join.merge import PartitionMerger
from ct_stream.native import module as _native

sorted_ts = st.lists(st.floats(0, 1000, allow_nan=False), max_size=40).map(sorted)


@settings(max_examples=200, deadline=None)
@given(events=sorted_ts, labels=sorted_ts, data=st.data())
def test_any_chunking_of_the_two_topics_releases_one_timestamp_ordered_stream(events, labels, data):
    queues = {"event": [(ts, ("event", i)) for i, ts in enumerate(events)],
              "label": [(ts, ("label", i)) for i, ts in enumerate(labels)]}
    merger = PartitionMerger()
    out = []
    while queues["event"] or queues["label"]:
        kind = data.draw(st.sampled_from([k for k in queues if queues[k]]))
        n = data.draw(st.integers(1, len(queues[kind])))
        merger.add(kind, queues[kind][:n])
        queues[kind] = queues[kind][n:]
        out.extend(merger.take())
    merger.mark_end("event")
    merger.mark_end("label")
    out.extend(merger.take())

    assert len(out) == len(events) + len(labels)
    stamps = [(events if kind == "event" else labels)[i] for kind, (_, i) in out]
    assert stamps == sorted(stamps), "released in timestamp order"
    for kind in ("event", "label"):
        assert [i for k, (_, i) in out if k == kind] == list(range(len(events if kind == "event" else labels)))


def test_a_lone_topic_waits_for_the_other_until_that_one_is_at_its_end():
    m = PartitionMerger()
    m.add("label", [(5.0, "l")])
    assert m.take() == []
    m.mark_end("event")
    assert m.take() == [("label", "l")]
    m.add("event", [(1.0, "e")])  # new data: the events topic is no longer at its end
    m.add("label", [(2.0, "l2")])
    assert m.take() == [("event", "e")], "l2 waits: the events topic may hold more before ts 2.0"
    m.mark_end("event")
    assert m.take() == [("label", "l2")]


def test_undecodable_records_pass_at_once_keeping_offset_order():
    m = PartitionMerger()
    m.add("event", [(None, "bad1"), (4.0, "e"), (None, "bad2")])
    assert m.take() == [("event", "bad1")]
    m.add("label", [(3.0, "l")])
    assert [x for _, x in m.take()] == ["l"]
    m.mark_end("label")
    assert [x for _, x in m.take()] == ["e", "bad2"]


def test_waiting_for_names_the_topic_that_holds_the_other_back():
    m = PartitionMerger()
    assert m.waiting_for() is None
    m.add("event", [(1.0, "e")])
    assert m.waiting_for() == "label"
    m.mark_end("label")
    assert m.waiting_for() is None
    assert m.take() == [("event", "e")]


def test_past_the_other_topics_end_records_go_only_grace_ahead_until_held_max_wait():
    now = [0.0]
    m = PartitionMerger(grace=2.0, max_wait=5.0, clock=lambda: now[0])
    m.add("event", [(1.0, "e1")])
    m.add("label", [(1.5, "l1"), (2.5, "l2"), (9.0, "l9")])
    assert [x for _, x in m.take()] == ["e1"]
    m.mark_end("event")
    assert [x for _, x in m.take()] == ["l1", "l2"], "within grace of the newest event: safe"
    now[0] = 4.9
    assert m.take() == [], "l9 could make events still in flight late: it waits"
    m.add("event", [(3.0, "e3")])  # the event that was in flight
    assert [x for _, x in m.take()] == ["e3"]
    m.mark_end("event")
    now[0] = 20.0
    assert m.take() == []  # held since now: waits max_wait again
    now[0] = 25.0
    assert [x for _, x in m.take()] == ["l9"]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_take_payloads_releases_what_take_releases_without_the_kinds(data):
    """Two mergers fed alike (undecodable records, unsorted stamps, ends, the max_wait
    clock) release the same payloads in the same order, one through take(), one
    through take_payloads()."""
    now = [0.0]
    mergers = [PartitionMerger(1.0, 5.0, lambda: now[0]) for _ in range(2)]
    taken: list[list] = [[], []]
    stamp = st.one_of(st.none(), st.floats(0, 100, allow_nan=False))
    for step in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["add-event", "add-label", "end-event", "end-label", "wait"]))
        if op.startswith("add"):
            kind = op[4:]
            items = [(ts, (kind, step, k)) for k, ts in enumerate(data.draw(st.lists(stamp, max_size=6)))]
            for m in mergers:
                m.add(kind, items)
        elif op.startswith("end"):
            for m in mergers:
                m.mark_end(op[4:])
        else:
            now[0] += data.draw(st.sampled_from([1.0, 6.0]))
        taken[0].extend(x for _, x in mergers[0].take())
        taken[1].extend(mergers[1].take_payloads())
    assert taken[0] == taken[1]


@pytest.mark.skipif(_native is None, reason="ct_stream._native is not built (no cargo)")
@settings(max_examples=300, deadline=None)
@given(data=st.data(), grace=st.sampled_from([0.0, 1.0]), max_wait=st.sampled_from([0.0, 5.0]))
def test_native_merger_releases_what_the_reference_releases(data, grace, max_wait):
    """``ct_stream._native.Merger`` (the worker's merger with the native data path) and
    ``PartitionMerger`` fed alike (undecodable records, ties and unsorted stamps, ends of
    partition, the ``max_wait`` clock, records placed with ``Decoder.items_into`` and
    ``put``) release the same (kind, payload) pairs in the same order, through ``take``
    and ``take_payloads``, and agree on ``buffered`` and ``waiting_for`` after every step."""
    now = [0.0]
    ref = PartitionMerger(grace, max_wait, lambda: now[0])
    nat = _native.Merger(grace, max_wait, lambda: now[0])
    stamp = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, 2.5, 4.0]), st.floats(0, 100, allow_nan=False))
    for step in range(data.draw(st.integers(1, 16))):
        op = data.draw(st.sampled_from(["add-event", "add-label", "end-event", "end-label", "wait"]))
        if op.startswith("add"):
            kind = op[4:]
            items = [(ts, (kind, step, k)) for k, ts in enumerate(data.draw(st.lists(stamp, max_size=6)))]
            ref.add(kind, items)
            if data.draw(st.booleans()):
                nat.add(kind, items)
            else:  # placeholders first, then each record put in its place (the decoder's fallback)
                base = nat.buffered(kind)
                nat.add(kind, [(None, None)] * len(items))
                for k, (ts, payload) in enumerate(items):
                    nat.put(kind, base + k, ts, payload)
        elif op.startswith("end"):
            ref.mark_end(op[4:])
            nat.mark_end(op[4:])
        else:
            now[0] += data.draw(st.sampled_from([1.0, 6.0]))
        if data.draw(st.booleans()):
            assert nat.take() == ref.take()
        else:
            assert nat.take_payloads() == ref.take_payloads()
        assert (nat.buffered("event"), nat.buffered("label"), nat.waiting_for()) == \
            (ref.buffered("event"), ref.buffered("label"), ref.waiting_for())
