"""Apache Kafka from Maven Central: fetch the jars, run a single KRaft node on loopback.

For exactly-once, crash/restart and soak tests: unlike the embedded broker, Apache
Kafka isolates transactions and keeps its data on disk across restarts.

- :func:`fetch_jars` writes a one-dependency POM and runs ``mvn
  dependency:copy-dependencies`` into a cache directory outside the repository
  (``~/.cache/ct-stream/kafka-<version>/libs`` by default); it does nothing when the
  jars are already there.
- :class:`ApacheKafka` formats a data directory once (cluster id and ports are kept in
  ``ct-stream-node.json`` inside it), starts the node with a small heap, waits until
  the client port answers, and can stop, kill -9 and restart it on the same data.

Command line (used by ``scripts/install-kafka``)::

    python -m ct_stream.kafka.apache fetch            # download the jars (idempotent)
    python -m ct_stream.kafka.apache run DATA_DIR     # run a node in the foreground
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from ct_stream.errors import BrokerError, BrokerNotInstalled
from ct_stream.kafka._process import (free_port, kill_group, log_tail, port_open, run_in_foreground, spawn_guarded,
                                      stop_group, wait_until)
from ct_stream.kafka.clients import cluster_answers

__all__ = ["KAFKA_VERSION", "LOG4J_VERSION", "ApacheKafka", "default_cache_dir", "fetch_jars", "find_java"]

KAFKA_VERSION = "4.3.1"
LOG4J_VERSION = "2.24.3"
_STATE_FILE = "ct-stream-node.json"
_INSTALL_HINT = ("install OpenJDK 17+ and Maven (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless maven), "
                 "then run scripts/install-kafka")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>ct-stream</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <!-- Kafka's POM has no logging binding; Kafka 4.x logs through SLF4J 1.7. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def default_cache_dir(home: Path | None = None) -> Path:
    """Where the jars are cached: ``~/.cache/ct-stream``."""
    return (home or Path.home()) / ".cache" / "ct-stream"


def find_java() -> str:
    """The ``java`` executable on PATH (Java 17+), or a BrokerNotInstalled error saying how to install it."""
    java = shutil.which("java")
    if java is None:
        raise BrokerNotInstalled(f"Apache Kafka needs Java, and no `java` is on PATH: {_INSTALL_HINT}")
    return java


def _libs_dir(cache_dir: Path, version: str) -> Path:
    return cache_dir / f"kafka-{version}" / "libs"


def jars_present(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> bool:
    """True when the broker jars of ``version`` are in the cache."""
    libs = _libs_dir(cache_dir or default_cache_dir(), version)
    return (libs / f"kafka_2.13-{version}.jar").is_file() and (libs / ".complete").is_file()


def fetch_jars(cache_dir: Path | None = None, version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Download the Kafka broker classpath with Maven into the cache; return the libs dir.

    Idempotent: a completed download (marked by ``libs/.complete``) is reused.
    """
    cache = cache_dir or default_cache_dir()
    libs = _libs_dir(cache, version)
    if jars_present(cache, version):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerNotInstalled(f"fetching the Kafka jars needs Maven, and no `mvn` is on PATH: {_INSTALL_HINT}")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    tmp = work / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(2, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn could not fetch org.apache.kafka:kafka_2.13:{version} (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-3000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    (libs / ".complete").write_text(version + "\n")
    return libs


def _new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class ApacheKafka:
    """A single-node KRaft Apache Kafka on 127.0.0.1, on a data directory of its own.

    The first :meth:`start` picks free ports, formats ``data_dir`` and records the
    cluster id and ports there; later starts (also from another process) reuse them, so
    a restart after :meth:`kill` recovers the same logs on the same address.

    >>> kafka = ApacheKafka(Path("/tmp/kafka-data"))     # doctest: +SKIP
    >>> kafka.start().bootstrap                          # doctest: +SKIP
    '127.0.0.1:39411'
    >>> kafka.kill(); kafka.start()                      # doctest: +SKIP
    """

    def __init__(self, data_dir: Path, cache_dir: Path | None = None, version: str = KAFKA_VERSION,
                 heap: str = "512m", ready_timeout: float = 90.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = cache_dir or default_cache_dir()
        self.version = version
        self.heap = heap
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._state: dict[str, object] | None = None

    # Paths and state -----------------------------------------------------------------
    @property
    def libs(self) -> Path:
        return _libs_dir(self.cache_dir, self.version)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def port(self) -> int:
        return int(self._load_state()["port"])  # type: ignore[call-overload]

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _load_state(self) -> dict[str, object]:
        if self._state is None:
            path = self.data_dir / _STATE_FILE
            if not path.is_file():
                raise BrokerError(f"{self.data_dir} is not formatted yet: call start() once")
            self._state = json.loads(path.read_text())
        return self._state

    def _java_argv(self, main_class: str, *args: str) -> list[str]:
        return [find_java(), f"-Xms128m", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{self.libs}/*", main_class, *args]

    def _write_config(self, port: int, controller_port: int) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.cleaner.dedupe.buffer.size": "33554432",
            "auto.create.topics.enable": "false",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _format_once(self) -> None:
        if (self.data_dir / _STATE_FILE).is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port, controller_port = free_port(), free_port()
        while controller_port == port:
            controller_port = free_port()
        config = self._write_config(port, controller_port)
        cluster_id = _new_cluster_id()
        proc = subprocess.run(self._java_argv("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                              "-c", str(config), "--standalone"),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed (exit {proc.returncode}):\n"
                              f"{(proc.stdout + proc.stderr)[-3000:]}")
        state = {"cluster_id": cluster_id, "port": port, "controller_port": controller_port,
                 "version": self.version}
        (self.data_dir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        self._state = state

    # Lifecycle -------------------------------------------------------------------------
    def start(self) -> "ApacheKafka":
        """Format once if needed, start the node, and wait until its client port answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        if not jars_present(self.cache_dir, self.version):
            raise BrokerNotInstalled(f"the Kafka {self.version} jars are not in {self.libs}: {_INSTALL_HINT} "
                                     "(or call ct_stream.kafka.apache.fetch_jars())")
        self._format_once()
        state = self._load_state()
        if state.get("version") != self.version:
            raise BrokerError(f"{self.data_dir} was formatted by Kafka {state.get('version')}, not {self.version}")
        port = int(state["port"])  # type: ignore[call-overload]
        if port_open("127.0.0.1", port):
            raise BrokerError(f"port {port} of {self.data_dir} is taken by another process: is this node "
                              "already running elsewhere?")
        config = self._write_config(port, int(state["controller_port"]))  # type: ignore[call-overload]
        self._proc = spawn_guarded(self._java_argv("kafka.Kafka", str(config)), self.log_path)
        # The client port opens only when the broker is ready (the controller's opens earlier).
        wait_until(lambda: port_open("127.0.0.1", port) and cluster_answers(self.bootstrap),
                   self._proc, self.ready_timeout, f"Apache Kafka on {self.bootstrap}", self.log_path)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM; SIGKILL after ``timeout`` s)."""
        if self._proc is not None:
            stop_group(self._proc, timeout)
            self._proc = None

    def kill(self) -> None:
        """kill -9: the node dies at once; acknowledged writes survive in the page cache."""
        if self._proc is not None:
            kill_group(self._proc)
            self._proc = None

    def restart(self, hard: bool = False) -> "ApacheKafka":
        """Stop (or kill -9 with ``hard=True``) and start again on the same data dir and ports."""
        self.kill() if hard else self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> "ApacheKafka":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ct_stream.kafka.apache",
                                     description="Fetch Apache Kafka from Maven Central and run a single KRaft node.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where the jars are cached (default: {default_cache_dir()})")
    parser.add_argument("--version", default=KAFKA_VERSION, help=f"Kafka version (default {KAFKA_VERSION})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the broker jars with mvn (does nothing when they are cached)")
    run = sub.add_parser("run", help="run a node in the foreground on DATA_DIR (formatted on first use)")
    run.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            libs = fetch_jars(args.cache_dir, args.version, quiet=False)
            print(f"Kafka {args.version} jars: {libs}")
            return 0
        fetch_jars(args.cache_dir, args.version)
        return run_in_foreground(ApacheKafka(args.data_dir, args.cache_dir, args.version), f"Apache Kafka {args.version}")
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
