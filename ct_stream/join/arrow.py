"""Joined examples to one Arrow record batch, column by column (the hot path's encoder).

:func:`ct_stream.records.examples_to_batch` validates dict rows one by one, for tests
and small uses; the joiner's rows (:data:`~ct_stream.join.joiner.ExampleRow`) are valid
by construction, so :func:`rows_to_arrow` transposes them in C (``zip(*rows)``) and
makes each column with one ``pa.array`` call.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pyarrow as pa

from ct_stream.join.joiner import _OWN_NAMES, Example, ExampleRow
from ct_stream.records import RecordSchema, encode_examples, example_schema

__all__ = ["MAX_MESSAGE_BYTES", "MAX_ROWS_PER_MESSAGE", "examples_to_arrow", "rows_to_arrow", "example_messages"]

MAX_MESSAGE_BYTES = 512 * 1024
"""The size an examples message aims to stay under: half of Kafka's default 1 MB
``max.message.bytes``, so a topic with default settings always takes it."""

MAX_ROWS_PER_MESSAGE = 2_000


def rows_to_arrow(rows: Sequence[ExampleRow], schema: RecordSchema) -> pa.RecordBatch:
    """One record batch with the columns of :func:`~ct_stream.records.example_schema`.

    The common case, every entry holding its values in the same feature-name order, is
    two transpositions; any other row (an event that kept its own features dict, rows
    of joiners with other name orders) takes the per-row path.
    """
    target = example_schema(schema)
    names = list(schema.features)
    if not rows:
        return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in target], schema=target)
    entries, row_names, label_ts, labels, outcomes, partitions = zip(*rows)
    first = row_names[0]
    width = 5 + len(names)
    if first is not None and len(first) == len(names) and set(first) == set(names) \
            and row_names.count(first) == len(rows) and set(map(len, entries)) == {width} \
            and (width != 7 or not any(e[5] is _OWN_NAMES for e in entries)):
        cols: list[Any] = list(zip(*entries))
        index = {n: k for k, n in enumerate(first)}
        features = [cols[5 + index[n]] for n in names]
    else:
        dicts = [Example.from_row(r).features for r in rows]
        cols = [[e[k] for e in entries] for k in range(5)]
        features = [[f[n] for f in dicts] for n in names]
    columns = [cols[0], cols[1], label_ts, labels, outcomes, cols[3], cols[4], partitions, cols[2], *features]
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, target)], schema=target)


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
