"""`--role all`'s loop (JoinAndTrain): how long the joiner's poll may wait, step by step."""

from __future__ import annotations

from types import SimpleNamespace

from ct_stream.runtime.together import JoinAndTrain


class FakeJoiner:
    """Records the poll timeout of each tick; ``feed`` says how many records a tick gets."""

    def __init__(self) -> None:
        self.poll_timeout = 0.1
        self.records_polled = 0
        self.timeouts: list[float] = []
        self.feed = 0

    def tick(self) -> None:
        self.timeouts.append(self.poll_timeout)
        self.records_polled += self.feed


class FakeTrainer:
    def __init__(self) -> None:
        self.poll_timeout = 0.1
        self.reader = SimpleNamespace(position={0: 0, 1: 0})
        self.feed = 0

    def step(self) -> None:
        self.reader.position[1] += self.feed


def test_the_joiner_waits_briefly_while_either_worker_has_records_and_long_once_quiet():
    now = [0.0]
    joiner, trainer = FakeJoiner(), FakeTrainer()
    loop = JoinAndTrain(joiner, trainer, busy_seconds=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert trainer.poll_timeout == 0.0  # the trainer never waits: the joiner's poll does

    def step(dt: float, joined: int = 0, learned: int = 0) -> float:
        joiner.feed, trainer.feed = joined, learned
        loop.step()
        now[0] += dt
        return joiner.timeouts[-1]

    assert step(0.5) == 0.01  # t=0: just started, counts as busy
    assert step(0.6) == 0.01  # t=0.5
    assert step(0.1) == 0.1  # t=1.1: a second without a record, the idle wait
    assert step(0.2, joined=500) == 0.1  # t=1.2: this tick's wait came before its records
    assert step(0.5) == 0.01  # t=1.4: the joiner had records 0.2 s ago
    assert step(0.2, learned=20) == 0.01  # t=1.9: the trainer reads examples now
    assert step(0.7) == 0.01  # t=2.1
    assert step(0.2) == 0.01  # t=2.8: 1.6 s after the joiner's records, 0.9 s after the trainer's
    assert step(0.2) == 0.1  # t=3.0: quiet for 1.1 s
    assert joiner.poll_timeout == 0.1


def test_a_lower_idle_wait_stays_the_bound_while_busy():
    joiner, trainer = FakeJoiner(), FakeTrainer()
    joiner.poll_timeout = 0.002
    loop = JoinAndTrain(joiner, trainer, clock=lambda: 0.0)  # type: ignore[arg-type]
    loop.step()
    assert joiner.timeouts == [0.002]
