"""A publisher's callback receiver for the tests: a small ASGI app served by a real uvicorn on
loopback, verifying every callback's signature with the ``standardwebhooks`` reference
verifier (not with notifier's code), and deduplicating by ``webhook-id`` as a receiver
should. It can be told to answer 429/503 with a Retry-After, or be stopped (down) and
started again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

from tests.support import wait_until


@dataclass
class Received:
    """What the receiver saw: every verified callback, by id, and every try."""

    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    tries: Counter[str] = field(default_factory=Counter)  # verified tries per webhook-id
    refused: int = 0  # answered 429/503 (or another failure) on purpose
    bad_signatures: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)


class CallbackReceiver:
    """``with CallbackReceiver(secrets) as r:`` serves on ``r.url``; ``r.answer`` is
    what it answers (200, or e.g. (429, "2")); ``r.down()`` / ``r.up()`` stop and start it
    on the same port."""

    def __init__(self, secrets: list[str], path: str = "/hooks/notifier") -> None:
        self.verifiers = [Webhook(s) for s in secrets]
        self.path = path
        self.received = Received()
        self.lock = threading.Lock()
        self.status = 200
        self.retry_after: str | None = None
        self.redirect_to: str | None = None
        self.delay_s = 0.0  # a slow receiver: each answer waits this long
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def trust(self, secret: str) -> None:
        """Verify with this secret too (e.g. one the CLI made and printed)."""
        self.verifiers.append(Webhook(secret))

    def answer(self, status: int, retry_after: str | None = None) -> None:
        self.status, self.retry_after = status, retry_after

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"] != self.path:
            with self.lock:
                self.received.headers.append({"path": scope["path"], **headers})
            await _answer(send, 404)
            return
        verified = self._verify(body, headers)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self.lock:
            self.received.headers.append(headers)
            if verified is None:
                self.received.bad_signatures += 1
                status, retry_after = 401, None
            elif self.redirect_to is not None:
                status, retry_after = 302, None
            else:
                status, retry_after = self.status, self.retry_after
                if 200 <= status < 300:
                    webhook_id = headers["webhook-id"]
                    self.received.tries[webhook_id] += 1
                    # A receiver keeps the first and drops repeats of the same id.
                    self.received.bodies.setdefault(webhook_id, verified)
                else:
                    self.received.refused += 1
        extra = [(b"retry-after", retry_after.encode())] if retry_after else []
        if status == 302 and self.redirect_to is not None:
            extra.append((b"location", self.redirect_to.encode()))
        await _answer(send, status, extra)

    def _verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for verifier in self.verifiers:
            try:
                found: dict[str, Any] = verifier.verify(body, headers)
                return found
            except WebhookVerificationError:
                continue
        return None

    def up(self) -> CallbackReceiver:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_config=None, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        server = self._server
        wait_until(lambda: server.started, timeout=10)
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> CallbackReceiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
