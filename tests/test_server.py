"""``ct-stream serve``: the reference HTTP server as a real process against a real broker."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from ct_stream.kafka.clients import TopicSpec, ensure_topics
from ct_stream.kafka.trainer_io import read_topic
from tests.helpers import wait_for
from tests.test_serving import KEY, PROBE, Models, expected, topology, trained

REPO = Path(__file__).resolve().parents[1]


class Server:
    """A ``ct-stream serve`` subprocess and a small HTTP client for it."""

    def __init__(self, proc: subprocess.Popen[str], host: str, port: int, log: Path) -> None:
        self.proc, self.host, self.port, self.log = proc, host, port, log

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        """``(status, decoded JSON or text)``; ``raw`` sends those bytes as the body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = raw if raw is not None else None if body is None else orjson.dumps(body)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            payload = resp.read()
            kind = resp.getheader("Content-Type", "")
            return resp.status, orjson.loads(payload) if kind.startswith("application/json") else payload.decode()
        finally:
            conn.close()

    def predict(self, body: Any) -> tuple[int, Any]:
        return self.call("POST", "/predict", body)


def topology_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text("from ct_stream.topology import Topology\n"
                    f"topology = Topology(name={name!r}, events_topic={name + '.events'!r}, "
                    f"labels_topic={name + '.labels'!r}, features={{'x0': 'float', 'x1': 'float'}}, "
                    "label_type='binary')\n")
    return path


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start ``ct-stream serve`` processes; every one still running is killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(bootstrap: str, topo: Path, *extra: str) -> Server:
        log = tmp_path / f"serve{len(procs)}.log"
        env = {**os.environ, "CT_STREAM_SIGNING_KEY": KEY.decode()}
        proc = subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "serve", str(topo), "--bootstrap", bootstrap,
                                 "--port", "0", "--log-level", "WARNING", *extra],
                                stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd=REPO)
        procs.append(proc)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving "), f"no 'serving' line: {line!r}; log:\n{log.read_text()}"
        url = line.split(" on http://", 1)[1].split(" ", 1)[0]
        host, port = url.rsplit(":", 1)
        assert f"(model updates from {topo.stem}.models)" in line
        return Server(proc, host, int(port), log)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_predicts_hot_swaps_rejects_bad_requests_and_logs_predictions(
        broker: Any, tmp_path: Path, start_server: Any) -> None:
    name = broker.topic("http")
    t = topology(name)
    ensure_topics(broker.bootstrap, [TopicSpec(t.events_topic, 1, 1)])
    models = Models(broker, t, tmp_path)
    server = start_server(broker.bootstrap, topology_file(tmp_path, name))
    try:
        status, body = server.call("GET", "/healthz")
        assert (status, body["status"]) == (503, "no model yet")
        status, body = server.predict({"features": PROBE[0]})
        assert status == 503 and "no model loaded yet" in body["error"]

        a, b = trained(t, 0, seed=1), trained(t, 1, seed=2)
        models.publish(a, 1, None)
        wait_for(lambda: server.call("GET", "/healthz")[0] == 200, 20, "/healthz to turn 200")
        assert server.call("GET", "/healthz")[1]["version"] == 1

        # one, and a batch
        status, one = server.predict({"features": PROBE[3], "id": "req-1"})
        assert status == 200, one
        assert one["version"] == 1 and one["route"] == "champion" and one["id"] == "req-1"
        assert set(one["probabilities"]) == {"true", "false"}
        assert one["probabilities"]["true"] == pytest.approx(expected(a)[3])
        assert one["value"] is (one["probabilities"]["true"] > 0.5)
        status, batch = server.predict({"requests": [{"features": x, "key": f"k{i}", "id": f"b-{i}"}
                                                     for i, x in enumerate(PROBE)]})
        assert status == 200, batch
        assert [p["probabilities"]["true"] for p in batch["predictions"]] == pytest.approx(expected(a))
        assert {p["version"] for p in batch["predictions"]} == {1}
        assert server.predict({"features": PROBE[0]})[1]["id"] is None  # served, not logged

        # bad requests: 4xx with a reason, and the server keeps answering
        bad = [
            (dict(raw=b"{not json"), 400, "not valid JSON"),
            (dict(body=[1, 2]), 400, "allowed: a JSON object"),
            (dict(body={"feature": PROBE[0]}), 400, "unknown field(s) 'feature'"),
            (dict(body={"key": "k"}), 400, "missing 'features'"),
            (dict(body={"features": [1.0, 2.0]}), 400, "body.features: got list"),
            (dict(body={"features": {"x0": 0.5}}), 422, "x1"),
            (dict(body={"features": {"x0": "high", "x1": 0.5}}), 422, "x0"),
            (dict(body={"features": PROBE[0], "key": 42}), 400, "key: got int"),
            (dict(body={"features": PROBE[0], "id": ""}), 400, "id: got str"),
            (dict(body={"requests": [{"features": PROBE[0]}] * 1001}), 413, "at most 1000 per batch"),
            (dict(body={"requests": [{"features": PROBE[0]}, {"features": {"x0": True, "x1": 0.1}}]}), 422,
             "requests[1]: "),
        ]
        for kw, want_status, want_text in bad:
            status, answer = server.call("POST", "/predict", **kw)
            assert status == want_status, (kw, answer)
            assert want_text in answer["error"], (kw, answer)
        status, answer = server.call("GET", "/predict")
        assert status == 405 and "POST /predict" in answer["error"]
        assert server.predict({"features": PROBE[1]})[0] == 200
        assert server.predict({"features": {**PROBE[1], "undeclared": "x"}})[0] == 200  # ignored, as in training

        # keep-alive: many requests on one connection (latency: loadtest/serving_latency.py)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        for _ in range(21):
            conn.request("POST", "/predict", body=orjson.dumps({"features": PROBE[2]}))
            response = conn.getresponse()
            assert response.status == 200 and orjson.loads(response.read())["version"] >= 1
        conn.close()

        # concurrent clients
        failures: list[Any] = []

        def client(n: int) -> None:
            for i in range(50):
                status, answer = server.predict({"features": PROBE[(n + i) % len(PROBE)], "key": f"c{n}-{i}"})
                if status != 200 or answer["version"] != 1:
                    failures.append((status, answer))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert failures == []

        # model info, then a new version is served
        status, info = server.call("GET", "/model")
        assert status == 200 and info["version"] == 1 and info["parent_version"] is None
        assert info["action"] == "promote" and len(info["artifact"]["sha256"]) == 64
        assert "examples_offsets" in info["lineage"] and info["previous_version"] is None
        models.publish(b, 2, 1)
        wait_for(lambda: server.call("GET", "/healthz")[1]["version"] == 2, 20, "v2 to be served")
        status, one = server.predict({"features": PROBE[3], "id": "req-2"})
        assert one["version"] == 2 and one["probabilities"]["true"] == pytest.approx(expected(b)[3])
        info = server.call("GET", "/model")[1]
        assert (info["version"], info["parent_version"], info["previous_version"]) == (2, 1, 1)

        # metrics
        status, text = server.call("GET", "/metrics")
        assert status == 200 and "# TYPE ct_serving_predictions_total counter" in text
        assert f'ct_serving_predictions_total{{route="champion",topology="{name}",version="1"}}' in text
        assert f'ct_server_requests_total{{endpoint="predict",status="422",topology="{name}"}} 3.0' in text
        assert f'ct_serving_model_version{{route="champion",topology="{name}"}} 2.0' in text

        # SIGTERM: a clean exit, and the logged predictions are flushed
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0, server.log.read_text()
    finally:
        models.close()

    events = {k.decode(): orjson.loads(v) for k, v, _p, _o in read_topic(broker.bootstrap, t.events_topic)}
    assert set(events) == {"req-1", "req-2", *(f"b-{i}" for i in range(len(PROBE)))}
    assert events["req-1"]["served_version"] == 1 and events["req-2"]["served_version"] == 2
    assert events["req-1"]["prediction"] == pytest.approx(expected(a)[3])
    assert events["req-1"]["features"] == PROBE[3] and isinstance(events["req-1"]["ts"], float)


def test_no_log_predictions_logs_nothing(broker: Any, tmp_path: Path, start_server: Any) -> None:
    name = broker.topic("http")
    t = topology(name)
    ensure_topics(broker.bootstrap, [TopicSpec(t.events_topic, 1, 1)])
    models = Models(broker, t, tmp_path)
    try:
        models.publish(trained(t, 0, seed=1, n=200), 1, None)
        server = start_server(broker.bootstrap, topology_file(tmp_path, name), "--no-log-predictions")
        wait_for(lambda: server.call("GET", "/healthz")[0] == 200, 20, "/healthz to turn 200")
        assert server.predict({"features": PROBE[0], "id": "x"})[0] == 200
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(20) == 0
    finally:
        models.close()
    assert read_topic(broker.bootstrap, t.events_topic) == []


def test_serve_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CT_STREAM_SIGNING_KEY"}
    out = subprocess.run([sys.executable, "-m", "ct_stream.cli", "serve", str(topology_file(tmp_path, "nokey")),
                          "--bootstrap", "127.0.0.1:1"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "CT_STREAM_SIGNING_KEY: not set" in out.stderr and "--insecure" in out.stderr
