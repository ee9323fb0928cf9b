"""The HTTP adapters' transport (notifier.http_pool): httpx's pool over streams that know
their socket. Real sockets against a local server; nothing patched."""

from __future__ import annotations

import asyncio
import socket

import httpx

from notifier.adapter import AdapterContext
from notifier.http_pool import _readable, _Stream
from notifier.testing.http import LocalHttpServer


def _context() -> AdapterContext:
    return AdapterContext(inbox=None, tokens=None)  # type: ignore[arg-type]


def _streams(client: httpx.AsyncClient) -> list[object]:
    pool = client._transport._pool  # type: ignore[attr-defined]
    return [connection._connection._network_stream for connection in pool.connections]


def test_a_client_of_the_real_network_pools_its_connections_over_our_streams() -> None:
    async def scenario(url: str) -> tuple[list[int], list[object]]:
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        async with _context().http_client(limits=limits) as client:
            answers = await asyncio.gather(*(client.get(url) for _ in range(6)))
            return [a.status_code for a in answers], _streams(client)

    with LocalHttpServer() as server:
        statuses, streams = asyncio.run(scenario(server.url + "/ping"))
        assert server.connections <= 2  # the limits reached the pool
    assert statuses == [200] * 6
    # If a new httpx stopped using the pool we give it, this fails instead of silently
    # losing the cheaper pool.
    assert streams
    assert all(isinstance(stream, _Stream) for stream in streams)


def test_a_connection_the_server_closed_while_idle_is_seen_and_replaced() -> None:
    # A server that answers one request per connection as if keeping it alive, then
    # hangs up: only the readability check tells the pool the idle connection is dead.
    connections: list[int] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario() -> list[int]:
        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            async with _context().http_client() as client:
                first = await client.get(url)
                await asyncio.sleep(0.1)  # the server's FIN reaches our socket
                second = await client.get(url)
                return [first.status_code, second.status_code]
        finally:
            server.close()

    assert asyncio.run(scenario()) == [200, 200]
    assert len(connections) == 2


def test_an_idle_socket_is_not_readable_until_its_peer_hangs_up() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert not _readable(ours)
        theirs.close()
        assert _readable(ours)
    finally:
        ours.close()
    assert _readable(ours)  # closed on our side: as httpcore, "readable" (drop it)
