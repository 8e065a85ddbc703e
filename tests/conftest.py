"""Broker fixtures.

- ``broker``: the embedded Tansu broker by default; Apache Kafka with ``--kafka=apache``;
  both (the test runs once on each) with ``--kafka=both``; an existing cluster when
  ``CT_STREAM_TEST_BOOTSTRAP`` is set.
- ``apache_kafka``: the session's Apache Kafka node, for tests that need transactions.
- ``apache_node_factory``: a fresh Apache Kafka node on its own data dir, for tests
  that kill and restart the broker.

Apache Kafka needs Java and the jars (``scripts/install-kafka``). Where they are missing,
its tests are skipped with a reason that says how to install them, except on CI
(``CI=true``), where a missing install step must fail the run.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ct_stream.errors import BrokerNotInstalled
from ct_stream.kafka import apache
from ct_stream.kafka.broker import EmbeddedBroker

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kafka", choices=("embedded", "apache", "both"), default="embedded",
                     help="which broker the `broker` fixture runs on (default: embedded)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" in metafunc.fixturenames:
        if os.environ.get("CT_STREAM_TEST_BOOTSTRAP"):
            kinds = ["external"]
        else:
            choice = metafunc.config.getoption("--kafka")
            kinds = ["embedded", "apache"] if choice == "both" else [choice]
        metafunc.parametrize("broker", kinds, indirect=True)


@dataclass(frozen=True)
class BrokerHandle:
    """What a test needs to know about the broker it runs against."""

    kind: str  # embedded | apache | external
    bootstrap: str
    isolates_transactions: bool

    def topic(self, prefix: str = "t") -> str:
        """A topic name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _need_apache() -> None:
    """Skip (or, on CI, fail) when Java or the Kafka jars cannot be had."""
    try:
        apache.find_java()
        apache.fetch_jars()
    except BrokerNotInstalled as e:
        if ON_CI:
            pytest.fail(f"Apache Kafka is not installed on CI: {e}")
        pytest.skip(f"Apache Kafka unavailable: {e}")


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu"))
    try:
        broker.start()
    except BrokerNotInstalled as e:
        pytest.skip(str(e))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apache.ApacheKafka]:
    """One Apache Kafka node for the whole session (transactions isolate on it)."""
    _need_apache()
    node = apache.ApacheKafka(tmp_path_factory.mktemp("kafka") / "node")
    node.start()
    yield node
    node.stop()


@pytest.fixture
def apache_node_factory(tmp_path: Path) -> Iterator[Callable[[], apache.ApacheKafka]]:
    """Fresh nodes on their own data dirs, stopped at the end of the test."""
    _need_apache()
    nodes: list[apache.ApacheKafka] = []

    def make() -> apache.ApacheKafka:
        node = apache.ApacheKafka(tmp_path / f"node{len(nodes)}")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> BrokerHandle:
    kind = request.param
    if kind == "external":
        return BrokerHandle("external", os.environ["CT_STREAM_TEST_BOOTSTRAP"], isolates_transactions=True)
    if kind == "apache":
        node = request.getfixturevalue("apache_kafka")
        return BrokerHandle("apache", node.bootstrap, isolates_transactions=True)
    embedded = request.getfixturevalue("embedded_broker")
    return BrokerHandle("embedded", embedded.bootstrap, isolates_transactions=False)

