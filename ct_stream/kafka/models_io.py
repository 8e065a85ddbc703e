"""Serving-side Kafka I/O: tail the promotion topic ``<name>.models`` in a background thread.

A serving node needs every surviving model update, from the beginning of the (compacted)
topic, and then each new one as it is published. :class:`ModelsTail` does that with an
``assign()``-based consumer (no consumer group: every node reads everything, and nothing is
committed) on every partition of the topic, from the beginning, and hands each record to a
callback on its own daemon thread.

Errors never kill the thread silently: transient ones are logged and the consumer goes on;
a fatal client error (or an exception out of the callback loop itself) is logged, kept in
:attr:`ModelsTail.error`, and ends the thread. A topic that does not exist yet is waited
for (checked once a second), so serving nodes may start before the trainer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from ct_stream.errors import BrokerError
from ct_stream.kafka.clients import consume_available, make_consumer

__all__ = ["ModelsTail", "OnRecord"]

log = logging.getLogger("ct_stream.kafka.models_io")

#: ``on_record(key, value, partition, offset)``; ``value`` is None for a tombstone.
OnRecord = Callable[[bytes | None, bytes | None, int, int], None]


class ModelsTail:
    """Read every partition of ``topic`` from the beginning, for ever, on a daemon thread.

    ``on_record(key, value, partition, offset)`` is called on that thread for each record,
    in offset order per partition; an exception it raises is logged and the tail goes on
    with the next record. :attr:`caught_up` is set once every partition has reached the end
    it had when the tail started reading it (then each later record is a new publish).
    :meth:`close` stops and joins the thread (also a context manager).

    ``passthrough`` is the topology's ``kafka`` client settings (SASL/SSL, ...).
    """

    def __init__(self, bootstrap: str, topic: str, passthrough: Mapping[str, Any] | None,
                 on_record: OnRecord, *, poll_timeout: float = 0.1, name: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.passthrough = dict(passthrough or {})
        self.on_record = on_record
        self.poll_timeout = poll_timeout
        #: The fatal error that ended the thread, or None while it runs (or ended by close()).
        self.error: BaseException | None = None
        #: Set once every partition has been read to the end it had at the start.
        self.caught_up = threading.Event()
        #: Records handed to ``on_record`` so far.
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name or f"models-tail[{topic}]", daemon=True)
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ModelsTail:
        """Start the thread (once); returns self."""
        if self._started:
            raise BrokerError(f"the tail of {self.topic!r} was started already")
        self._started = True
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop reading and join the thread (it leaves within ``poll_timeout`` plus a fetch)."""
        self._stop.set()
        if self._started and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the tail of %s did not stop within %.0f s", self.topic, timeout)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def __enter__(self) -> ModelsTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        consumer = None
        try:
            consumer = make_consumer(self.bootstrap, None, self.passthrough, enable_partition_eof=True)
            partitions = self._wait_for_partitions(consumer)
            if partitions is None:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            pending_eof = set(partitions)
            last_warning = 0.0
            while not self._stop.is_set():
                try:
                    msgs = consume_available(consumer, 500, self.poll_timeout)
                except KafkaException as e:
                    err = e.args[0] if e.args else None
                    if err is not None and getattr(err, "fatal", lambda: False)():
                        raise BrokerError(f"fatal error reading {self.topic!r}: {err}") from e
                    log.warning("reading %s: %s", self.topic, e)
                    continue
                for m in msgs:
                    err = m.error()
                    if err is None:
                        self.records += 1
                        try:
                            self.on_record(m.key(), m.value(), m.partition(), m.offset())
                        except Exception:  # noqa: BLE001 - one bad record must not stop the tail
                            log.exception("%s partition %d offset %d: the record handler failed",
                                          self.topic, m.partition(), m.offset())
                    elif err.code() == KafkaError._PARTITION_EOF:
                        if pending_eof:
                            pending_eof.discard(m.partition())
                            if not pending_eof:
                                self.caught_up.set()
                    elif err.fatal():
                        raise BrokerError(f"fatal error reading {self.topic!r}: {err}")
                    else:
                        now = time.monotonic()
                        if now - last_warning >= 5.0:  # a broker that is down says so every poll
                            last_warning = now
                            log.warning("reading %s: %s", self.topic, err)
        except BaseException as e:  # noqa: BLE001 - recorded, not lost with the thread
            self.error = e
            log.error("the tail of %s stopped: %s", self.topic, e)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception as e:  # noqa: BLE001
                    log.debug("closing the consumer of %s: %s", self.topic, e)

    def _wait_for_partitions(self, consumer: Any) -> list[int] | None:
        """The topic's partitions, once it exists; None if closed before that."""
        said = False
        while not self._stop.is_set():
            try:
                md = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
            except KafkaException as e:
                md, problem = None, f"cannot reach Kafka at {self.bootstrap}: {e}"
            else:
                problem = None if md is not None and md.error is None and md.partitions else \
                    f"topic {self.topic!r} does not exist yet"
            if problem is None:
                assert md is not None
                return sorted(md.partitions)
            if not said:
                log.info("%s; waiting for it", problem)
                said = True
            self._stop.wait(1.0)
        return None
