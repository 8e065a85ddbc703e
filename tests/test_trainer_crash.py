"""The trainer under kill -9 on Apache Kafka: every example learned exactly once, versions
strictly increasing, every published update verifies."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from ct_stream.kafka.trainer_io import read_topic
from ct_stream.registry import verify_with_artifact
from ct_stream.topology import load_topology
from tests.helpers import sine_rows, wait_for
from tests.test_trainer import produce_examples

pytestmark = pytest.mark.apache

KEY = b"crash-test-key"


def write_topology(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        from ct_stream.topology import Topology
        topology = Topology(
            name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
            features={{"x0": "float", "x1": "float"}}, label_type="binary", partitions=3,
            retrain={{"every_examples": 15000, "every_seconds": None, "cooldown": "0s",
                      "data_dir": {str(tmp_path / 'data')!r}}},
            gate={{"holdout_size": 1000, "min_samples": 500, "alpha": 0.5}},
            publish={{"online_every": "1s", "artifact_dir": {str(tmp_path / 'artifacts')!r}}},
        )
    """))
    return path


def learned(checkpoint: Path) -> int:
    try:
        return pickle.loads(checkpoint.read_bytes())["learned"]
    except FileNotFoundError:
        return 0


class Trainer:
    """A `ct-stream run --role trainer` subprocess."""

    def __init__(self, topology_file: Path, bootstrap: str, log_dir: Path) -> None:
        self.log = open(log_dir / f"trainer-{uuid.uuid4().hex[:6]}.log", "w+")
        env = {**os.environ, "CT_STREAM_SIGNING_KEY": KEY.decode()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ct_stream.cli", "run", str(topology_file), "--role", "trainer",
             "--bootstrap", bootstrap, "--checkpoint-interval", "0.5", "--log-level", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]


def test_trainer_killed_with_sigkill_learns_every_example_once(apache_kafka, tmp_path):
    name = f"tcrash-{uuid.uuid4().hex[:8]}"
    path = write_topology(tmp_path, name)
    topology = load_topology(path)
    checkpoint = tmp_path / "data" / f"{name}.trainer" / "checkpoint.bin"
    bootstrap = apache_kafka.bootstrap
    rows = sine_rows(0, 11, 60_000)
    produced, stop = threading.Event(), threading.Event()

    def feed() -> None:  # about 2000 examples/s, so that the kills fall within the run
        for start in range(0, len(rows), 1000):
            produce_examples(bootstrap, topology, rows[start:start + 1000], per_message=200, start=start)
            if stop.wait(0.5):  # pacing the load, not awaiting a condition
                return
        produced.set()

    first = Trainer(path, bootstrap, tmp_path)  # creates the topics
    wait_for(lambda: first.proc.poll() is not None or "running" in first.tail(), 60, "the trainer to start")
    assert first.proc.poll() is None, first.tail()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    rng = random.Random(3)
    trainer, kills, progress = first, 0, 0
    try:
        while kills < 10:
            # kill only after this incarnation has checkpointed progress, at a random point after it
            progress = wait_for(lambda: trainer.proc.poll() is not None
                                or ((n := learned(checkpoint)) > progress and n), 120,
                                "the trainer to checkpoint progress")
            assert trainer.proc.poll() is None, f"the trainer exited by itself:\n{trainer.tail()}"
            try:
                trainer.proc.wait(rng.uniform(0.0, 1.0))
                raise AssertionError(f"the trainer exited by itself:\n{trainer.tail()}")
            except subprocess.TimeoutExpired:
                pass
            trainer.proc.send_signal(signal.SIGKILL)
            trainer.proc.wait()
            kills += 1
            trainer = Trainer(path, bootstrap, tmp_path)
        assert progress < len(rows), "the kills must fall within the run"
        feeder.join(300)
        assert produced.is_set()
        wait_for(lambda: trainer.proc.poll() is not None or learned(checkpoint) >= len(rows), 300,
                 "every example learned")
    finally:
        stop.set()
        if trainer.proc.poll() is None:
            trainer.proc.send_signal(signal.SIGTERM)
        assert trainer.proc.wait(60) == 0, trainer.tail()
    cp = pickle.loads(checkpoint.read_bytes())
    assert cp["learned"] == len(rows)
    updates = [verify_with_artifact(v, KEY)[0] for _, v, _, _ in read_topic(bootstrap, topology.models_topic)]
    versions = [u.version for u in updates]
    assert len(versions) >= 2 and versions == sorted(set(versions)), versions
