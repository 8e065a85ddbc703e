"""The window store: the most recent examples as Arrow batches, bounded in rows and bytes,
and Parquet snapshots of it with a content hash for a retrain in another process.

:class:`WindowStore` keeps appended :class:`pyarrow.RecordBatch` es oldest first and evicts
the oldest rows (whole batches, then the oldest rows of the oldest batch) so that after
every :meth:`~WindowStore.append` ``rows <= max_rows`` and ``nbytes <= max_bytes``.

``nbytes`` is the sum of ``batch.nbytes`` over the held batches. When only part of a batch
is kept, the kept rows are *copied* into a new batch (compacted), so the store never holds
a slice that pins the evicted rows' memory, and ``nbytes`` of the copy is exact. Batches are
stored as appended: a batch that is itself a zero-copy view into a bigger buffer (e.g. one
chunk of a decoded IPC message) is counted by the bytes it references, not by the buffer it
keeps alive.

:func:`write_snapshot` writes a table as one Parquet file named
``<name>-<seq:08d>-<UTC yyyymmddTHHMMSSmmm>Z-<sha256[:12]>.parquet`` atomically (temp file
in the same directory, fsync, :func:`os.replace`, fsync of the directory). The content hash
is the sha256 of the file's bytes; there is no sidecar: pass :attr:`Snapshot.sha256` to the
reader (:func:`read_snapshot`), which refuses a file whose hash differs.

>>> import pyarrow as pa
>>> schema = pa.schema([("x", pa.int64())])
>>> store = WindowStore(schema, max_rows=4, max_bytes=1 << 20)
>>> for start in (0, 3):
...     store.append(pa.record_batch([pa.array(range(start, start + 3))], schema=schema))
>>> store.table().column("x").to_pylist(), store.evicted_rows
([2, 3, 4, 5], 2)
>>> train, holdout = store.split(1)
>>> train.column("x").to_pylist(), holdout.column("x").to_pylist()
([2, 3, 4], [5])
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ct_stream.errors import WindowError

__all__ = [
    "WindowStore",
    "Snapshot",
    "write_snapshot",
    "read_snapshot",
    "list_snapshots",
    "prune_snapshots",
    "SNAPSHOT_SUFFIX",
]

SNAPSHOT_SUFFIX = ".parquet"

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_FILE_RE = re.compile(r"(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)-(?P<seq>\d{8,})-(?P<stamp>\d{8}T\d{9}Z)"
                      r"-(?P<sha>[0-9a-f]{12})\.parquet")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


def _positive_int(what: str, value: Any, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise WindowError(what, value, f"an integer >= {minimum}")
    return value


def _describe(f: pa.Field) -> str:
    return f"{f.name!r} {f.type}{'' if f.nullable else ' not null'}"


def _schema_difference(expected: pa.Schema, got: pa.Schema) -> tuple[str, str, str] | None:
    """The first difference between two schemas (column by column, then metadata) as
    ``(where, got, expected)``, or None when they are equal, metadata included."""
    for i in range(max(len(expected), len(got))):
        e = expected.field(i) if i < len(expected) else None
        g = got.field(i) if i < len(got) else None
        if e is None:
            return f"column {i}", _describe(g), "no column"  # type: ignore[arg-type]
        if g is None:
            return f"column {i}", "no column", _describe(e)
        if not e.equals(g):
            return f"column {i}", _describe(g), _describe(e)
        if not e.equals(g, check_metadata=True):
            return f"column {i} {e.name!r} metadata", repr(g.metadata), repr(e.metadata)
    if not expected.equals(got, check_metadata=True):
        return "metadata", repr(got.metadata), repr(expected.metadata)
    return None


def _compact(batch: pa.RecordBatch, keep: int) -> pa.RecordBatch:
    """A copy of the last ``keep`` rows of ``batch`` that owns only their memory."""
    start = batch.num_rows - keep
    return batch.take(pa.array(np.arange(start, batch.num_rows, dtype=np.int64)))


class WindowStore:
    """The most recent examples of one Arrow schema, oldest first, bounded in rows and bytes.

    After every :meth:`append`, ``rows <= max_rows`` and ``nbytes <= max_bytes`` (``nbytes``
    is the sum of the held batches' ``batch.nbytes``; a partly evicted batch is compacted,
    see the module docstring). Not thread-safe: one owner appends and reads.
    """

    def __init__(self, schema: pa.Schema, max_rows: int, max_bytes: int) -> None:
        if not isinstance(schema, pa.Schema):
            raise WindowError("schema", type(schema).__name__, "a pyarrow.Schema")
        self._schema = schema
        self._max_rows = _positive_int("max_rows", max_rows)
        self._max_bytes = _positive_int("max_bytes", max_bytes)
        self._batches: deque[pa.RecordBatch] = deque()
        self._rows = 0
        self._nbytes = 0
        self._evicted_rows = 0
        self._appended_rows = 0

    # ------------------------------------------------------------------ properties

    @property
    def schema(self) -> pa.Schema:
        """The schema every appended batch must equal (metadata included)."""
        return self._schema

    @property
    def max_rows(self) -> int:
        return self._max_rows

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def rows(self) -> int:
        """Rows currently held."""
        return self._rows

    @property
    def nbytes(self) -> int:
        """Sum of ``batch.nbytes`` over the held batches."""
        return self._nbytes

    @property
    def batches(self) -> tuple[pa.RecordBatch, ...]:
        """The held batches, oldest first (no empty batch is ever held)."""
        return tuple(self._batches)

    @property
    def evicted_rows(self) -> int:
        """Rows evicted since the store was made."""
        return self._evicted_rows

    @property
    def appended_rows(self) -> int:
        """Rows appended since the store was made (``rows + evicted_rows``)."""
        return self._appended_rows

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return (f"WindowStore(rows={self._rows}/{self._max_rows}, nbytes={self._nbytes}/{self._max_bytes}, "
                f"batches={len(self._batches)}, evicted_rows={self._evicted_rows})")

    # ---------------------------------------------------------------------- append

    def append(self, batch: pa.RecordBatch) -> None:
        """Add ``batch`` as the newest rows, then evict the oldest rows over the bounds.

        The batch's schema must equal the store's, metadata included
        (:class:`~ct_stream.errors.WindowError` naming the first difference otherwise).
        An empty batch changes nothing. A batch larger than the bounds keeps only its
        most recent rows.
        """
        if not isinstance(batch, pa.RecordBatch):
            raise WindowError("batch", type(batch).__name__, "a pyarrow.RecordBatch")
        diff = _schema_difference(self._schema, batch.schema)
        if diff is not None:
            where, got, expected = diff
            raise WindowError(f"batch.schema {where}", got, f"{expected} (as in the store's schema)")
        n = batch.num_rows
        if n == 0:
            return
        self._batches.append(batch)
        self._rows += n
        self._nbytes += batch.nbytes
        self._appended_rows += n
        self._evict()

    def _drop_oldest(self) -> None:
        b = self._batches.popleft()
        self._rows -= b.num_rows
        self._nbytes -= b.nbytes
        self._evicted_rows += b.num_rows

    def _evict(self) -> None:
        while self._rows > self._max_rows or self._nbytes > self._max_bytes:
            b = self._batches[0]
            rest_rows = self._rows - b.num_rows
            rest_bytes = self._nbytes - b.nbytes
            row_room = self._max_rows - rest_rows
            byte_room = self._max_bytes - rest_bytes
            if row_room <= 0 or byte_room < 0:
                self._drop_oldest()
                continue
            kept = self._newest_rows_that_fit(b, min(row_room, b.num_rows), byte_room)
            if kept is None:
                self._drop_oldest()
                continue
            keep = kept.num_rows
            self._batches[0] = kept
            self._rows = rest_rows + keep
            self._nbytes = rest_bytes + kept.nbytes
            self._evicted_rows += b.num_rows - keep
            # the bounds now hold: keep <= row_room and kept.nbytes <= byte_room

    @staticmethod
    def _newest_rows_that_fit(b: pa.RecordBatch, max_keep: int, byte_room: int) -> pa.RecordBatch | None:
        """A compacted copy of the last ``k`` rows of ``b`` with ``k <= max_keep`` and
        ``nbytes <= byte_room``, ``k`` as large as a binary search on zero-copy slices finds
        (the copy is checked, and ``k`` lowered if it is a few bytes over); None for ``k = 0``."""
        n = b.num_rows

        def fits(k: int) -> bool:
            return b.slice(n - k).nbytes <= byte_room

        lo, hi = 0, max_keep  # fits(lo) is assumed (k=0 keeps nothing)
        if fits(max_keep):  # the common case: the row bound is the one that binds
            lo = max_keep
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        # a copy can be a few bytes larger than the slice (bitmaps, offsets): step down
        k = lo
        while k > 0:
            kept = _compact(b, k)
            if kept.nbytes <= byte_room:
                return kept
            k -= 1 if k < 8 else max(1, k // 64)
        return None

    # ------------------------------------------------------------------------ read

    def table(self) -> pa.Table:
        """The current window as one table, oldest row first (zero-copy, one chunk per batch)."""
        return pa.Table.from_batches(list(self._batches), schema=self._schema)

    def tail(self, n: int) -> pa.Table:
        """The most recent ``min(n, rows)`` rows, oldest first (e.g. a temporal holdout)."""
        _positive_int("n", n, minimum=0)
        return self.table().slice(max(0, self._rows - n))

    def split(self, holdout_rows: int) -> tuple[pa.Table, pa.Table]:
        """``(train, holdout)``: the older rows and the most recent ``min(holdout_rows, rows)``
        rows; they do not overlap and together are :meth:`table`."""
        _positive_int("holdout_rows", holdout_rows, minimum=0)
        t = self.table()
        cut = max(0, self._rows - holdout_rows)
        return t.slice(0, cut), t.slice(cut)


# ------------------------------------------------------------------------ snapshots

@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot file: its path, the sha256 (hex) of its bytes, its row count, its size in
    bytes and when it was written (``clock()`` seconds since the epoch)."""

    path: Path
    sha256: str
    rows: int
    bytes: int
    created_at: float
    sequence: int


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stamp(created_at: float) -> str:
    ms = int(round(created_at * 1000))
    secs, ms = divmod(ms, 1000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f"{ms:03d}Z"


def list_snapshots(data_dir: Path, *, name: str | None = None) -> list[Path]:
    """The snapshot files in ``data_dir`` (optionally only those of ``name``), oldest first by
    sequence number. Other files (temp files, anything else) are ignored; a missing
    directory has none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    found: list[tuple[int, str, Path]] = []
    for p in data_dir.iterdir():
        m = _FILE_RE.fullmatch(p.name)
        if m is None or (name is not None and m["name"] != name) or not p.is_file():
            continue
        found.append((int(m["seq"]), p.name, p))
    found.sort()
    return [p for _, _, p in found]


def _next_sequence(data_dir: Path) -> int:
    last = list_snapshots(data_dir)
    if not last:
        return 1
    m = _FILE_RE.fullmatch(last[-1].name)
    assert m is not None
    return int(m["seq"]) + 1


def write_snapshot(table: pa.Table, data_dir: Path, *, name: str,
                   clock: Callable[[], float] = time.time) -> Snapshot:
    """Write ``table`` as one Parquet file in ``data_dir`` (created if missing), atomically.

    The file is written to a hidden temp file (``.<name>-<random>.parquet.tmp``) in
    ``data_dir``, fsynced, hashed (sha256 of the bytes), renamed with :func:`os.replace` to
    ``<name>-<seq:08d>-<yyyymmddTHHMMSSmmm>Z-<sha256[:12]>.parquet`` and the directory is
    fsynced. ``seq`` is one more than the highest sequence in ``data_dir`` (one writer per
    directory). On error the temp file is removed. ``name`` is letters, digits, ``_``, ``.``
    and ``-``, not starting with ``.`` or ``-``.
    """
    if not isinstance(table, pa.Table):
        raise WindowError("table", type(table).__name__, "a pyarrow.Table")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise WindowError("name", name, "1-100 of letters, digits, '_', '.', '-', not starting with '.' or '-'")
    created_at = clock()
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) \
            or not math.isfinite(created_at) or created_at < 0:
        raise WindowError("clock()", created_at, "a finite number of seconds since the epoch >= 0")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its 0600 mode would keep a retrain running as another user out
    tmp = data_dir / f".{name}-{secrets.token_hex(8)}.parquet.tmp"
    f = open(tmp, "xb")
    try:
        with f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        sha = _file_sha256(tmp)
        size = tmp.stat().st_size
        seq = _next_sequence(data_dir)
        final = data_dir / f"{name}-{seq:08d}-{_stamp(created_at)}-{sha[:12]}{SNAPSHOT_SUFFIX}"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(data_dir)
    return Snapshot(path=final, sha256=sha, rows=table.num_rows, bytes=size,
                    created_at=float(created_at), sequence=seq)


def read_snapshot(path: Path, expected_sha256: str | None = None) -> pa.Table:
    """Read a snapshot file. With ``expected_sha256`` (64 lowercase hex digits), the sha256 of
    the bytes read must equal it (:class:`~ct_stream.errors.WindowError` naming both hashes
    otherwise); the bytes are read once, so the table is what was hashed. A file that is not
    valid Parquet also raises :class:`~ct_stream.errors.WindowError`."""
    path = Path(path)
    if expected_sha256 is not None and (not isinstance(expected_sha256, str)
                                        or not _SHA_RE.fullmatch(expected_sha256)):
        raise WindowError("expected_sha256", expected_sha256, "None or 64 lowercase hex digits")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WindowError(f"snapshot {str(path)!r}", f"{type(e).__name__}: {e.strerror}",
                          "a readable file") from e
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise WindowError(f"snapshot {path.name} sha256", actual, f"the expected sha256 {expected_sha256}")
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise WindowError(f"snapshot {path.name}", f"{type(e).__name__}: {e}", "a valid Parquet file") from e


def prune_snapshots(data_dir: Path, keep: int, *, name: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots (by sequence number) in ``data_dir``,
    optionally only among those of ``name``; return the deleted paths, oldest first.
    Files that are not snapshots (including temp files) are never touched."""
    _positive_int("keep", keep, minimum=0)
    snaps = list_snapshots(data_dir, name=name)
    doomed = snaps[: max(0, len(snaps) - keep)]
    for p in doomed:
        p.unlink(missing_ok=True)
    if doomed:
        _fsync_dir(Path(data_dir))
    return doomed
