"""A real Faust worker scores with a hot-swapped ct-stream model and sees a new version take effect."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from ct_stream.kafka.clients import TopicSpec, ensure_topics, make_consumer, make_producer
from ct_stream.kafka.trainer_io import ModelPublisher
from ct_stream.registry import ModelUpdate, sign
from ct_stream.topology import load_topology
from tests.helpers import trained, wait_for

pytestmark = pytest.mark.apache

KEY = b"faust-test-key"
REPO = Path(__file__).resolve().parents[1]


def test_faust_agent_serves_the_newly_published_version(apache_kafka: Any, tmp_path: Path) -> None:
    bootstrap = apache_kafka.bootstrap
    name = f"faust-{uuid.uuid4().hex[:8]}"
    topo_path = tmp_path / "topology.py"
    topo_path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
                            features={{"x0": "float", "x1": "float"}}, label_type="binary")
    """))
    t = load_topology(topo_path)
    requests_topic, answers_topic = f"{name}.requests", f"{name}.answers"
    ensure_topics(bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"}),
                              TopicSpec(requests_topic, 1, 1), TopicSpec(answers_topic, 1, 1)])
    app_path = tmp_path / "scorer.py"
    app_path.write_text(textwrap.dedent(f"""
        import faust, orjson
        from ct_stream.integrations.faust import FaustModel
        from ct_stream.topology import load_topology

        app = faust.App({name!r}, broker="kafka://{bootstrap}", store="memory://", web_enabled=False,
                        topic_partitions=1)
        model = FaustModel(app, load_topology({str(topo_path)!r}), {bootstrap!r}, signing_key={KEY!r})
        requests = app.topic({requests_topic!r}, value_serializer="raw")
        answers = app.topic({answers_topic!r}, value_serializer="raw")

        @app.agent(requests)
        async def score(stream):
            async for value in stream:
                request = orjson.loads(value)
                try:
                    answer = model.predict(request["features"], key=request["id"])
                    out = {{"id": request["id"], "version": answer.version, "value": answer.value}}
                except Exception as e:  # no model yet: say so, keep going
                    out = {{"id": request["id"], "error": f"{{type(e).__name__}}: {{e}}"}}
                await answers.send(value=orjson.dumps(out))

        if __name__ == "__main__":
            app.main()
    """))

    def publish(version: int, function: int) -> None:
        fmt, data = trained(t, function, version, n=1000).artifact()
        update = ModelUpdate(name=t.model_name, version=version, parent_version=version - 1 or None,
                             action="promote", created_at=1.0, artifact_format=fmt,
                             artifact_sha256=hashlib.sha256(data).hexdigest(), artifact_inline=data)
        publisher = ModelPublisher(bootstrap, t.models_topic)
        publisher.publish(t.model_name.encode(), sign(update, KEY))
        publisher.close()

    publish(1, 0)
    log = open(tmp_path / "faust.log", "w+")
    worker = subprocess.Popen([sys.executable, str(app_path), "worker", "-l", "warn"], stdout=log,
                              stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    producer = make_producer(bootstrap)
    consumer = make_consumer(bootstrap, None)
    consumer.assign([TopicPartition(answers_topic, 0, 0)])
    answers: list[dict[str, Any]] = []
    sent = itertools.count()

    def answered_by(version: int) -> bool:
        assert worker.poll() is None, log.read() if not log.seek(0) else log.read()
        i = next(sent)
        producer.produce(requests_topic, orjson.dumps({"id": f"r{i}", "features": {"x0": 0.2, "x1": 0.9}}))
        producer.flush(10)
        for m in consumer.consume(num_messages=100, timeout=0.5):
            if m.error() is None:
                answers.append(orjson.loads(m.value()))
        return any(a.get("version") == version for a in answers)

    try:
        wait_for(lambda: answered_by(1), 120, "an answer from v1")
        publish(2, 1)  # the flipped concept: its answer to the same features differs
        wait_for(lambda: answered_by(2), 60, "an answer from v2")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        consumer.close()
    v1 = [a for a in answers if a.get("version") == 1]
    v2 = [a for a in answers if a.get("version") == 2]
    assert v1 and v2 and v1[0]["value"] != v2[0]["value"]
    assert answers.index(v2[0]) > answers.index(v1[-1])  # once v2 answers, v1 does not come back
