"""Loops that connect Kafka (``ct_stream.kafka``) to the pure logic."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(young_threshold: int = 400_000, middle_threshold: int = 3) -> None:
    """Garbage-collector settings for a long-running worker that holds millions of objects.

    CPython's default (a young collection every 700 allocations) made the joiner spend
    about a third of its time in the collector once its window held a few hundred
    thousand entries (measured: 340k records joined in 15.4 s with the default, 11.0 s
    with 100,000). A young collection runs once the objects allocated since the last one
    outnumber those freed by ``young_threshold``; a worker's steady state frees about what
    it allocates (a poll's records die within a commit; the joiner's pending entries are
    not tracked at all with the native data path), so at 400,000 young collections come
    mostly while the window fills, and short-lived objects die before one walks them.
    Measured in the joiner process at 50k events/s (``loadtest/freshness.py``, 30 s):
    0.10 s in the collector with 400,000 against 0.73 s with 100,000, whose collections
    paused it for up to 160 ms. The middle generation is collected every
    ``middle_threshold`` young collections (CPython: 10), which bounds what one middle
    collection walks at about what it walked before. ``gc.freeze()`` first moves
    everything allocated at start-up (modules, the topology) out of the collector's way.
    Called by the CLI for worker processes; a library user embedding a worker can call
    it too.
    """
    gc.freeze()
    third = gc.get_threshold()[2]
    gc.set_threshold(young_threshold, middle_threshold, third)
