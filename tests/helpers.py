"""Small helpers shared by tests: awaiting conditions instead of sleeping, and a labelled
stream (River's Sine generator) as example batches and trained learners."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead: it runs no code and holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sine_rows(function: int, seed: int, n: int) -> list[tuple[dict[str, float], bool]]:
    """``n`` rows of River's Sine generator as ``(features x0/x1, label)``; function 1 is
    function 0 with every label flipped."""
    import itertools

    from river.datasets import synth

    return [({"x0": x[0], "x1": x[1]}, bool(y))
            for x, y in itertools.islice(synth.Sine(classification_function=function, seed=seed), n)]


def batch_of(t: Any, rows: list[tuple[dict[str, Any], Any]]) -> Any:
    """``(features, label)`` rows as a batch of joined examples of topology ``t``."""
    from ct_stream.records import examples_to_batch

    return examples_to_batch([{"id": str(i), "event_ts": float(i), "label": y, "outcome": "joined",
                               "source_partition": 0, "source_offset": i, **x}
                              for i, (x, y) in enumerate(rows)], t.record_schema)


def trained(t: Any, function: int, seed: int, n: int = 2000) -> Any:
    """A fresh learner of ``t`` that has learned ``n`` Sine rows."""
    from ct_stream.learn.online import make_learner

    learner = make_learner(t)
    learner.learn(batch_of(t, sine_rows(function, seed, n)))
    return learner
