"""The trainer's dedupe memory: the keys of the examples it learned last.

A joiner in at-least-once mode (a broker without transaction isolation) writes a
micro-batch again after a crash; the trainer drops an example whose key is among the
last ``retrain.window_rows`` it learned. The key is the example's id, a correction's
apart from its expired example's (docs/trainer.md).

:class:`RecentKeys` is the reference; with the native data path the trainer uses
``ct_stream._native.RecentKeys``, which reads the id column's Arrow buffers without a
Python string per id and gives the keys back as one Arrow array for the checkpoint
(docs/native.md). :func:`dedupe_flags` and :func:`keys_array` take either.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ct_stream.native import module as _native

__all__ = ["RecentKeys", "dedupe_flags", "dedupe_keys", "keys_array", "recent_keys"]


class RecentKeys:
    """The last ``window`` keys added (after the ``keys`` it was made with), oldest first.

    :meth:`add` gives a flag per key, False for one already held (or earlier in the same
    call), or None when every key was new; then the oldest beyond ``window`` are forgotten.

    >>> r = RecentKeys(2, ["a"])
    >>> r.add(["a", "b", "c"]), r.keys()
    ([False, True, True], ['b', 'c'])
    >>> r.add(["d"]) is None, r.keys()
    (True, ['c', 'd'])
    """

    def __init__(self, window: int, keys: Iterable[str] | None = None) -> None:
        self.window = window
        self._order: deque[str] = deque(keys or ())
        self._set = set(self._order)

    def add(self, keys: Sequence[str]) -> list[bool] | None:
        seen, order = self._set, self._order
        keep: list[bool] | None
        if seen.isdisjoint(keys) and len(set(keys)) == len(keys):  # the common case, in C: all new
            seen.update(keys)
            order.extend(keys)
            keep = None
        else:
            keep = []
            for key in keys:
                if key in seen:
                    keep.append(False)
                else:
                    seen.add(key)
                    order.append(key)
                    keep.append(True)
        while len(order) > self.window:
            seen.discard(order.popleft())
        return keep

    def keys(self) -> list[str]:
        """The keys, oldest first."""
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)


def recent_keys(window: int, keys: Iterable[str] | None = None, native: bool = True) -> Any:
    """A :class:`RecentKeys`, or its native twin when the module is built (and ``native``)."""
    if native and _native is not None:
        return _native.RecentKeys(window, list(keys or ()))
    return RecentKeys(window, keys)


def dedupe_keys(table: pa.Table) -> list[str]:
    """The dedupe key of each example: its id (a correction's apart from its expired example)."""
    keys = table.column("id").to_pylist()
    outcomes = table.column("outcome")
    if pc.any(pc.equal(outcomes, "correction")).as_py():
        keys = [i if outcome != "correction" else i + "\x00correction"
                for i, outcome in zip(keys, outcomes.to_pylist())]
    return keys


def dedupe_flags(recent: Any, table: pa.Table) -> list[bool] | None:
    """``recent.add`` of the table's :func:`dedupe_keys`: None when every example is new,
    else a keep flag per row. The native memory reads a plain id column (one chunk of
    ``string``, no nulls, no corrections in the table) from its buffers."""
    ids = table.column("id")
    if (_native is not None and isinstance(recent, _native.RecentKeys) and ids.type == pa.string()
            and ids.num_chunks == 1 and ids.null_count == 0
            and not pc.any(pc.equal(table.column("outcome"), "correction")).as_py()):
        chunk = ids.chunk(0)
        if len(chunk):  # (an empty array may come without offsets: the list path has nothing to read)
            _, offsets, data = chunk.buffers()
            return recent.add_utf8(offsets, data if data is not None else pa.py_buffer(b""), chunk.offset, len(chunk))
    return recent.add(dedupe_keys(table))  # type: ignore[no-any-return]


def keys_array(recent: Any) -> pa.Array:
    """The keys of ``recent``, oldest first, as an Arrow ``string`` array (the checkpoint's form)."""
    if _native is not None and isinstance(recent, _native.RecentKeys):
        parts = recent.arrow_buffers()
        if parts is not None:
            n, offsets, data = parts
            return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.array(recent.keys(), pa.string())
