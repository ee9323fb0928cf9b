"""A threaded HTTP server running in the background: the base of the contract kit's
stand-in server (``notifier.testing.http``) and of the local provider simulators
(eSMS, SpeedSMS, Zalo in the ``notifier-simulators`` distribution, which builds on it).

It tracks open client connections, so a test can see that an adapter's ``close()``
released them, and it hangs up on every client when stopped.
"""

from __future__ import annotations

import abc
import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

_JOIN_TIMEOUT_S = 5.0


class TrackingHttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its open client connections and its owner."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # benchmarks open many connections at once

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any
    ) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_changed = threading.Condition()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_changed:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_changed:
            self.open_sockets.discard(request)
            self.sockets_changed.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout tests) is expected; anything else is printed.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> int:
        """Hang up on every client; returns how many there were."""
        with self.sockets_changed:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(sockets)


class BackgroundHttpServer(abc.ABC):
    """``start()``/``stop()`` or ``with``: serves ``handler_class()`` on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._server: TrackingHttpServer | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        """The request handler; it reaches this object as ``self.server.owner``."""

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        server = TrackingHttpServer((self.host, self._requested_port), self.handler_class(), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def _before_stop(self) -> None:  # noqa: B027 - an optional hook
        """Release anything a handler may be waiting on, so stopping does not hang."""

    def stop(self) -> None:
        """Stop listening and hang up on every open connection."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._before_stop()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def active_connections(self) -> int:
        """Client connections open right now."""
        server = self._server
        if server is None:
            return 0
        with server.sockets_changed:
            return len(server.open_sockets)

    def wait_for_no_connections(self, timeout: float) -> bool:
        """Wait until every client connection is closed; False on timeout."""
        server = self._server
        if server is None:
            return True
        with server.sockets_changed:
            return server.sockets_changed.wait_for(lambda: not server.open_sockets, timeout)
