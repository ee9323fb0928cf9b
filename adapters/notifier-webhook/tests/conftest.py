"""A stand-in for the province's app: a local HTTP server that verifies every request's
signature the way the README tells app developers to (an implementation of its own,
not the adapter's signing module), answering 401 to anything not correctly signed.

Test modules get it through the ``app`` fixture (conftest modules are not importable).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from notifier.testing import LocalHttpServer, RecordedRequest, Reply

SECRET = "0123456789abcdef0123456789abcdef-province-app"
WINDOW_S = 300


def _hmac(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class AppStandIn:
    """The app's server plus what a test needs to talk like the app."""

    server: LocalHttpServer
    secret: str = SECRET

    @property
    def url(self) -> str:
        return self.server.url + "/notify"

    @property
    def active_connections(self) -> int:
        return self.server.active_connections

    def signature_problem(self, request: RecordedRequest) -> str | None:
        """What is wrong with a request's signature, or None if it verifies."""
        timestamp = request.header("x-notifier-timestamp")
        signature = request.header("x-notifier-signature")
        if not timestamp or not signature or not signature.startswith("sha256="):
            return "missing or malformed signature headers"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > WINDOW_S:
            return "stale timestamp"
        expected = _hmac(self.secret, timestamp, request.body)
        if not hmac.compare_digest(signature.removeprefix("sha256="), expected):
            return "bad signature"
        return None


def start_app(secret: str = SECRET) -> tuple[LocalHttpServer, AppStandIn]:
    counter = itertools.count(1)
    server = LocalHttpServer()
    app = AppStandIn(server, secret)

    def check(request: RecordedRequest) -> Reply | None:
        problem = app.signature_problem(request)
        return None if problem is None else Reply(401, {"error": problem})

    server.check = check
    server.default = lambda request: Reply(202, {"message_id": f"push-{next(counter)}"})
    return server, app


@pytest.fixture
def app() -> Iterator[AppStandIn]:
    server, stand_in = start_app()
    with server:
        yield stand_in


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more
