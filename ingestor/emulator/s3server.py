"""A local S3-protocol server for development, tests and the demo: moto's standalone server as a subprocess.

It speaks the real S3 wire protocol (multipart uploads included) on a loopback port and keeps objects in memory,
so staged CSVs travel exactly as they would to AWS. Needs the ``moto[server]`` extra (in ``dev`` and ``demo``).

    with local_s3() as s3:          # s3.url → endpoint_url for any S3 client; any credentials
        ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingestor.broker import free_port, wait_for_port
from ingestor.errors import IngestorError


@dataclass
class LocalS3:
    """moto's S3 server (``python -m moto.server``) on a loopback port."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalS3:
        try:
            import moto.server  # noqa: F401 - only checks that the extra is installed
        except ImportError as exc:
            raise IngestorError("the local S3 server needs moto's server extra: pip install 'moto[server]'") from exc
        if self.port == 0:
            self.port = free_port(self.host)
        out = (
            os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.log_path is not None
            else subprocess.DEVNULL
        )
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter with fixed arguments
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if out >= 0:
            os.close(out)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except IngestorError:
            self.stop()
            raise
        return self

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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@contextlib.contextmanager
def local_s3(**kwargs: object) -> Iterator[LocalS3]:
    server = LocalS3(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
