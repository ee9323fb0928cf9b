"""The HTTP adapters' transport: httpx's own, over connections that remember their socket.

httpcore's connection pool asks every open connection, each time a request starts or
ends, whether its socket became readable (which means the server closed it). Through
httpcore's anyio streams each question first rebuilds the stream's table of attributes
to find the socket, then polls it: in a worker sending to two HTTP gateways that was
about a tenth of the process's CPU (py-spy, docs/performance.md). Upstream knows it
(httpx issue 3215, httpcore PR 928) and has not changed it. The streams here find their
socket once, when connected, so the question costs one ``poll()``; everything else is
httpcore's, unchanged. Hand-written because no released httpcore option does this.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["pooled_transport"]

def _readable(sock: socket.socket | None) -> bool:
    """Whether a read would not block (data, or the peer's end of stream): httpcore's
    meaning of ``is_readable``. No socket (closed) counts as readable, as in httpcore."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """An anyio stream of httpcore's that knows its socket."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, handing out :class:`_Stream`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pooled_transport(
    limits: httpx.Limits, *, verify: ssl.SSLContext | str | bool = True, trust_env: bool = True
) -> httpx.AsyncHTTPTransport:
    """What ``httpx.AsyncClient(limits=..., verify=...)`` would build, over :class:`_Backend`.

    httpx takes no network backend, so its transport's pool is replaced by one built
    with the same settings; tests/test_http_pool.py fails if a new httpx stops using it.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=verify, trust_env=trust_env)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=trust_env),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return transport
