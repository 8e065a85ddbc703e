"""Joined examples to one Arrow record batch, column by column (the hot path's encoder).

:func:`ct_stream.records.examples_to_batch` validates dict rows one by one, for tests
and small uses; the joiner's own :class:`~ct_stream.join.Example` objects are valid by
construction, so this builds each column with one list comprehension and one
``pa.array`` call.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from ct_stream.join.joiner import Example
from ct_stream.records import RecordSchema, example_schema

__all__ = ["examples_to_arrow"]


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
