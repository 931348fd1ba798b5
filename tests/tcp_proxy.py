"""A small asyncio TCP proxy for chaos tests: listens on a loopback port and forwards every connection to a target.

``drop_all()`` closes every live connection at once (both sides), as a network blip or a broker restart would;
new connections are accepted and forwarded again right away. ``go_down()`` also stops listening, so new connections
are refused (ECONNREFUSED, as when the broker is down) until ``come_up()`` listens on the same port again.

    async with TcpProxy("127.0.0.1", broker_port) as proxy:
        ...  # clients connect to proxy.port
        dropped = proxy.drop_all()
        await proxy.go_down()  # an outage: connections cut, new ones refused
        await proxy.come_up()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType

_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self.accepted = 0  # connections accepted since start
        self.dropped = 0  # connections closed by drop_all
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._down = False

    @staticmethod
    def reserve_port(host: str = "127.0.0.1") -> int:
        """A free port to listen on later (to tell a broker its advertised address before the proxy starts)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])

    @property
    def live(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.drop_all(count=False)
        if server is not None:
            await server.wait_closed()

    @property
    def down(self) -> bool:
        return self._down

    async def go_down(self) -> int:
        """Stop listening and close every live connection: new connections are refused until ``come_up()``."""
        self._down = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        dropped = self.drop_all()
        if server is not None:
            await server.wait_closed()
        return dropped

    async def come_up(self) -> None:
        """Listen again on the same port."""
        self._down = False
        await self.start()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def drop_all(self, *, count: bool = True) -> int:
        """Close every live connection (client and target side); returns how many were closed."""
        links = list(self._links)
        for link in links:
            link.close()
        if count:
            self.dropped += len(links)
        return len(links)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            target_reader, target_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        link = _Link(client_writer, target_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                _pump(client_reader, target_writer),
                _pump(target_reader, client_writer),
            )
        finally:
            self._links.discard(link)
            link.close()
            for writer in (client_writer, target_writer):
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()


class _Link:
    """Both halves of one proxied connection."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target

    def close(self) -> None:
        for writer in (self.client, self.target):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()  # RST-like: no graceful half-close, in-flight bytes are lost


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        if not writer.transport.is_closing():
            writer.transport.abort()
