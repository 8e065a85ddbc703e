"""The trainer worker against a real broker: learn, drift, retrain, gate, signed publish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from ct_stream.errors import TrainerError, VerificationError
from ct_stream.kafka.clients import DeliveryTracker, TopicSpec, ensure_topics, make_producer, produce_retrying
from ct_stream.kafka.trainer_io import ModelPublisher, read_back, read_topic
from ct_stream.learn.online import learner_from_artifact, make_learner
from ct_stream.records import decode_examples, encode_examples, examples_to_batch
from ct_stream.registry import (ArtifactRef, ModelUpdate, path_from_uri, sign, store_artifact, verify,
                                verify_with_artifact)
from ct_stream.runtime.trainer import TrainerWorker
from ct_stream.topology import Topology
from tests.helpers import batch_of, sine_rows, trained

KEY = b"test-signing-key"


def topology(name: str, tmp_path: Path, **sections: Any) -> Topology:
    spec: dict[str, Any] = {
        "retrain": {"every_examples": None, "every_seconds": None, "on_drift": True, "cooldown": "0s",
                    "window_rows": 20_000, "data_dir": str(tmp_path / "data")},
        "gate": {"holdout_size": 600, "min_samples": 300},
        "publish": {"online_every": "1h", "artifact_dir": str(tmp_path / "artifacts")},
        "drift": {"data_method": "none"},
    }
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values}
    return Topology(name=name, events_topic=f"{name}.events", labels_topic=f"{name}.labels",
                    features={"x0": "float", "x1": "float"}, label_type="binary", partitions=2, **spec)


def produce_examples(bootstrap: str, t: Topology, rows: list[tuple[dict[str, float], bool]],
                     per_message: int = 200, start: int = 0, partition: int | None = None,
                     timestamp_step_ms: int = 0) -> int:
    """Write ``rows`` as joined examples, ``per_message`` rows per Arrow message, round robin
    over the partitions (or all to ``partition``); returns the number of messages. With
    ``timestamp_step_ms`` the messages' timestamps are that far apart (else the producer's clock)."""
    base_ms = int(time.time() * 1000)
    tracker = DeliveryTracker()
    producer = make_producer(bootstrap, on_delivery=tracker)
    messages = 0
    for i in range(0, len(rows), per_message):
        chunk = rows[i:i + per_message]
        batch = examples_to_batch([
            {"id": f"e{start + i + j}", "event_ts": 1.7e9 + start + i + j, "label_ts": 1.7e9 + start + i + j + 1,
             "label": y, "outcome": "joined", "source_partition": messages % t.partitions,
             "source_offset": start + i + j, **x}
            for j, (x, y) in enumerate(chunk)], t.record_schema)
        p = messages % t.partitions if partition is None else partition
        if timestamp_step_ms:
            producer.produce(t.examples_topic, encode_examples(batch), partition=p,
                             timestamp=base_ms + messages * timestamp_step_ms)
        else:
            produce_retrying(producer, t.examples_topic, encode_examples(batch), partition=p)
        messages += 1
    producer.flush(60)
    assert tracker.failed == 0, tracker.first_error
    return messages


def run_until(worker: TrainerWorker, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        worker.step()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def updates(bootstrap: str, t: Topology) -> list[ModelUpdate]:
    return [verify(value, KEY) for _, value, _, _ in read_topic(bootstrap, t.models_topic)]


def accuracy(update_value: bytes, t: Topology, rows: list[tuple[dict[str, float], bool]]) -> float:
    update, data = verify_with_artifact(update_value, KEY)
    model = learner_from_artifact(update.artifact_format, data, t)
    p = model.predictions(batch_of(t, rows))
    return float(np.mean((p > 0.5) == np.array([y for _, y in rows])))


def test_trainer_refuses_to_start_unsigned_without_insecure(tmp_path: Path) -> None:
    t = topology("unsigned", tmp_path)
    with pytest.raises(TrainerError, match="CT_STREAM_SIGNING_KEY"):
        TrainerWorker(t, "127.0.0.1:1")


def test_drift_triggers_a_retrain_whose_promoted_version_recovers(broker: Any, tmp_path: Path) -> None:
    """An abrupt concept drift (Sine function 0 -> 1: every label flips) is detected after the
    change point, a retrain on the rows since the detection is gated against the
    pre-drift champion and promoted, and it predicts the new concept better."""
    t = topology(broker.topic("drift"), tmp_path, retrain={"every_examples": 3000})
    before = sine_rows(0, 1, 4000)
    after = sine_rows(1, 2, 5000)
    fresh_after = sine_rows(1, 3, 2000)
    registry = CollectorRegistry()
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY, registry=registry)
    worker.setup()
    try:
        produce_examples(broker.bootstrap, t, before)
        # the volume trigger at 3000 examples makes the first champion: the pre-drift concept
        run_until(worker, lambda: worker.champion_version == 1 and worker.learned == 4000, 120,
                  "v1 from the volume-triggered retrain")
        assert registry.get_sample_value("ct_trainer_drift_detections_total",
                                         {"topology": t.name, "detector": "concept"}) in (None, 0.0)
        produce_examples(broker.bootstrap, t, after, start=len(before))
        run_until(worker, lambda: worker.champion_version == 2, 180, "v2 from the drift-triggered retrain")
        detections = registry.get_sample_value("ct_trainer_drift_detections_total",
                                               {"topology": t.name, "detector": "concept"})
        assert detections and detections >= 1
        assert registry.get_sample_value("ct_trainer_retrains_total", {"topology": t.name, "trigger": "drift"}) == 1
    finally:
        worker.close()
    raw = {verify(v, KEY).version: v for _, v, _, _ in read_topic(broker.bootstrap, t.models_topic)}
    assert sorted(raw) == [1, 2]
    v1, v2 = verify(raw[1], KEY), verify(raw[2], KEY)
    assert v2.parent_version == 1 and v2.action == "promote"
    assert v2.lineage["snapshot"] is not None and Path(v2.lineage["snapshot"]["path"]).exists()
    report = v2.gate_report
    assert report is not None and report["decision"] == "approve"
    assert report["champion_mean_loss"] > report["challenger_mean_loss"]
    # on fresh data of the new concept the promoted model beats the pre-drift champion
    acc1, acc2 = accuracy(raw[1], t, fresh_after), accuracy(raw[2], t, fresh_after)
    assert acc2 > acc1 and acc2 > 0.6, (acc1, acc2)
    assert sum(v1.lineage["examples_offsets"].values()) <= sum(v2.lineage["examples_offsets"].values())


def test_a_worse_candidate_is_rejected_and_the_champion_stays(broker: Any, tmp_path: Path) -> None:
    """A champion trained on 20k examples is published first; the trainer's retrain learns
    only the ~900 rows it has seen, which is not better: the gate rejects it and nothing is
    published."""
    t = topology(broker.topic("worse"), tmp_path, retrain={"every_examples": 1500})
    good = trained(t, 0, 5, n=20_000)
    fmt, data = good.artifact()
    inline, uri, sha = store_artifact(data, tmp_path / "a", t.model_name, 1)
    v1 = ModelUpdate(name=t.model_name, version=1, parent_version=None, action="promote", created_at=1.0,
                     artifact_format=fmt, artifact_sha256=sha, artifact_inline=inline, artifact_uri=uri)

    ensure_topics(broker.bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    publisher.publish(t.model_name.encode(), sign(v1, KEY))
    publisher.close()
    registry = CollectorRegistry()
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY, registry=registry)
    worker.setup()
    assert worker.champion_version == 1
    try:
        produce_examples(broker.bootstrap, t, sine_rows(0, 6, 1600))
        run_until(worker, lambda: registry.get_sample_value(
            "ct_trainer_gate_decisions_total", {"topology": t.name, "candidate": "retrain", "decision": "reject"}),
            120, "the gate's decision on the retrained candidate")
    finally:
        worker.close()
    assert registry.get_sample_value("ct_trainer_gate_decisions_total",
                                     {"topology": t.name, "candidate": "retrain", "decision": "approve"}) is None
    assert [u.version for u in updates(broker.bootstrap, t)] == [1]
    assert worker.champion_version == 1
    import orjson

    decisions = [orjson.loads(line) for line in worker.gate_log_path.read_bytes().splitlines()]
    rejected = [d for d in decisions if d["candidate"] == "retrain"]
    assert rejected and rejected[0]["report"]["decision"] == "reject" and rejected[0]["champion_version"] == 1
    assert rejected[0]["report"]["reasons"]


def test_published_updates_verify_and_tampering_is_detected(broker: Any, tmp_path: Path) -> None:
    """The online model is offered at the publish cadence; with no champion the gate judges
    the guards only and v1 goes out signed, with lineage offsets that cover what it learned."""
    t = topology(broker.topic("publish"), tmp_path, publish={"online_every": "0s"})
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    worker.setup()
    try:
        messages = produce_examples(broker.bootstrap, t, sine_rows(0, 7, 1000))
        run_until(worker, lambda: worker.learned == 1000 and worker.champion_version >= 1, 60, "v1")
    finally:
        worker.close()
    (_, value, _, _), *_ = read_topic(broker.bootstrap, t.models_topic)
    update = verify(value, KEY)
    assert update.artifact_format == "ct_stream.linear/1"
    assert sum(update.lineage["examples_offsets"].values()) <= messages
    with pytest.raises(VerificationError) as e:
        verify(value.replace(b'"action":"promote"', b'"action":"rollback"'), KEY)
    assert e.value.reason == "bad_signature"
    with pytest.raises(VerificationError) as e:
        verify(value, b"another key")
    assert e.value.reason == "bad_signature"


def test_undecodable_examples_go_to_the_dlq_and_learning_goes_on(broker: Any, tmp_path: Path) -> None:
    t = topology(broker.topic("bad"), tmp_path)
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    worker.setup()
    try:
        producer = make_producer(broker.bootstrap)
        produce_retrying(producer, t.examples_topic, b"not arrow", partition=0)
        producer.flush(30)
        produce_examples(broker.bootstrap, t, sine_rows(0, 8, 400))
        run_until(worker, lambda: worker.learned == 400, 60, "400 examples learned")
        worker.checkpoint()
    finally:
        worker.close()
    dlq = [(k, v, p, o) for k, v, p, o in read_topic(broker.bootstrap, t.dlq_topic)]
    assert [v for _, v, _, _ in dlq] == [b"not arrow"]


def test_read_back_goes_back_in_doubling_steps_until_it_has_the_rows(broker: Any, tmp_path: Path) -> None:
    t = topology(broker.topic("readback"), tmp_path)
    ensure_topics(broker.bootstrap, [TopicSpec(t.examples_topic, 2, 1)])
    produce_examples(broker.bootstrap, t, sine_rows(0, 5, 100), per_message=1, partition=0)  # offsets 0..99
    produce_examples(broker.bootstrap, t, sine_rows(0, 6, 10), per_message=5, partition=1)  # offsets 0..1

    def decode(value: bytes | None) -> pa.RecordBatch:
        return decode_examples(value or b"", t.record_schema)

    got = read_back(broker.bootstrap, t.examples_topic, {0: 100}, decode, 50)
    assert [o for _, o, _, _ in got] == list(range(36, 100))  # one step of 64 records holds 50 rows
    got = read_back(broker.bootstrap, t.examples_topic, {0: 100}, decode, 80)
    assert sorted(o for _, o, _, _ in got) == list(range(100))  # 64, then the 36 left before them
    # several partitions, each until it has the rows
    got = read_back(broker.bootstrap, t.examples_topic, {0: 90, 1: 2}, decode, 3)
    assert sorted((p, o) for p, o, _, _ in got) == [(0, o) for o in range(26, 90)] + [(1, 0), (1, 1)]
    assert all(b.num_rows == (1 if p == 0 else 5) for p, _, _, b in got)


def test_the_window_read_back_keeps_the_newest_rows_across_partitions(broker: Any, tmp_path: Path) -> None:
    t = topology(broker.topic("refill"), tmp_path, retrain={"window_rows": 500})
    first = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    first.setup()
    # e0..e999 in order, 100 a message, alternating partitions, each message 10 ms after the one before
    produce_examples(broker.bootstrap, t, sine_rows(0, 4, 1000), per_message=100, timestamp_step_ms=10)
    run_until(first, lambda: first.learned == 1000, 60, "1000 examples")
    first.close()
    second = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    second.setup()
    second.close()
    ids = second.window.table().column("id").to_pylist()
    assert sorted(ids, key=lambda i: int(i[1:])) == ids == [f"e{i}" for i in range(500, 1000)]


@pytest.mark.parametrize("window_rows", [20_000, 500])
def test_restart_resumes_from_the_checkpoint(broker: Any, tmp_path: Path, window_rows: int) -> None:
    """A worker that stops after a checkpoint and a new one on the same data dir learn every
    example exactly once, and the restored model continues where the first left off. The
    window store comes back from the examples topic: the rows learned last (all 1000, or
    the newest 500), in the order they were learned."""
    t = topology(broker.topic("resume"), tmp_path, retrain={"window_rows": window_rows})
    rows = sine_rows(0, 9, 2000)
    first = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    first.setup()
    produce_examples(broker.bootstrap, t, rows[:1000], partition=0)  # one partition: one order
    run_until(first, lambda: first.learned == 1000, 60, "the first 1000 examples")
    first.close()
    state_after_first = first.learner.state()
    holdout_after_first = pa.concat_tables([table for table, _, _ in first._recent])
    gate_after_first = first._online_holdout()
    produce_examples(broker.bootstrap, t, rows[1000:], start=1000, partition=0)
    second = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    second.setup()
    assert second.learned == 1000 and second.learner.state() == state_after_first
    assert second._seen.keys() == first._seen.keys()  # the dedupe memory
    assert first.window.rows == min(1000, window_rows)
    assert second.window.table().equals(first.window.table())
    # the gate's holdout (recent rows with the losses they had when predicted) came back too
    assert pa.concat_tables([table for table, _, _ in second._recent]).equals(holdout_after_first)
    restored = second._online_holdout()
    assert restored[0].equals(gate_after_first[0])
    np.testing.assert_array_equal(restored[1], gate_after_first[1])
    np.testing.assert_array_equal(restored[2], gate_after_first[2])
    try:
        run_until(second, lambda: second.learned == 2000, 60, "the rest")
    finally:
        second.close()
    reference = make_learner(t)
    for i in range(0, 2000, 200):
        reference.learn(batch_of(t, rows[i:i + 200]))
    assert second.learner.metrics()["n"] == pytest.approx(reference.metrics()["n"])
    assert second.learner.metrics()["log_loss"] == pytest.approx(reference.metrics()["log_loss"], rel=1e-9)
    # a checkpoint of an earlier version holds the dedupe ids as a list: it loads the same
    import pickle

    from ct_stream.runtime.checkpoint import write_atomic

    cp = pickle.loads(second.checkpoint_path.read_bytes())
    assert isinstance(cp["seen"], pa.Array) and len(cp["seen"]) == min(2000, window_rows)
    write_atomic(second.checkpoint_path, pickle.dumps({**cp, "seen": cp["seen"].to_pylist()}))
    third = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    third.setup()
    third.close()
    assert third._seen.keys() == second._seen.keys() and third.learned == 2000


def test_run_role_all_joins_learns_publishes_and_exposes_metrics(broker: Any, tmp_path: Path) -> None:
    """`ct-stream run --role all` (the default): one process joins events with their labels,
    learns the examples, publishes the online model (unsigned with --insecure, no key in the
    environment) and serves both workers' metrics; SIGTERM stops it cleanly."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import textwrap
    import urllib.request

    from ct_stream.runtime.pipeline import end_of_input
    from ct_stream.synthetic import generate
    from ct_stream.topology import load_topology
    from tests.helpers import wait_for

    name = broker.topic("all")
    path = tmp_path / "topology.py"
    path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(
            name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
            features={{"x": "float", "n": "int", "flag": "bool", "c": "str"}}, label_type="binary", partitions=2,
            join={{"max_label_delay": "10s", "grace": "2s", "commit_interval": "0.5s"}},
            gate={{"holdout_size": 500, "min_samples": 200}},
            publish={{"online_every": "1s", "artifact_dir": {str(tmp_path / 'artifacts')!r}}},
            retrain={{"data_dir": {str(tmp_path / 'data')!r}}},
        )
    """))
    t = load_topology(path)
    ensure_topics(broker.bootstrap, [TopicSpec(x, t.partitions) for x in (t.events_topic, t.labels_topic)])
    data = generate(t, 3000, seed=4, events_per_second=1000, label_fraction=0.7, max_delay=3.0)
    producer = make_producer(broker.bootstrap)
    for kind, key, value in data.in_time_order():
        produce_retrying(producer, t.events_topic if kind == "event" else t.labels_topic, value, key)
    assert producer.flush(60) == 0
    end_of_input(t, broker.bootstrap, 1_700_000_000.0 + 86_400.0)
    env = {k: v for k, v in os.environ.items() if k != "CT_STREAM_SIGNING_KEY"}
    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "run", str(path), "--bootstrap", broker.bootstrap,
                             "--insecure", "--metrics-port", "0", "--log-level", "WARNING"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)

    def output() -> str:
        log.seek(0)
        return log.read()

    try:
        port = int(wait_for(lambda: re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", output())
                            or proc.poll() is not None, 60, "the metrics port").group(1))

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        def sample(text: str, metric: str) -> float:
            found = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        expected = len(data.events) + t.partitions  # every event joined or expired, and the end-of-input pairs
        text = wait_for(lambda: proc.poll() is None and (s := scrape())
                        and sample(s, "ct_trainer_examples_learned_total") == expected
                        and sample(s, "ct_trainer_champion_version") >= 1 and s, 120,
                        f"{expected} examples learned and a version published")
        assert "running in" in output() and "trainer" in output()
        joined = sum(float(v) for v in re.findall(r'^ct_joiner_examples_total\{[^}]*\} (\S+)$', text, re.M))
        assert joined == expected
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, output()
    (_, value, _, _), *_ = read_topic(broker.bootstrap, t.models_topic)
    update = verify(value, None, insecure=True)
    assert update.version == 1 and sum(update.lineage["examples_offsets"].values()) >= 1
    with pytest.raises(VerificationError) as e:
        verify(value, KEY)  # a serving node with a key refuses the unsigned update
    assert e.value.reason == "unsigned"


def test_versions_continue_after_updates_this_trainer_cannot_verify(broker: Any, tmp_path: Path) -> None:
    """An update signed with another key is ignored as a champion, but its version still
    counts: the trainer's first version comes after it, never beside it."""
    t = topology(broker.topic("foreign"), tmp_path, publish={"online_every": "0s"})
    import hashlib

    fmt, data = make_learner(t).artifact()
    foreign = ModelUpdate(name=t.model_name, version=5, parent_version=None, action="promote", created_at=1.0,
                          artifact_format=fmt, artifact_sha256=hashlib.sha256(data).hexdigest(),
                          artifact_inline=data)

    ensure_topics(broker.bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    publisher.publish(t.model_name.encode(), sign(foreign, b"someone else's key"))
    publisher.close()
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    worker.setup()
    assert worker.champion_version == 0 and worker.last_version == 5
    try:
        produce_examples(broker.bootstrap, t, sine_rows(0, 12, 600))
        run_until(worker, lambda: worker.champion_version == 6, 60, "the first own version")
    finally:
        worker.close()
    values = [v for _, v, _, _ in read_topic(broker.bootstrap, t.models_topic)]
    assert len(values) == 2 and verify(values[1], KEY).version == 6 and verify(values[1], KEY).parent_version is None


def test_examples_written_twice_are_learned_once(broker: Any, tmp_path: Path) -> None:
    """An at-least-once joiner may write a micro-batch again after a crash: the trainer
    drops the repeated ids (a correction is not a repeat of its expired example) and
    counts them, across a restart too."""
    t = topology(broker.topic("dupes"), tmp_path)
    rows = sine_rows(0, 13, 600)
    registry = CollectorRegistry()
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY, registry=registry)
    worker.setup()
    produce_examples(broker.bootstrap, t, rows, partition=0)
    produce_examples(broker.bootstrap, t, rows[400:], start=400, partition=1)  # the last 200 again
    run_until(worker, lambda: worker.offsets.get(1) == 1, 60, "both copies read")
    worker.close()
    assert worker.learned == 600 and worker.duplicates == 200
    assert registry.get_sample_value("ct_trainer_duplicate_examples_total", {"topology": t.name}) == 200
    correction = examples_to_batch([{"id": "e0", "event_ts": 1.7e9, "label_ts": 1.7e9 + 5, "label": True,
                                     "outcome": "correction", "source_partition": 0, "source_offset": 0,
                                     **rows[0][0]}], t.record_schema)
    producer = make_producer(broker.bootstrap)
    for _ in range(2):
        produce_retrying(producer, t.examples_topic, encode_examples(correction), partition=0)
    produce_examples(broker.bootstrap, t, rows[:100], partition=0)  # older repeats, after a restart
    producer.flush(30)
    again = TrainerWorker(t, broker.bootstrap, signing_key=KEY)
    again.setup()
    # the window read back holds each of the 600 learned examples once, as the first worker's did
    ids = [sorted(w.window.table().column("id").to_pylist()) for w in (worker, again)]
    assert ids[0] == ids[1]
    assert again.window.rows == 600
    try:
        run_until(again, lambda: again.learned + again.duplicates >= 600 + 200 + 2 + 100, 60, "the rest read")
    finally:
        again.close()
    assert again.learned == 601 and again.duplicates == 200 + 1 + 100


