"""Exactly-once under faults on Apache Kafka: kill -9 of joiner processes, and rebalances.

Each test runs real `ct-stream run --role joiner` subprocesses against the session's
Apache Kafka node and checks the examples topic, read with read_committed, afterwards:
every valid event id exactly once, with the outcome its label (or its absence) demands.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from ct_stream.kafka.clients import TopicSpec, ensure_topics, make_producer, produce_retrying
from ct_stream.synthetic import generate
from ct_stream.topology import load_topology
from tests.helpers import wait_for
from tests.test_joiner_worker import produce_in_time_order, read_examples

pytestmark = pytest.mark.apache


def write_topology(tmp_path: Path, name: str) -> Path:
    # idle_timeout is longer than any pause these tests make (a joiner starting, the
    # producer moving on to the next part): a partition quiet for longer rightly
    # closes its pending events as negatives, which would change the expected outcomes.
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(
            name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
            features={{"x": "float", "n": "int", "flag": "bool", "c": "str"}}, label_type="binary",
            partitions=4,
            join={{"max_label_delay": "10s", "grace": "2s", "idle_timeout": "20s", "commit_interval": "0.5s"}},
        )
    """))
    return path


class Joiner:
    """A `ct-stream run --role joiner` subprocess."""

    def __init__(self, topology_file: Path, bootstrap: str, instance: str, log_dir: Path) -> None:
        self.log = open(log_dir / f"joiner-{instance}-{uuid.uuid4().hex[:6]}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ct_stream.cli", "run", str(topology_file), "--role", "joiner",
             "--bootstrap", bootstrap, "--instance", instance, "--log-level", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        self.log.seek(0)
        return "running in exactly_once mode" in self.log.read()

    def wait_running(self) -> None:
        wait_for(lambda: self.running() or self.proc.poll() is not None, 60, "the joiner to start")
        assert self.proc.poll() is None, self.tail()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]


def check_exactly_once(bootstrap, topology, data) -> None:
    valid = len(data.events)
    rows = wait_for(lambda: (r := read_examples(bootstrap, topology)) and len(r) >= valid and r, 180,
                    f"{valid} committed examples")
    ids = Counter(r["id"] for r in rows)
    duplicated = [i for i, n in ids.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} ids have more than one example, e.g. {duplicated[:5]}"
    assert len(ids) == valid
    wrong = [r["id"] for r in rows
             if (r["outcome"], r["label"]) != (("joined", data.truth[r["id"]]) if r["id"] in data.truth
                                               else ("expired", False))]
    assert not wrong, f"{len(wrong)} examples with the wrong outcome, e.g. {wrong[:5]}"


def committed_input(bootstrap: str, topology) -> int:
    """Input records the joiner group has committed so far (events + labels)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topology.name}.joiner"})
    try:
        tps = [TopicPartition(t, p) for t in (topology.events_topic, topology.labels_topic)
               for p in range(topology.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    finally:
        consumer.close()


class PacedProducer(threading.Thread):
    """Produces a synthetic stream in event-time order at about ``rate`` records/s."""

    def __init__(self, bootstrap: str, topology, stream, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topology, self.stream, self.rate = bootstrap, topology, stream, rate
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = make_producer(self.bootstrap, acks="all")
            started = time.monotonic()
            for i, (kind, key, value) in enumerate(self.stream):
                if self.stop.is_set():
                    return
                topic = self.topology.events_topic if kind == "event" else self.topology.labels_topic
                produce_retrying(producer, topic, value, key)
                if i % 1000 == 999:
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        self.stop.wait(ahead)  # pacing the load, not awaiting a condition
            assert producer.flush(60) == 0
        except BaseException as e:  # reported by the test
            self.error = e


def test_joiner_killed_with_sigkill_ten_times_yields_every_event_exactly_once(apache_kafka, tmp_path):
    name = f"crash-{uuid.uuid4().hex[:8]}"
    path = write_topology(tmp_path, name)
    topology = load_topology(path)
    bootstrap = apache_kafka.bootstrap
    ensure_topics(bootstrap, [TopicSpec(t, topology.partitions) for t in (topology.events_topic, topology.labels_topic)])
    data = generate(topology, 200_000, seed=5, events_per_second=5000, label_fraction=0.7, max_delay=5.0)
    stream = data.in_time_order()
    feeder = PacedProducer(bootstrap, topology, stream, rate=4000)
    feeder.start()

    rng = random.Random(1)
    kills, progress = 0, 0
    try:
        while kills < 10:
            joiner = Joiner(path, bootstrap, "0", tmp_path)
            joiner.wait_running()
            # Kill only after this incarnation has committed something, at a random
            # point of its work (mid-batch, mid-transaction, between commits).
            progress = wait_for(lambda: joiner.proc.poll() is not None
                                or ((c := committed_input(bootstrap, topology)) > progress and c), 120,
                                "the restarted joiner to commit progress")
            assert joiner.proc.poll() is None, f"the joiner exited by itself:\n{joiner.tail()}"
            try:
                joiner.proc.wait(rng.uniform(0.0, 1.5))
                raise AssertionError(f"the joiner exited by itself:\n{joiner.tail()}")
            except subprocess.TimeoutExpired:
                pass
            joiner.kill()
            kills += 1
        assert progress < len(stream), "the kills must fall within the run, before all input is processed"
        feeder.join(300)
        assert feeder.error is None, feeder.error
        final = Joiner(path, bootstrap, "0", tmp_path)
        try:
            final.wait_running()
            check_exactly_once(bootstrap, topology, data)
        finally:
            assert final.stop() == 0, final.tail()
    finally:
        feeder.stop.set()


def test_rebalance_one_two_one_joiners_keeps_every_event_exactly_once(apache_kafka, tmp_path):
    name = f"rebalance-{uuid.uuid4().hex[:8]}"
    path = write_topology(tmp_path, name)
    topology = load_topology(path)
    bootstrap = apache_kafka.bootstrap
    ensure_topics(bootstrap, [TopicSpec(t, topology.partitions) for t in (topology.events_topic, topology.labels_topic)])
    data = generate(topology, 60_000, seed=9, events_per_second=5000, label_fraction=0.7, max_delay=5.0)
    stream = data.in_time_order()

    class Part:
        def __init__(self, items):
            self.items = items

        def in_time_order(self):
            return self.items

    thirds = [stream[: len(stream) // 3], stream[len(stream) // 3: 2 * len(stream) // 3], stream[2 * len(stream) // 3:]]
    a = Joiner(path, bootstrap, "a", tmp_path)
    a.wait_running()
    produce_in_time_order(bootstrap, topology, Part(thirds[0]))
    b = Joiner(path, bootstrap, "b", tmp_path)
    b.wait_running()
    produce_in_time_order(bootstrap, topology, Part(thirds[1]))
    assert b.stop() == 0, b.tail()
    produce_in_time_order(bootstrap, topology, Part(thirds[2]))
    try:
        check_exactly_once(bootstrap, topology, data)
    finally:
        assert a.stop() == 0, a.tail()
