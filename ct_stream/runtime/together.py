"""``ct-stream run --role all``: the joiner and the trainer in one thread, a step each in turn."""

from __future__ import annotations

import time
from typing import Callable

from ct_stream.runtime.joiner import JoinerWorker
from ct_stream.runtime.trainer import TrainerWorker

__all__ = ["JoinAndTrain"]


class JoinAndTrain:
    """Step a set-up :class:`JoinerWorker` and :class:`TrainerWorker` in turn, in one thread.

    The trainer polls without waiting; the joiner's poll is the one that waits when
    neither has anything to do. While either has had records in the last
    ``busy_seconds``, that wait is 10 ms at most instead of the joiner's
    ``poll_timeout``: the examples a commit writes reach the trainer's consumer some
    milliseconds later, and the trainer only steps between the joiner's polls (with
    100 ms waits the examples of a commit waited for more of them: docs/performance.md,
    ninth session). Quiet for longer, the loop waits ``poll_timeout`` a step, so an idle
    process does not spin.

    >>> loop = JoinAndTrain(joiner, trainer)  # doctest: +SKIP
    >>> while not stop.is_set():  # doctest: +SKIP
    ...     loop.step()
    """

    def __init__(self, joiner: JoinerWorker, trainer: TrainerWorker, *, busy_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.joiner = joiner
        self.trainer = trainer
        self.busy_seconds = busy_seconds
        self.clock = clock
        self.idle_timeout = joiner.poll_timeout
        trainer.poll_timeout = 0.0
        self._seen = self._progress()
        self._last_records = clock()

    def _progress(self) -> tuple[int, int]:
        reader = self.trainer.reader
        return self.joiner.records_polled, 0 if reader is None else sum(reader.position.values())

    def step(self) -> None:
        """One joiner tick and one trainer step."""
        busy = self.clock() - self._last_records < self.busy_seconds
        self.joiner.poll_timeout = min(0.01, self.idle_timeout) if busy else self.idle_timeout
        self.joiner.tick()
        self.trainer.step()
        seen = self._progress()
        if seen != self._seen:
            self._seen = seen
            self._last_records = self.clock()
