"""ct_stream.window: the window store stays within its row and byte bounds, evicts oldest
first, splits without overlap; snapshots round-trip, hash their bytes, refuse tampering,
leave no temp file and prune the oldest."""

from __future__ import annotations

import doctest
import hashlib
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ct_stream.window as window_module
from ct_stream.errors import CtStreamError, WindowError
from ct_stream.records import RecordSchema, example_schema, examples_to_batch
from ct_stream.window import (
    Snapshot,
    WindowStore,
    list_snapshots,
    prune_snapshots,
    read_snapshot,
    write_snapshot,
)

RS = RecordSchema(features={"price": "float", "country": "str", "age": "int"}, label_type="binary")
SCHEMA = example_schema(RS)


def make_batch(start: int, n: int, *, country_len: int = 2) -> pa.RecordBatch:
    """``n`` example rows with source_offset ``start .. start+n-1`` (the row's identity)."""
    rows: list[dict[str, Any]] = [
        {"id": f"e{i}", "event_ts": float(i), "label_ts": None if i % 3 == 0 else float(i) + 1.0,
         "label": i % 2 == 0, "outcome": "expired" if i % 3 == 0 else "joined",
         "served_version": None if i % 4 == 0 else 1, "prediction": 0.5,
         "source_partition": 0, "source_offset": i,
         "price": i * 0.5, "country": "c" * (1 + (i * 7) % country_len), "age": i % 90}
        for i in range(start, start + n)
    ]
    return examples_to_batch(rows, RS)


def offsets(table: pa.Table) -> list[int]:
    return table.column("source_offset").to_pylist()


def test_doctests() -> None:
    assert doctest.testmod(window_module, raise_on_error=False).failed == 0


# ------------------------------------------------------------------------- store


def test_row_bound_evicts_oldest_first_and_keeps_order() -> None:
    store = WindowStore(SCHEMA, max_rows=25, max_bytes=1 << 30)
    start = 0
    for n in (10, 7, 0, 12, 3, 30, 1):
        store.append(make_batch(start, n))
        start += n
        assert store.rows <= 25
        want = list(range(max(0, start - 25), start))
        assert offsets(store.table()) == want
        assert store.rows + store.evicted_rows == store.appended_rows == start
    assert store.rows == 25 and store.evicted_rows == start - 25
    assert all(b.num_rows > 0 for b in store.batches)
    assert store.nbytes == sum(b.nbytes for b in store.batches)


def test_byte_bound_holds_and_keeps_most_recent() -> None:
    one = make_batch(0, 100).nbytes
    max_bytes = one * 2 + one // 3  # forces a partial eviction of the oldest batch
    store = WindowStore(SCHEMA, max_rows=10_000, max_bytes=max_bytes)
    start = 0
    for _ in range(6):
        store.append(make_batch(start, 100))
        start += 100
        assert 0 < store.nbytes <= max_bytes
        assert store.nbytes == sum(b.nbytes for b in store.batches)
        got = offsets(store.table())
        assert got == list(range(start - len(got), start))  # a contiguous most-recent suffix
    assert 200 <= store.rows < 300  # two whole batches and part of a third
    assert store.evicted_rows == start - store.rows


def test_partial_eviction_compacts_the_oldest_batch() -> None:
    store = WindowStore(SCHEMA, max_rows=150, max_bytes=1 << 30)
    store.append(make_batch(0, 100))
    store.append(make_batch(100, 100))
    oldest = store.batches[0]
    assert oldest.num_rows == 50 and offsets(pa.Table.from_batches([oldest])) == list(range(50, 100))
    # the kept rows are a copy: its bytes are those of 50 rows, not of the 100-row parent
    assert oldest.nbytes <= make_batch(50, 50).nbytes + 64
    assert oldest.column(0).offset == 0


def test_one_batch_larger_than_the_bounds_keeps_its_newest_rows() -> None:
    store = WindowStore(SCHEMA, max_rows=1000, max_bytes=2000)
    store.append(make_batch(0, 500))
    assert 0 < store.rows < 500 and store.nbytes <= 2000
    assert offsets(store.table()) == list(range(500 - store.rows, 500))
    tiny = WindowStore(SCHEMA, max_rows=5, max_bytes=1)  # not even one row fits
    tiny.append(make_batch(0, 3))
    assert tiny.rows == 0 and tiny.nbytes == 0 and tiny.evicted_rows == 3
    assert tiny.table().num_rows == 0 and tiny.table().schema.equals(SCHEMA, check_metadata=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 80), min_size=1, max_size=12),
       max_rows=st.integers(1, 150), max_bytes=st.integers(1, 12_000), country_len=st.integers(1, 60))
