"""Joined examples to one Arrow record batch, column by column (the hot path's encoder).

:func:`ct_stream.records.examples_to_batch` validates dict rows one by one, for tests
and small uses; the joiner's rows (:data:`~ct_stream.join.joiner.ExampleRow`) are valid
by construction, so :func:`rows_to_arrow` transposes them in C (``zip(*rows)``) and
makes each column with one ``pa.array`` call; with the native data path
(docs/native.md), the column buffers are read straight from the row tuples instead
(``ct_stream._native.example_columns``), which gives the same message byte for byte.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pyarrow as pa

from ct_stream.join.joiner import _OWN_NAMES, Example, ExampleRow
from ct_stream.native import module as _native
from ct_stream.records import RecordSchema, encode_examples, example_schema

__all__ = ["MAX_MESSAGE_BYTES", "MAX_ROWS_PER_MESSAGE", "examples_to_arrow", "rows_to_arrow", "example_messages"]

MAX_MESSAGE_BYTES = 512 * 1024
"""The size an examples message aims to stay under: half of Kafka's default 1 MB
``max.message.bytes``, so a topic with default settings always takes it."""

MAX_ROWS_PER_MESSAGE = 2_000

# Where each column of example_schema comes from in an ExampleRow, before the features
# (entry fields at their own indexes): (in the row's event entry, else in the row; index).
# Both paths of rows_to_arrow read the columns by it.
_FIXED_SOURCES = ((True, 0), (True, 1), (False, 2), (False, 3), (False, 4), (True, 3), (True, 4), (False, 5),
                  (True, 2))
_KINDS = {pa.float64(): 0, pa.int64(): 1, pa.int32(): 2, pa.bool_(): 3, pa.string(): 4}  # example_columns' codes


def rows_to_arrow(rows: Sequence[ExampleRow], schema: RecordSchema) -> pa.RecordBatch:
    """One record batch with the columns of :func:`~ct_stream.records.example_schema`.

    The common case, every entry holding its values in the same feature-name order, is
    one native pass over the rows or two transpositions; any other row (an event that
    kept its own features dict, rows of joiners with other name orders) takes the
    per-row path.
    """
    target = example_schema(schema)
    names = list(schema.features)
    if not rows:
        return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in target], schema=target)
    width = 5 + len(names)
    first = rows[0][1]
    same_names = first is not None and len(first) == len(names) and set(first) == set(names)
    if same_names and _native is not None:
        batch = _native_batch(rows, first, width, target)
        if batch is not None:
            return batch
    row_cols: list[Any] = list(zip(*rows))
    entries, row_names = row_cols[0], row_cols[1]
    if same_names and row_names.count(first) == len(rows) and set(map(len, entries)) == {width} \
            and (width != 7 or not any(e[5] is _OWN_NAMES for e in entries)):
        index = {n: k for k, n in enumerate(first)}
        cols: list[Any] = list(zip(*entries))
        features = [cols[5 + index[n]] for n in names]
    else:
        dicts = [Example.from_row(r).features for r in rows]
        cols = [[e[k] for e in entries] for k in range(5)]
        features = [[f[n] for f in dicts] for n in names]
    columns = [(cols if in_entry else row_cols)[k] for in_entry, k in _FIXED_SOURCES] + features
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, target)], schema=target)


def _native_batch(rows: Sequence[ExampleRow], names: tuple[str, ...], width: int,
                  target: pa.Schema) -> pa.RecordBatch | None:
    """:func:`rows_to_arrow`'s common case with the native data path (docs/native.md):
    every row's entry holds its values in the order ``names`` (the same tuple object),
    and the column buffers are read straight from the row tuples. None for any other row
    or a value it does not take (then the transposition and ``pa.array`` convert, and
    give the reference answer or error)."""
    index = {n: k for k, n in enumerate(names)}
    sources = [*_FIXED_SOURCES, *((True, 5 + index[f.name]) for f in list(target)[len(_FIXED_SOURCES):])]
    plan = [(entry, k, _KINDS[f.type], f.nullable) for (entry, k), f in zip(sources, target)]
    cols = _native.example_columns(rows if type(rows) is list else list(rows), plan, names,  # type: ignore[union-attr]
                                   width, _OWN_NAMES)
    if cols is None:
        return None
    n, buffer = len(rows), pa.py_buffer
    arrays = [pa.Array.from_buffers(f.type, n, [None if valid is None else buffer(valid), buffer(values)]
                                    if offsets is None else
                                    [None if valid is None else buffer(valid), buffer(offsets), buffer(values)],
                                    null_count=nulls)
              for f, (valid, values, offsets, nulls) in zip(target, cols)]
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def examples_to_arrow(examples: Sequence[Example], schema: RecordSchema) -> pa.RecordBatch:
    """:func:`rows_to_arrow` for :class:`~ct_stream.join.Example` objects."""
    return rows_to_arrow([e.row() for e in examples], schema)


def example_messages(rows: Sequence[ExampleRow], schema: RecordSchema, max_bytes: int = MAX_MESSAGE_BYTES,
                     max_rows: int = MAX_ROWS_PER_MESSAGE) -> Iterator[tuple[Sequence[ExampleRow], bytes]]:
    """Encode ``rows`` (:data:`~ct_stream.join.joiner.ExampleRow`) as Arrow IPC messages
    of at most ``max_rows`` rows and, where rows allow, at most ``max_bytes`` bytes:
    ``(rows, message)`` pairs, in order.

    A chunk that encodes too big is split in halves until it fits; a single row that is
    bigger than ``max_bytes`` on its own is yielded alone, and the caller decides
    (the joiner dead-letters it as ``too_large`` when it exceeds what the topic takes).

    >>> from ct_stream.records import RecordSchema
    >>> s = RecordSchema(features={"c": "str"}, label_type="binary", max_string_length=100_000)
    >>> rows = [Example(f"e{i}", 1.0, 2.0, True, "joined", None, None, 0, i, {"c": "x" * 50_000}).row()
    ...         for i in range(10)]
    >>> [len(r) for r, m in example_messages(rows, s, max_bytes=200_000)]
    [2, 3, 2, 3]
    """
    for start in range(0, len(rows), max_rows):
        yield from _fit(rows[start:start + max_rows], schema, max_bytes)


def _fit(rows: Sequence[ExampleRow], schema: RecordSchema,
         max_bytes: int) -> Iterator[tuple[Sequence[ExampleRow], bytes]]:
    message = encode_examples(rows_to_arrow(rows, schema))
    if len(message) <= max_bytes or len(rows) == 1:
        yield rows, message
        return
    half = len(rows) // 2
    yield from _fit(rows[:half], schema, max_bytes)
    yield from _fit(rows[half:], schema, max_bytes)
