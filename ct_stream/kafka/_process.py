"""Starting broker processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ct_stream.errors import BrokerError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # own process group: a terminal's Ctrl-C goes to the parent, which stops us cleanly
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def spawn_guarded(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group; Linux kills it when this process dies.

    The parent-death signal is tied to the *thread* that starts the child: start
    brokers from a thread that lives as long as the broker should (the main thread).
    stdout and stderr go to ``log_path``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, preexec_fn=_die_with_parent, close_fds=True)
    except OSError as e:
        raise BrokerError(f"could not start {argv[0]}: {e}") from e
    finally:
        log.close()


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it. Returns the exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group at once (a crash, for fault tests) and reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float,
               what: str, log_path: Path) -> None:
    """Poll ``ready()`` until it is true; fail early, with the log's tail, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"{what} exited with code {proc.returncode} before it was ready; "
                              f"last lines of {log_path}:\n{log_tail(log_path)}")
        if ready():
            return
        if time.monotonic() > deadline:
            stop_group(proc)
            raise BrokerError(f"{what} was not ready within {timeout:.0f} s; last lines of {log_path}:\n"
                              f"{log_tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def port_open(host: str, port: int) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_in_foreground(node: Any, what: str) -> int:
    """Start ``node`` (a broker with start/stop/bootstrap), print its address, run until Ctrl-C or SIGTERM.

    Returns 0 after a clean stop, 1 if the broker process exits by itself.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    print(f"{what} ready: bootstrap.servers={node.bootstrap} (Ctrl-C stops it)", flush=True)
    proc = node._proc
    while not stop.wait(0.5):
        if proc.poll() is not None:
            print(f"{what} exited with code {proc.returncode}; log: {node.log_path}", file=sys.stderr)
            return 1
    node.stop()
    return 0
