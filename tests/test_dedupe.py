"""The trainer's dedupe memory: the native RecentKeys against the reference, step for step."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ct_stream.runtime import dedupe
from ct_stream.runtime.dedupe import RecentKeys, dedupe_flags, keys_array, recent_keys

native = pytest.mark.skipif(dedupe._native is None, reason="ct_stream._native is not built (no cargo)")

# short ids; ids around the native key's inline bound (22 bytes: 22 or 23 of them, 'é'
# two bytes each, the emoji four); an id and the same with a NUL (the unused bytes of an
# inline key are NULs)
AWKWARD = ["a" * 22, "a" * 23, "é" * 11, "é" * 11 + "a", "a" * 19 + "\U0001f600", "a" * 18 + "\U0001f600",
           "b", "b\x00"]
IDS = st.text(alphabet="ab\x00é\U0001f600", min_size=0, max_size=3) | st.sampled_from(AWKWARD)


def table(ids: list[str], outcomes: list[str], skip: int) -> pa.Table:
    """The rows as the trainer's tables hold them; the id column sliced ``skip`` rows into
    a longer array (an Arrow offset that is not 0, as a slice of a batch has)."""
    col = pa.array(["pad"] * skip + ids, pa.string()).slice(skip)
    return pa.table({"id": col, "outcome": pa.array(outcomes, pa.string())})


batches = st.lists(
    st.tuples(st.lists(st.tuples(IDS, st.sampled_from(["joined", "expired", "correction"])), max_size=12),
              st.integers(0, 3), st.booleans()),
    max_size=25)


def test_the_reference_flags_repeats_within_the_window_and_forgets_beyond_it():
    r = RecentKeys(3)
    assert r.add(["a", "b"]) is None
    assert r.add(["b", "c", "c", "d"]) == [False, True, False, True]
    assert r.keys() == ["b", "c", "d"]  # "a" was the oldest of four
    assert r.add(["a"]) is None and r.keys() == ["c", "d", "a"]


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window=st.integers(1, 8), start=st.lists(IDS, max_size=6), steps=batches)
def test_native_keys_give_the_references_flags_and_keys_at_every_step(window, start, steps):
    ref, nat = RecentKeys(window, start), recent_keys(window, start)
    assert isinstance(nat, dedupe._native.RecentKeys)
    for rows, skip, plain in steps:
        ids = [i for i, _ in rows]
        outcomes = ["joined" if plain else o for _, o in rows]
        t = table(ids, outcomes, skip)
        assert dedupe_flags(nat, t) == dedupe_flags(ref, t)
        assert nat.keys() == ref.keys() and len(nat) == len(ref)
        assert keys_array(nat).equals(keys_array(ref))
        assert keys_array(nat).to_pylist() == ref.keys()
    again = recent_keys(window, keys_array(nat).to_pylist())  # as a checkpoint restores it
    assert again.keys() == nat.keys()


@native
def test_the_native_path_reads_the_buffers_and_refuses_what_is_not_a_string_array():
    nat = recent_keys(10, ["x"])
    col = pa.array(["x", "y", "é"], pa.string())
    _, offsets, data = col.buffers()
    assert nat.add_utf8(offsets, data, 0, 3) == [False, True, True]
    before = nat.keys()
    bad_utf8 = pa.py_buffer(b"ab\xff")
    ok_offsets = pa.py_buffer(pa.array([0, 1, 2, 3], pa.int32()).buffers()[1])
    with pytest.raises(ValueError, match="UTF-8"):
        nat.add_utf8(ok_offsets, bad_utf8, 0, 3)
    inside_a_char = pa.py_buffer(pa.array([0, 1, 4], pa.int32()).buffers()[1])
    with pytest.raises(ValueError, match="inside a character"):
        nat.add_utf8(inside_a_char, pa.py_buffer("éé".encode()), 0, 2)  # 1 is inside the first é
    decreasing = pa.py_buffer(pa.array([0, 2, 1], pa.int32()).buffers()[1])
    with pytest.raises(ValueError, match="decreasing"):
        nat.add_utf8(decreasing, pa.py_buffer(b"abc"), 0, 2)
    with pytest.raises(ValueError, match="offsets"):
        nat.add_utf8(offsets, data, 2, 3)  # past the end of the offsets
    assert nat.keys() == before  # a refused call adds nothing


@native
def test_a_table_with_corrections_takes_the_list_path_with_the_same_answer():
    nat, ref = recent_keys(10), RecentKeys(10)
    t = pa.table({"id": ["a", "a"], "outcome": ["expired", "correction"]})
    assert dedupe_flags(nat, t) == dedupe_flags(ref, t) is None  # a correction is not a repeat
    assert nat.keys() == ref.keys() == ["a", "a\x00correction"]
