"""``PredictionLog``: a serving node's producer of served predictions to the events topic.

The reference server (:mod:`ct_stream.serving.server`) hands it one encoded event per
served prediction that carries a request id; it is queued without blocking (a full
local queue drops the record and says so, since a request must never wait on Kafka)
and delivered in the background by librdkafka. :meth:`PredictionLog.flush` at shutdown
delivers what is queued.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

from ct_stream.errors import BrokerError
from ct_stream.kafka.clients import make_producer

__all__ = ["PredictionLog"]

log = logging.getLogger("ct_stream.serving")


class PredictionLog:
    """Queue records to ``topic`` keyed by the event id; count what was delivered or lost.

    ``on_outcome(outcome)`` is called with ``"delivered"`` or ``"failed"`` from the
    producer's delivery callback (served by :meth:`poll`, :meth:`produce` and :meth:`flush`).
    """

    def __init__(self, bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None = None,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.topic = topic
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self._producer = make_producer(bootstrap, passthrough, on_delivery=self._delivered)

    def _delivered(self, err: Any, msg: Any) -> None:
        with self._lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
                if self.first_error is None:
                    self.first_error = str(err)
                    log.warning("logging a served prediction to %r failed: %s (further failures are only counted)",
                                self.topic, err)
        if self._on_outcome is not None:
            self._on_outcome("delivered" if err is None else "failed")

    def produce(self, key: bytes, value: bytes) -> bool:
        """Queue one record without blocking; False when the local queue is full (dropped)."""
        try:
            self._producer.produce(self.topic, value, key)
        except BufferError:
            self._producer.poll(0)
            return False
        self._producer.poll(0)  # serve delivery reports; never waits
        return True

    def __call__(self, key: bytes, value: bytes) -> bool:
        return self.produce(key, value)

    def flush(self, timeout: float = 10.0) -> None:
        """Deliver everything queued; :class:`BrokerError` if records are still queued after ``timeout`` s."""
        left = self._producer.flush(timeout)
        if left:
            raise BrokerError(f"{left} served predictions still undelivered to {self.topic!r} after {timeout:g} s")
