"""Predict latency of a serving node: in process and over HTTP (``ct-stream serve``).

    python loadtest/serving_latency.py [--requests 10000] [--http-requests 2000]

On the embedded broker: a binary topology with 10 float features and the default model
(the batch path's linear model), trained on 5,000 synthetic examples and published as a
signed v1 to ``<name>.models``. Then:

1. **in process**: a :class:`~ct_stream.serving.ModelSubscriber` loads v1; ``predict`` is
   called ``--requests`` times (a fresh key each, no canary), after 500 warm-up calls;
   then again, continuously, while ``--swaps`` new versions are published one every
   50 ms and hot-swapped in (the longest call is the longest pause a swap caused);
2. **over HTTP**: ``ct-stream serve`` in a subprocess; single ``POST /predict`` requests
   on one keep-alive connection, ``--http-requests`` of them after 200 warm-ups, without
   and with an ``id`` (a request with an id is also logged to the events topic).

Prints p50 and p99 in microseconds (wall time, ``time.perf_counter``). Goal (issue 5):
in-process p99 <= 1 ms for a linear model.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.kafka.broker import EmbeddedBroker  # noqa: E402
from ct_stream.kafka.clients import TopicSpec, ensure_topics  # noqa: E402
from ct_stream.kafka.trainer_io import ModelPublisher  # noqa: E402
from ct_stream.learn.online import make_learner  # noqa: E402
from ct_stream.records import examples_to_batch  # noqa: E402
from ct_stream.registry import ModelUpdate, sign, store_artifact  # noqa: E402
from ct_stream.serving import ModelSubscriber  # noqa: E402
from ct_stream.topology import load_topology  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]


def percentiles(seconds: list[float]) -> str:
    us = np.array(seconds) * 1e6
    return f"p50 {np.percentile(us, 50):,.0f} µs, p99 {np.percentile(us, 99):,.0f} µs (n={us.size})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--http-requests", type=int, default=2_000)
    ap.add_argument("--swaps", type=int, default=20, help="new versions published during the swap measurement")
    args = ap.parse_args()
    key = secrets.token_hex(32).encode()  # the CLI takes it as text from CT_STREAM_SIGNING_KEY
    rng = np.random.default_rng(0)
    broker = EmbeddedBroker().start()
    tmp = Path(tempfile.mkdtemp(prefix="ct-serving-latency-"))
    try:
        name = f"lat-{uuid.uuid4().hex[:6]}"
        path = tmp / "topology.py"
        path.write_text(textwrap.dedent(f"""
            from ct_stream.topology import Topology
            topology = Topology(name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
                                features={{f: "float" for f in {FEATURES!r}}}, label_type="binary")
        """))
        t = load_topology(path)
        ensure_topics(broker.bootstrap, [TopicSpec(t.events_topic, t.partitions),
                                         TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
        X = rng.normal(size=(5000, len(FEATURES)))
        y = X @ rng.normal(size=len(FEATURES)) > 0
        learner = make_learner(t)
        learner.learn(examples_to_batch([{"id": str(i), "event_ts": 0.0, "label": bool(y[i]), "outcome": "joined",
                                          "source_partition": 0, "source_offset": i,
                                          **dict(zip(FEATURES, X[i].tolist()))} for i in range(len(y))],
                                        t.record_schema))
        fmt, data = learner.artifact()
        inline, uri, sha = store_artifact(data, tmp, t.model_name, 1)
        update = ModelUpdate(name=t.model_name, version=1, parent_version=None, action="promote",
                             created_at=time.time(), artifact_format=fmt, artifact_sha256=sha,
                             artifact_inline=inline, artifact_uri=uri)
        publisher = ModelPublisher(broker.bootstrap, t.models_topic)
        publisher.publish(t.model_name.encode(), sign(update, key))
        publisher.close()
        requests = [dict(zip(FEATURES, row)) for row in rng.normal(size=(500 + args.requests, 10)).tolist()]

        with ModelSubscriber(broker.bootstrap, t, signing_key=key) as sub:
            if not sub.wait_for_version(1, timeout=60):
                raise SystemExit("the subscriber did not load v1 within 60 s")
            took = []
            for i, features in enumerate(requests):
                started = time.perf_counter()
                sub.predict(features, key=f"user-{i}")
                took.append(time.perf_counter() - started)
            print(f"in process, ModelSubscriber.predict: {percentiles(took[500:])} (goal p99 <= 1,000 µs)",
                  flush=True)

            # the same loop while new versions arrive: the tail thread verifies and loads each
            # one beside it (sharing the GIL) and swaps it in
            swaps = args.swaps
            publisher = ModelPublisher(broker.bootstrap, t.models_topic)

            def publish_versions() -> None:
                for v in range(2, 2 + swaps):
                    fmt, data = learner.artifact()
                    inline, uri, sha = store_artifact(data, tmp, t.model_name, v)
                    publisher.publish(t.model_name.encode(), sign(ModelUpdate(
                        name=t.model_name, version=v, parent_version=v - 1, action="promote", created_at=time.time(),
                        artifact_format=fmt, artifact_sha256=sha, artifact_inline=inline, artifact_uri=uri), key))
                    time.sleep(0.05)  # pacing: one new version every 50 ms
                publisher.flush()

            thread = threading.Thread(target=publish_versions)
            thread.start()
            took, versions, i = [], set(), 0
            deadline = time.monotonic() + 120
            while sub.current_version != 1 + swaps and time.monotonic() < deadline:
                features = requests[i % len(requests)]
                started = time.perf_counter()
                answer = sub.predict(features, key=f"user-{i}")
                took.append(time.perf_counter() - started)
                versions.add(answer.version)
                i += 1
            thread.join()
            publisher.close()
        print(f"in process, during {swaps} hot swaps (a new version every 50 ms; {len(versions)} versions "
              f"answered): {percentiles(took)}, max {max(took) * 1e6:,.0f} µs; calls over 1 ms: "
              f"{sum(x > 0.001 for x in took)}, over 5 ms: {sum(x > 0.005 for x in took)} (goal: no pause over 5 ms)")

        env = {**os.environ, "CT_STREAM_SIGNING_KEY": key.decode()}
        proc = subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "serve", str(path), "--bootstrap",
                                 broker.bootstrap, "--port", "0", "--log-level", "WARNING"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            host, port = line.split("http://")[1].split(" ")[0].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + 60
            while True:  # until the server has loaded the latest version
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                body = orjson.loads(response.read())
                if response.status == 200 and body.get("version") == 1 + args.swaps:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the server did not load v{1 + args.swaps} within 60 s: {body}")
                time.sleep(0.05)  # polling an external process's readiness
            for with_id in (False, True):
                took = []
                for i in range(200 + args.http_requests):
                    body = {"features": requests[i % len(requests)], "key": f"user-{i}"}
                    if with_id:
                        body["id"] = f"lat-{i}"
                    data = orjson.dumps(body)
                    started = time.perf_counter()
                    conn.request("POST", "/predict", body=data, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    took.append(time.perf_counter() - started)
                    assert response.status == 200
                what = "with an id (logged)" if with_id else "no id"
                print(f"over HTTP, POST /predict, {what}: {percentiles(took[200:])}")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
