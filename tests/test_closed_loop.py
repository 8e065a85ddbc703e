"""The whole loop with real processes: a serving node logs its predictions, the joiner joins
them with their labels, the trainer judges the canary on those live labels and rolls it
back, and the serving node swaps back."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ct_stream.kafka.clients import TopicSpec, ensure_topics, make_producer, produce_retrying
from ct_stream.kafka.trainer_io import ModelPublisher
from ct_stream.records import Label, encode_label
from ct_stream.registry import ModelUpdate, sign
from ct_stream.runtime.models import read_updates
from ct_stream.topology import load_topology
from tests.helpers import sine_rows, trained, wait_for
from tests.test_server import REPO, start_server  # noqa: F401 - start_server: the fixture
from tests.test_serving import KEY


def test_bad_canary_is_rolled_back_on_the_labels_of_its_served_predictions(
        broker: Any, tmp_path: Path, start_server: Any) -> None:  # noqa: F811
    """v1 (good) is the champion, v2 (trained on the flipped concept) a canary for half of
    the request keys. ``ct-stream serve`` answers requests with ids and logs each answer
    to the events topic; their true labels follow on the labels topic; ``ct-stream run``
    (joiner and trainer) joins them, sees the canary's served predictions lose against
    the champion's, and publishes a rollback; the server then answers every key with the
    champion's model again."""
    name = broker.topic("loop")
    path = tmp_path / f"{name}.py"  # the server fixture expects the file named after the topology
    path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(
            name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
            features={{"x0": "float", "x1": "float"}}, label_type="binary", partitions=2,
            join={{"max_label_delay": "1h", "grace": "5s", "commit_interval": "0.5s"}},
            serving={{"rollout": "canary", "canary_fraction": 0.5, "canary_min_labels": 150}},
            publish={{"online_every": "1h", "artifact_dir": {str(tmp_path / 'artifacts')!r}}},
            retrain={{"every_examples": None, "every_seconds": None, "on_drift": False,
                      "data_dir": {str(tmp_path / 'data')!r}}},
        )
    """))
    t = load_topology(path)
    ensure_topics(broker.bootstrap, [TopicSpec(x, t.partitions) for x in (t.events_topic, t.labels_topic)]
                  + [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
    champion, canary = trained(t, 0, seed=30, n=3000), trained(t, 1, seed=31, n=3000)
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    shas = {}
    for version, learner, action in ((1, champion, "promote"), (2, canary, "canary")):
        fmt, data = learner.artifact()
        shas[version] = hashlib.sha256(data).hexdigest()
        publisher.publish(t.model_name.encode(), sign(ModelUpdate(
            name=t.model_name, version=version, parent_version=1 if version == 2 else None, action=action,
            created_at=time.time(), artifact_format=fmt, artifact_sha256=shas[version], artifact_inline=data), KEY))
    publisher.close()

    server = start_server(broker.bootstrap, path)
    wait_for(lambda: server.call("GET", "/healthz")[1].get("canary_version") == 2, 30, "v1 and the v2 canary served")
    env = {**os.environ, "CT_STREAM_SIGNING_KEY": KEY.decode()}
    log = open(tmp_path / "run.log", "w+")
    loop = subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "run", str(path), "--bootstrap", broker.bootstrap,
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        # live traffic: 600 requests with ids and keys, answered by the champion or the canary
        rows = sine_rows(0, 32, 600)
        answers = []
        for start in range(0, len(rows), 100):
            status, body = server.predict({"requests": [
                {"features": x, "key": f"user-{start + k}", "id": f"req-{start + k}"}
                for k, (x, _) in enumerate(rows[start:start + 100])]})
            assert status == 200, body
            answers += body["predictions"]
        routes = [a["route"] for a in answers]
        assert {a["version"] for a in answers} == {1, 2}
        assert routes.count("canary") >= 200 and routes.count("champion") >= 200  # half the keys, roughly
        # their true labels arrive later, from the application
        producer = make_producer(broker.bootstrap)
        now = time.time()
        for k, (_, y) in enumerate(rows):
            key = f"req-{k}"
            produce_retrying(producer, t.labels_topic, encode_label(Label(key, now + 1.0, y), t.record_schema),
                             key.encode())
        assert producer.flush(30) == 0

        def rolled_back() -> bool:
            assert loop.poll() is None, (tmp_path / "run.log").read_text()
            health = server.call("GET", "/healthz")[1]
            return health["version"] == 3 and health["canary_version"] is None

        wait_for(rolled_back, 90, "the rollback to reach the server")
        v3 = next(e.update for e in read_updates(broker.bootstrap, t, KEY) if e.update and e.update.version == 3)
        assert (v3.action, v3.parent_version, v3.artifact_sha256) == ("rollback", 1, shas[1])
        analysis = v3.metrics["canary_analysis"]
        assert analysis["decision"] == "rollback"
        assert analysis["canary_mean_loss"] > analysis["champion_mean_loss"]
        assert analysis["canary_n"] >= 150 and analysis["champion_n"] >= 150
        # every key, the canary's former ones included, is answered by the champion's model now
        status, body = server.predict({"requests": [{"features": x, "key": f"user-{k}"}
                                                    for k, (x, _) in enumerate(rows[:50])]})
        assert status == 200 and {(p["version"], p["route"]) for p in body["predictions"]} == {(3, "champion")}
        expected = [champion.predict_one(x)[1][True] for x, _ in rows[:50]]
        assert [p["probabilities"]["true"] for p in body["predictions"]] == pytest.approx(expected)
    finally:
        loop.terminate()
        loop.wait(30)
