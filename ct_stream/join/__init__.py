"""The windowed event-time joiner of events and labels, as pure logic (no Kafka).

See :mod:`ct_stream.join.joiner` for the semantics and ``docs/joiner.md`` for the
user-facing page.
"""

from ct_stream.join.joiner import (
    COUNTER_KEYS,
    META_KEY,
    DeadLetter,
    Example,
    ExampleRow,
    Input,
    JoinerGroup,
    JoinOutput,
    NativePartitionJoiner,
    PartitionJoiner,
    partition_joiner_class,
)

__all__ = [
    "COUNTER_KEYS",
    "META_KEY",
    "DeadLetter",
    "Example",
    "ExampleRow",
    "Input",
    "JoinerGroup",
    "JoinOutput",
    "NativePartitionJoiner",
    "PartitionJoiner",
    "partition_joiner_class",
]