@pytest.mark.parametrize(("canary_is_good", "compacted"), [(False, False), (True, False), (False, True)])
def test_canary_is_promoted_or_rolled_back_on_live_labels(broker: Any, tmp_path: Path, canary_is_good: bool,
                                                          compacted: bool) -> None:
    """With ``serving.rollout="canary"`` the trainer watches the served predictions of a
    canary and its champion (examples carry ``served_version`` and ``prediction``, as
    serving nodes log them): a canary that serves a flipped concept is rolled back, a
    good one promoted, once both have ``canary_min_labels`` labelled examples.
    ``compacted``: the topic holds only the canary (compaction removed the champion's
    update); the trainer restarts from the champion artifact the canary carries."""
    import hashlib

    t = topology(broker.topic("canary"), tmp_path, serving={"rollout": "canary", "canary_min_labels": 300})

    champion = trained(t, 0, 20, n=3000)
    canary = trained(t, 0, 21, n=3000) if canary_is_good else trained(t, 1, 22, n=3000)

    ensure_topics(broker.bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    shas = {}
    ref = None
    for version, learner, action in ((1, champion, "promote"), (2, canary, "canary")):
        fmt, data = learner.artifact()
        shas[version] = hashlib.sha256(data).hexdigest()
        update = ModelUpdate(name=t.model_name, version=version, parent_version=1 if version == 2 else None,
                             action=action, created_at=1.0, artifact_format=fmt, artifact_sha256=shas[version],
                             artifact_inline=data, champion_artifact=ref)
        ref = ArtifactRef(fmt, shas[version], data)  # the canary carries its champion
        if not (compacted and version == 1):
            publisher.publish(t.model_name.encode(), sign(update, KEY))
    publisher.close()
    registry = CollectorRegistry()
    worker = TrainerWorker(t, broker.bootstrap, signing_key=KEY, registry=registry)
    worker.setup()
    assert worker.champion_version == 1 and worker.canary is not None and worker.canary.version == 2
    assert worker.champion_update is not None and worker.champion_update.artifact_sha256 == shas[1]
    # a canary this trainer publishes carries the champion: inline while both fit, else in a file
    assert worker._champion_ref(9, None) == ArtifactRef(fmt, shas[1], champion.artifact()[1])
    big = worker._champion_ref(9, b"x" * (t.publish.inline_max_bytes - 100))
    assert big is not None and big.inline is None and big.sha256 == shas[1]
    assert hashlib.sha256(Path(path_from_uri(big.uri)).read_bytes()).hexdigest() == shas[1]  # type: ignore[arg-type]
    # serving nodes' logged predictions, joined with their labels: half the keys on each version
    live = sine_rows(0, 23, 1000)
    rows = []
    for i, (x, y) in enumerate(live):
        version, model = (2, canary) if i % 2 else (1, champion)
        rows.append({"id": f"s{i}", "event_ts": 1.7e9 + i, "label_ts": 1.7e9 + i + 1, "label": y, "outcome": "joined",
                     "served_version": version, "prediction": model.predict_one(x)[1][True],
                     "source_partition": 0, "source_offset": i, **x})
    producer = make_producer(broker.bootstrap)
    for i in range(0, len(rows), 100):
        produce_retrying(producer, t.examples_topic, encode_examples(examples_to_batch(rows[i:i + 100],
                                                                                       t.record_schema)), partition=0)
    producer.flush(30)
    try:
        run_until(worker, lambda: worker.champion_version == 3, 60, "the canary's outcome")
    finally:
        worker.close()
    v3 = updates(broker.bootstrap, t)[-1]
    decision = "promote" if canary_is_good else "rollback"
    assert (v3.version, v3.action, v3.parent_version) == (3, decision, 1)
    assert v3.artifact_sha256 == shas[2 if canary_is_good else 1]
    assert v3.metrics["canary_analysis"]["decision"] == decision
    assert v3.metrics["canary_analysis"]["canary_n"] >= 300 and v3.metrics["canary_analysis"]["champion_n"] >= 300
    assert registry.get_sample_value("ct_trainer_canary_decisions_total",
                                     {"topology": t.name, "decision": decision}) == 1
    assert worker.canary is None