def test_bounds_hold_after_every_append(sizes: list[int], max_rows: int, max_bytes: int, country_len: int) -> None:
    store = WindowStore(SCHEMA, max_rows=max_rows, max_bytes=max_bytes)
    start = 0
    for n in sizes:
        store.append(make_batch(start, n, country_len=country_len))
        start += n
        assert store.rows <= max_rows and store.nbytes <= max_bytes
        assert store.nbytes == sum(b.nbytes for b in store.batches)
        assert store.rows == sum(b.num_rows for b in store.batches)
        assert store.rows + store.evicted_rows == start
        got = offsets(store.table())
        assert got == list(range(start - len(got), start))


def test_schema_mismatch_names_the_difference() -> None:
    store = WindowStore(SCHEMA, max_rows=10, max_bytes=1 << 20)
    other = example_schema(RecordSchema(features={"price": "float", "country": "str", "age": "float"},
                                        label_type="binary"))
    bad = pa.RecordBatch.from_pylist([], schema=other)
    with pytest.raises(WindowError) as info:
        store.append(bad)
    assert str(info.value) == ("batch.schema column 11: got \"'age' double not null\"; "
                               "allowed: 'age' int64 not null (as in the store's schema)")
    no_meta = make_batch(0, 2)
    no_meta = no_meta.replace_schema_metadata(None)
    with pytest.raises(WindowError, match="ct_stream.example_version") as info:
        store.append(no_meta)
    assert isinstance(info.value, CtStreamError) and info.value.what == "batch.schema metadata"
    nullable_id = pa.record_batch({"id": pa.array(["a"])})
    with pytest.raises(WindowError, match="column 0: got \"'id' string\"; allowed: 'id' string not null"):
        store.append(nullable_id)
    short = pa.RecordBatch.from_pylist([], schema=pa.schema([SCHEMA.field(0)], metadata=SCHEMA.metadata))
    with pytest.raises(WindowError, match="column 1: got 'no column'"):
        store.append(short)
    with pytest.raises(WindowError, match="a pyarrow.RecordBatch"):
        store.append(pa.Table.from_batches([make_batch(0, 1)]))  # type: ignore[arg-type]
    assert store.rows == 0 and store.appended_rows == 0


@pytest.mark.parametrize("kwargs", [{"max_rows": 0}, {"max_rows": True}, {"max_bytes": -1}, {"max_bytes": 1.5}])
def test_bad_bounds(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"max_rows": 10, "max_bytes": 100, **kwargs}
    with pytest.raises(WindowError, match=next(iter(kwargs))):
        WindowStore(SCHEMA, **args)
    with pytest.raises(WindowError, match="schema"):
        WindowStore("nope", 10, 10)  # type: ignore[arg-type]


def test_tail_and_split_give_a_non_overlapping_most_recent_holdout() -> None:
    store = WindowStore(SCHEMA, max_rows=40, max_bytes=1 << 30)
    for start in range(0, 60, 15):
        store.append(make_batch(start, 15))
    assert offsets(store.table()) == list(range(20, 60))
    assert offsets(store.tail(7)) == list(range(53, 60))
    assert offsets(store.tail(0)) == []
    assert offsets(store.tail(1000)) == list(range(20, 60))
    for h in (0, 1, 7, 15, 39, 40, 100):
        train, holdout = store.split(h)
        assert offsets(holdout) == offsets(store.tail(h))
        assert offsets(train) + offsets(holdout) == offsets(store.table())
        assert not set(offsets(train)) & set(offsets(holdout))
        assert train.schema.equals(SCHEMA, check_metadata=True)
    with pytest.raises(WindowError, match="holdout_rows"):
        store.split(-1)
    with pytest.raises(WindowError, match="n: got"):
        store.tail(-1)


# --------------------------------------------------------------------- snapshots


def fixed_clock(t: float = 1_700_000_000.25) -> Callable[[], float]:
    return lambda: t


def window_table() -> pa.Table:
    store = WindowStore(SCHEMA, max_rows=100, max_bytes=1 << 30)
    for start in range(0, 150, 50):
        store.append(make_batch(start, 50))
    return store.table()


