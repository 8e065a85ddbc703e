"""Event-time order across the two input topics of one partition.

A consumer fetches the events and labels topics independently: in one poll a whole
chunk of labels may come before the events they refer to (a catching-up consumer
fetches partition by partition). Fed in that order, the joiner would see the labels'
later timestamps first, move its watermark, and call the events late. Like Kafka
Streams' partition groups, :class:`PartitionMerger` buffers both topics of a partition
and releases records in timestamp order: while both queues hold records, the one with
the smaller timestamp goes first; when one queue is empty, the other waits, unless the
empty topic is known to be at its end (then there is nothing to wait for).

Items keep their topic's offset order. An item whose ``ts`` is ``None`` (a record that
failed to decode, on its way to the dead-letter topic) is released as soon as it
reaches the head of its queue, so the offsets released per topic stay contiguous and
can be committed.

>>> m = PartitionMerger()
>>> m.add("label", [(5.0, "l1"), (6.0, "l2")])
>>> m.take()          # the events topic may still hold earlier records: wait
[]
>>> m.add("event", [(4.0, "e1"), (7.0, "e2")])
>>> [x for _, x in m.take()]
['e1', 'l1', 'l2']
>>> m.mark_end("label")
>>> [x for _, x in m.take()]
['e2']
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Iterable, Literal

__all__ = ["PartitionMerger"]

Kind = Literal["event", "label"]


class PartitionMerger:
    """Releases one partition's events and labels in timestamp order (see the module doc).

    ``add(kind, items)`` takes ``(ts, payload)`` pairs in offset order; ``take()``
    returns ``(kind, payload)`` pairs that can be processed now.

    "At its end" is only true for now: the producer may be writing the other topic's
    next records while this consumer fetches them later. So when one topic is at its
    end, the other's records go only as far as ``grace`` past the newest timestamp
    released from the at-end topic (nothing released later from it can then be late);
    records beyond that wait until they have been held ``max_wait`` seconds of
    ``clock`` time, then all go.
    """

    __slots__ = ("_queues", "_at_end", "_last_ts", "_grace", "_max_wait", "_clock", "_held_since")

    def __init__(self, grace: float = 0.0, max_wait: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._queues: dict[str, deque[tuple[float | None, Any]]] = {"event": deque(), "label": deque()}
        self._at_end: dict[str, bool] = {"event": False, "label": False}
        self._last_ts: dict[str, float] = {"event": -math.inf, "label": -math.inf}
        self._grace = grace
        self._max_wait = max_wait
        self._clock = clock
        self._held_since: float | None = None

    def add(self, kind: Kind, items: Iterable[tuple[float | None, Any]]) -> None:
        """Queue records of ``kind`` (in offset order); the topic is no longer at its end."""
        self._queues[kind].extend(items)
        self._at_end[kind] = False

    def mark_end(self, kind: Kind) -> None:
        """The consumer reached the end of this partition of ``kind``'s topic: once its
        queue is empty, the other topic's records need not wait for it."""
        self._at_end[kind] = True

    def waiting_for(self) -> Kind | None:
        """The topic whose records the other topic's buffered records wait for, if any."""
        events, labels = self._queues["event"], self._queues["label"]
        if events and not labels and not self._at_end["label"]:
            return "label"
        if labels and not events and not self._at_end["event"]:
            return "event"
        return None

    def buffered(self, kind: Kind) -> int:
        """Records of ``kind`` waiting."""
        return len(self._queues[kind])

    def take(self) -> list[tuple[str, Any]]:
        """Every record that can go to the joiner now, in timestamp order, as ``(kind,
        payload)`` pairs."""
        return self._take(False)  # type: ignore[return-value]

    def take_payloads(self) -> list[Any]:
        """What :meth:`take` returns, the payloads alone (for payloads that carry their
        kind: no pair per record)."""
        return self._take(True)

    def _take(self, bare: bool) -> list[Any]:
        """:meth:`take`, or with ``bare`` :meth:`take_payloads`."""
        events, labels = self._queues["event"], self._queues["label"]
        out: list[Any] = []
        append = out.append
        if events and labels:  # the common case, in a tight loop: both queues hold records
            e_pop, l_pop = events.popleft, labels.popleft
            last_e = last_l = None
            e, lb = events[0], labels[0]
            while True:
                et, lt = e[0], lb[0]
                if et is not None and (lt is None or et > lt):
                    l_pop()
                    append(lb[1] if bare else ("label", lb[1]))
                    if lt is not None:
                        last_l = lt
                    if not labels:
                        break
                    lb = labels[0]
                else:
                    e_pop()
                    append(e[1] if bare else ("event", e[1]))
                    if et is not None:
                        last_e = et
                    if not events:
                        break
                    e = events[0]
            if last_e is not None:
                self._last_ts["event"] = last_e
            if last_l is not None:
                self._last_ts["label"] = last_l
        while True:
            if events and events[0][0] is None:
                x = events.popleft()[1]
                append(x if bare else ("event", x))
                continue
            if labels and labels[0][0] is None:
                x = labels.popleft()[1]
                append(x if bare else ("label", x))
                continue
            if events and labels:
                if events[0][0] <= labels[0][0]:  # type: ignore[operator]
                    self._last_ts["event"] = events[0][0]  # type: ignore[assignment]
                    x = events.popleft()[1]
                    append(x if bare else ("event", x))
                else:
                    self._last_ts["label"] = labels[0][0]  # type: ignore[assignment]
                    x = labels.popleft()[1]
                    append(x if bare else ("label", x))
                continue
            kind = "event" if events and self._at_end["label"] else "label" if labels and self._at_end["event"] else None
            if kind is None:
                self._held_since = None
                return out
            queue = events if kind == "event" else labels
            other = "label" if kind == "event" else "event"
            if queue[0][0] <= self._last_ts[other] + self._grace:  # type: ignore[operator]
                self._last_ts[kind] = queue[0][0]  # type: ignore[assignment]
                x = queue.popleft()[1]
                append(x if bare else (kind, x))
                continue
            now = self._clock()
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since < self._max_wait:
                return out
            self._held_since = None
            while queue:  # held long enough: the other topic really is quiet
                ts, payload = queue.popleft()
                if ts is not None:
                    self._last_ts[kind] = ts
                append(payload if bare else (kind, payload))
