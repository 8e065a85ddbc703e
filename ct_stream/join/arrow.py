"""Joined examples to one Arrow record batch, column by column (the hot path's encoder).

:func:`ct_stream.records.examples_to_batch` validates dict rows one by one, for tests
and small uses; the joiner's own :class:`~ct_stream.join.Example` objects are valid by
construction, so this builds each column with one list comprehension and one
``pa.array`` call.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow as pa

from ct_stream.join.joiner import Example
from ct_stream.records import RecordSchema, encode_examples, example_schema

__all__ = ["MAX_MESSAGE_BYTES", "MAX_ROWS_PER_MESSAGE", "examples_to_arrow", "example_messages"]

MAX_MESSAGE_BYTES = 512 * 1024
"""The size an examples message aims to stay under: half of Kafka's default 1 MB
``max.message.bytes``, so a topic with default settings always takes it."""

MAX_ROWS_PER_MESSAGE = 2_000


def examples_to_arrow(examples: Sequence[Example], schema: RecordSchema) -> pa.RecordBatch:
    """One record batch with the columns of :func:`~ct_stream.records.example_schema`."""
    target = example_schema(schema)
    columns = {
        "id": [e.id for e in examples],
        "event_ts": [e.event_ts for e in examples],
        "label_ts": [e.label_ts for e in examples],
        "label": [e.label for e in examples],
        "outcome": [e.outcome for e in examples],
        "served_version": [e.served_version for e in examples],
        "prediction": [e.prediction for e in examples],
        "source_partition": [e.source_partition for e in examples],
        "source_offset": [e.source_offset for e in examples],
    }
    features = [e.features for e in examples]
    for name in schema.features:
        columns[name] = [f[name] for f in features]
    return pa.RecordBatch.from_arrays([pa.array(columns[f.name], type=f.type) for f in target], schema=target)


def example_messages(examples: Sequence[Example], schema: RecordSchema, max_bytes: int = MAX_MESSAGE_BYTES,
                     max_rows: int = MAX_ROWS_PER_MESSAGE) -> Iterator[tuple[Sequence[Example], bytes]]:
    """Encode ``examples`` as Arrow IPC messages of at most ``max_rows`` rows and, where
    rows allow, at most ``max_bytes`` bytes: ``(rows, message)`` pairs, in order.

    A chunk that encodes too big is split in halves until it fits; a single row that is
    bigger than ``max_bytes`` on its own is yielded alone, and the caller decides
    (the joiner dead-letters it as ``too_large`` when it exceeds what the topic takes).

    >>> from ct_stream.records import RecordSchema
    >>> s = RecordSchema(features={"c": "str"}, label_type="binary", max_string_length=100_000)
    >>> rows = [Example(f"e{i}", 1.0, 2.0, True, "joined", None, None, 0, i, {"c": "x" * 50_000})
    ...         for i in range(10)]
    >>> [len(r) for r, m in example_messages(rows, s, max_bytes=200_000)]
    [2, 3, 2, 3]
    """
    for start in range(0, len(examples), max_rows):
        yield from _fit(examples[start:start + max_rows], schema, max_bytes)


def _fit(rows: Sequence[Example], schema: RecordSchema, max_bytes: int) -> Iterator[tuple[Sequence[Example], bytes]]:
    message = encode_examples(examples_to_arrow(rows, schema))
    if len(message) <= max_bytes or len(rows) == 1:
        yield rows, message
        return
    half = len(rows) // 2
    yield from _fit(rows[:half], schema, max_bytes)
    yield from _fit(rows[half:], schema, max_bytes)
