"""A controllable HTTP server on 127.0.0.1 for adapter tests: a stand-in provider.

::

    with LocalHttpServer() as server:          # a free port, its own threads
        settings = {"url": server.url + "/send"}
        ...send...
        request = server.last_request           # method, path, query, headers, body
        server.fail_next(503, headers={"Retry-After": "30"})
        server.hang_next(seconds=5)              # answer late (a timeout on the client)
        server.drop_next()                       # hang up without answering
        server.active_connections                # open client connections right now

``check`` runs first on every request and may answer instead (e.g. 401 when a
signature is wrong); then scripted answers, oldest first; then ``default``, a
:class:`Reply` or a function of the request. Every request is recorded with the
status it got. It speaks HTTP/1.1 with keep-alive, so a client that pools
connections keeps them open until it closes them, and :attr:`active_connections`
shows whether it did.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from notifier.testing.server import BackgroundHttpServer, TrackingHttpServer

__all__ = ["LocalHttpServer", "RecordedRequest", "Reply"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    status: int = 0  # what the server answered (0: no answer, the connection was dropped)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True)
class Reply:
    """One answer. ``body`` may be bytes, text, or anything JSON-serialisable."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering (stop() cuts it short)
    drop: bool = False  # close the connection without answering

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            body = self.body
        elif isinstance(self.body, str):
            body = self.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            body = json.dumps(self.body, ensure_ascii=False).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        return body, headers


Responder = Callable[[RecordedRequest], Reply]


class _Handler(BaseHTTPRequestHandler):
    # Answers go out as several small writes; without TCP_NODELAY each waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: TrackingHttpServer
    timeout = 30  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.server.owner._connected(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines may carry personal data (phone numbers in queries)."""

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body(),
        )
        reply = self.server.owner._reply_for(request)
        if reply.delay_s > 0:
            self.server.owner._released.wait(reply.delay_s)
        if reply.drop:
            self.server.owner._record(request, 0)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        body, headers = reply.encoded()
        self.server.owner._record(request, reply.status)
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client gave up waiting (a timeout test)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class LocalHttpServer(BackgroundHttpServer):
    """See the module docstring. ``url`` is ``http://127.0.0.1:<port>`` (no slash)."""

    def __init__(
        self,
        *,
        default: Reply | Responder | None = None,
        check: Callable[[RecordedRequest], Reply | None] | None = None,
    ) -> None:
        super().__init__("127.0.0.1", 0)
        self.default: Reply | Responder = default or Reply(200, {"ok": True})
        self.check = check
        self._lock = threading.Condition()
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._connections = 0
        self._released = threading.Event()

    # -- lifecycle --------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def start(self) -> Self:
        self._released.clear()
        return super().start()

    def _before_stop(self) -> None:
        self._released.set()  # answers held back by hang_next go out now

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting --------------------------------------------------------------------

    def reply_next(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order (after ``check``)."""
        with self._lock:
            self._script.extend(replies)

    def fail_next(
        self,
        status: int = 503,
        *,
        times: int = 1,
        body: Any = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.reply_next(*[Reply(status, body, dict(headers or {}))] * times)

    def hang_next(self, seconds: float = 10.0, *, times: int = 1) -> None:
        """Hold the next answers back for ``seconds`` (the client should time out)."""
        self.reply_next(*[Reply(200, {"ok": True}, delay_s=seconds)] * times)

    def drop_next(self, *, times: int = 1) -> None:
        """Hang up on the next requests without answering."""
        self.reply_next(*[Reply(drop=True)] * times)

    def clear(self) -> None:
        """Forget recorded requests and scripted answers."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    # -- what happened ----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    @property
    def connections(self) -> int:
        """Connections accepted since start."""
        with self._lock:
            return self._connections

    def wait_for(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"got {len(self._requests)} of {count} requests")
            return list(self._requests)

    def wait_for_idle(self, timeout: float = 5.0) -> None:
        if not self.wait_for_no_connections(timeout):
            raise TimeoutError(f"{self.active_connections} client connections still open")

    # -- called on the server's threads ---------------------------------------------------

    def _reply_for(self, request: RecordedRequest) -> Reply:
        if self.check is not None:
            refusal = self.check(request)
            if refusal is not None:
                return refusal
        with self._lock:
            if self._script:
                return self._script.popleft()
        default = self.default
        return default if isinstance(default, Reply) else default(request)

    def _record(self, request: RecordedRequest, status: int) -> None:
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    request.body,
                    status,
                )
            )
            self._lock.notify_all()

    def _connected(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._lock.notify_all()