def test_snapshot_round_trip_and_hash(tmp_path: Path) -> None:
    table = window_table()
    snap = write_snapshot(table, tmp_path / "snaps", name="win", clock=fixed_clock())
    assert isinstance(snap, Snapshot)
    assert snap.path.parent == tmp_path / "snaps"
    assert snap.path.name == f"win-00000001-20231114T221320250Z-{snap.sha256[:12]}.parquet"
    assert snap.sha256 == hashlib.sha256(snap.path.read_bytes()).hexdigest()
    assert snap.rows == 100 and snap.bytes == snap.path.stat().st_size and snap.created_at == 1_700_000_000.25
    back = read_snapshot(snap.path, expected_sha256=snap.sha256)
    assert back.equals(table, check_metadata=True)
    assert read_snapshot(snap.path).equals(table)
    assert pq.read_table(snap.path).equals(table)  # plain Parquet: any reader can open it
    with pytest.raises(AttributeError):
        snap.rows = 3  # type: ignore[misc]


def test_empty_table_snapshot(tmp_path: Path) -> None:
    empty = WindowStore(SCHEMA, max_rows=10, max_bytes=100).table()
    snap = write_snapshot(empty, tmp_path, name="empty", clock=fixed_clock())
    assert snap.rows == 0
    assert read_snapshot(snap.path, snap.sha256).equals(empty, check_metadata=True)


def test_tampered_snapshot_fails_with_both_hashes(tmp_path: Path) -> None:
    snap = write_snapshot(window_table(), tmp_path, name="win", clock=fixed_clock())
    data = bytearray(snap.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(WindowError) as info:
        read_snapshot(snap.path, expected_sha256=snap.sha256)
    assert snap.sha256 in str(info.value) and actual in str(info.value)
    snap.path.write_bytes(b"not parquet at all")
    with pytest.raises(WindowError, match="a valid Parquet file"):
        read_snapshot(snap.path)
    with pytest.raises(WindowError, match="expected_sha256"):
        read_snapshot(snap.path, expected_sha256="ABC")
    with pytest.raises(WindowError, match="a readable file"):
        read_snapshot(tmp_path / "missing.parquet")


def test_atomic_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_snapshot(window_table(), tmp_path, name="win", clock=fixed_clock())
    assert [p.name.endswith(".parquet") and not p.name.startswith(".") for p in tmp_path.iterdir()] == [True]

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(window_module.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(window_table(), tmp_path, name="win", clock=fixed_clock())
    assert len(list(tmp_path.iterdir())) == 1  # the failed write left nothing behind


def test_bad_snapshot_arguments(tmp_path: Path) -> None:
    t = window_table()
    for name in ("", ".hidden", "-x", "a/b", "a b", 3):
        with pytest.raises(WindowError, match="name"):
            write_snapshot(t, tmp_path, name=name)  # type: ignore[arg-type]
    with pytest.raises(WindowError, match="table"):
        write_snapshot(make_batch(0, 1), tmp_path, name="w")  # type: ignore[arg-type]
    for bad in (float("nan"), -1.0, "now"):
        with pytest.raises(WindowError, match="clock"):
            write_snapshot(t, tmp_path, name="w", clock=lambda: bad)  # type: ignore[arg-type, return-value]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WindowError, match="keep"):
        prune_snapshots(tmp_path, -1)


def test_sequence_orders_snapshots_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    t = window_table()
    # the clock goes backwards: order is by sequence, not by timestamp or mtime
    snaps = [write_snapshot(t.slice(0, 10 + i), tmp_path, name="win" if i % 2 else "other",
                            clock=fixed_clock(1_700_000_000.0 - i)) for i in range(5)]
    assert [s.sequence for s in snaps] == [1, 2, 3, 4, 5]
    assert list_snapshots(tmp_path) == [s.path for s in snaps]
    assert list_snapshots(tmp_path, name="win") == [snaps[1].path, snaps[3].path]
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / ".win-deadbeef.parquet.tmp").write_bytes(b"in flight")

    assert prune_snapshots(tmp_path, 5) == []
    removed = prune_snapshots(tmp_path, 3)
    assert removed == [snaps[0].path, snaps[1].path]
    assert list_snapshots(tmp_path) == [s.path for s in snaps[2:]]
    assert prune_snapshots(tmp_path, 0, name="win") == [snaps[3].path]
    assert list_snapshots(tmp_path) == [snaps[2].path, snaps[4].path]
    assert (tmp_path / "notes.txt").exists() and (tmp_path / ".win-deadbeef.parquet.tmp").exists()
    for s in (snaps[2], snaps[4]):
        assert read_snapshot(s.path, s.sha256).num_rows == s.rows
    # the next sequence continues after the newest survivor
    assert write_snapshot(t, tmp_path, name="win", clock=fixed_clock()).sequence == 6
    assert prune_snapshots(tmp_path / "missing", 1) == []
