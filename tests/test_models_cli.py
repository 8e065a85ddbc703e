"""`ct-stream models list|show|rollback` against a real broker."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson

from ct_stream.kafka.clients import TopicSpec, ensure_topics
from ct_stream.kafka.trainer_io import ModelPublisher, read_topic
from ct_stream.learn.online import make_learner
from ct_stream.records import examples_to_batch
from ct_stream.registry import ArtifactRef, ModelUpdate, sign, verify
from ct_stream.topology import load_topology

KEY = b"models-cli-key"


def cli(*args: str, key: bytes | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CT_STREAM_SIGNING_KEY"}
    if key is not None:
        env["CT_STREAM_SIGNING_KEY"] = key.decode()
    return subprocess.run([sys.executable, "-m", "ct_stream.cli", "models", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def topology_file(broker: Any, tmp_path: Path, prefix: str) -> tuple[Path, Any]:
    """A topology file with a fresh name, and its promotion topic (compacted) created."""
    name = broker.topic(prefix)
    path = tmp_path / "topology.py"
    path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
                            features={{"x": "float"}}, label_type="binary")
    """))
    t = load_topology(path)
    ensure_topics(broker.bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
    return path, t


def test_list_show_and_rollback(broker: Any, tmp_path: Path) -> None:
    path, t = topology_file(broker, tmp_path, "models")
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    shas = {}
    for version, rows in ((1, 50), (2, 200)):
        learner = make_learner(t)
        learner.learn(examples_to_batch([{"id": str(i), "event_ts": 0.0, "label": i % 3 == 0, "outcome": "joined",
                                          "source_partition": 0, "source_offset": i, "x": float(i % 7)}
                                         for i in range(rows)], t.record_schema))
        fmt, data = learner.artifact()
        shas[version] = hashlib.sha256(data).hexdigest()
        update = ModelUpdate(name=t.model_name, version=version, parent_version=version - 1 or None,
                             action="promote", created_at=1.7e9 + version, artifact_format=fmt,
                             artifact_sha256=shas[version], artifact_inline=data,
                             metrics={"holdout_mean_loss": 0.5 / version, "gate_metric": "log_loss",
                                      "examples_learned": rows})
        publisher.publish(t.model_name.encode(), sign(update, KEY))
    publisher.close()
    boot = ("--bootstrap", broker.bootstrap)

    listed = cli("list", str(path), *boot)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["v1", "v2"]
    assert all("verified" in line and "NOT" not in line for line in lines)
    assert "parent v1" in lines[1] and "200 examples" in lines[1]
    unchecked = cli("list", str(path), *boot, key=None)
    assert "signature NOT CHECKED (no key)" in unchecked.stdout
    wrong = cli("list", str(path), *boot, key=b"another key")
    assert wrong.stdout.count("NOT VERIFIED (bad_signature") == 2

    shown = cli("show", str(path), "2", *boot)
    assert shown.returncode == 0, shown.stderr
    body = orjson.loads(shown.stdout)
    assert body["version"] == 2 and body["verified"] is True and body["artifact"]["sha256"] == shas[2]
    assert body["artifact"]["inline"].endswith("bytes inline>")

    refused = cli("rollback", str(path), "--to", "7", *boot)
    assert refused.returncode == 2 and "--to: got 7" in refused.stderr and "[1, 2]" in refused.stderr
    done = cli("rollback", str(path), "--to", "1", *boot)
    assert done.returncode == 0, done.stderr
    assert "published v3: rollback to v1" in done.stdout
    updates = [verify(v, KEY) for _, v, _, _ in read_topic(broker.bootstrap, t.models_topic)]
    v3 = updates[-1]
    assert (v3.version, v3.action, v3.parent_version, v3.artifact_sha256) == (3, "rollback", 1, shas[1])
    assert v3.metrics["rolled_back_from"] == 2 and v3.metrics["reason"] == "manual"
    unsigned = cli("rollback", str(path), "--to", "1", *boot, key=None)
    assert unsigned.returncode == 2 and "CT_STREAM_SIGNING_KEY" in unsigned.stderr


def test_rollback_to_the_champion_a_canary_carries_after_compaction(broker: Any, tmp_path: Path) -> None:
    """Compaction left only the canary v3 (champion v2's update is gone): `show` abbreviates
    the champion's inline artifact, and `rollback --to 2` restores it from the canary."""
    path, t = topology_file(broker, tmp_path, "models-compacted")
    fmt, champion = make_learner(t).artifact()
    sha = hashlib.sha256(champion).hexdigest()
    other = champion + b" "  # the canary's own artifact: other bytes, another sha256
    canary = ModelUpdate(name=t.model_name, version=3, parent_version=2, action="canary", created_at=1.7e9,
                         artifact_format=fmt, artifact_sha256=hashlib.sha256(other).hexdigest(),
                         artifact_inline=other, champion_artifact=ArtifactRef(fmt, sha, champion))
    publisher = ModelPublisher(broker.bootstrap, t.models_topic)
    publisher.publish(t.model_name.encode(), sign(canary, KEY))
    publisher.close()
    boot = ("--bootstrap", broker.bootstrap)
    shown = cli("show", str(path), "3", *boot)
    assert shown.returncode == 0, shown.stderr
    body = orjson.loads(shown.stdout)
    assert body["champion_artifact"]["inline"] == f"<{len(champion)} bytes inline>" and body["verified"] is True
    done = cli("rollback", str(path), "--to", "2", *boot)
    assert done.returncode == 0, done.stderr
    v4 = verify([v for _, v, _, _ in read_topic(broker.bootstrap, t.models_topic)][-1], KEY)
    assert (v4.version, v4.action, v4.parent_version, v4.artifact_sha256) == (4, "rollback", 2, sha)
