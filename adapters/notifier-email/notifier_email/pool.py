"""A small asyncio pool of connected, authenticated SMTP sessions.

Opening a session costs a TCP connect, the greeting, EHLO, maybe STARTTLS and a
second EHLO, and AUTH: several round trips before the first MAIL FROM. Reusing
sessions makes a message cost only MAIL, RCPT and DATA (about 4x fewer round trips).

The pool belongs to one event loop (the one it was created on) and is not
thread-safe; ``send`` calls on that loop may run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiosmtplib import SMTP, SMTPResponseException, SMTPServerDisconnected

from notifier.logging import get_logger

from .settings import EmailSettings

T = TypeVar("T")

log = get_logger(__name__)

# 421: "service not available, closing channel". Relays say it to a session that sat
# idle too long or sent its quota of messages; on a reused session it means "stale".
_CLOSING_CHANNEL = 421


def _is_stale(exc: Exception) -> bool:
    if isinstance(exc, SMTPServerDisconnected):
        return True
    return isinstance(exc, SMTPResponseException) and exc.code == _CLOSING_CHANNEL


class SmtpPool:
    """Up to ``settings.pool_size`` sessions; each is used by one operation at a time."""

    def __init__(self, settings: EmailSettings) -> None:
        self.loop = asyncio.get_running_loop()
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.pool_size)
        # LIFO: the most recently used session is the least likely to have timed out,
        # and the rest age out on the server instead of being kept warm for nothing.
        self._idle: list[SMTP] = []
        self._closed = False
        self.opened = 0  # sessions opened over the pool's life (health detail)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def _new_client(self) -> SMTP:
        s = self._settings
        return SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            local_hostname=s.local_hostname,
            timeout=s.timeout_s,
            use_tls=s.security == "tls",
            # False, not None: None would mean "upgrade if the server offers it".
            start_tls=s.security == "starttls",
            validate_certs=s.validate_certs,
        )

    async def _open(self) -> SMTP:
        client = self._new_client()
        await client.connect()  # closes itself if any step (TLS, AUTH) fails
        self.opened += 1
        log.debug("smtp session opened", host=self._settings.host, port=self._settings.port)
        return client

    def _take_idle(self) -> SMTP | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()  # the server hung up while it was idle
        return None

    def _give_back(self, client: SMTP) -> None:
        if self._closed or not client.is_connected:
            client.close()
        else:
            self._idle.append(client)

    async def run(self, operation: Callable[[SMTP], Awaitable[T]]) -> T:
        """Run ``operation`` on a pooled session.

        A session that raised is closed, never returned: its state is unknown. If a
        *reused* session turns out stale, the operation is retried once on a new one;
        this is safe because a stale session fails at MAIL FROM, before any data.
        """
        async with self._slots:
            client = self._take_idle()
            reused = client is not None
            if client is None:
                client = await self._open()
            try:
                result = await operation(client)
            except (SMTPServerDisconnected, SMTPResponseException) as exc:
                client.close()
                if not (reused and _is_stale(exc)):
                    raise
                log.info("pooled smtp session was stale; reconnecting")
                client = await self._open()
                try:
                    result = await operation(client)
                except BaseException:
                    client.close()
                    raise
            except BaseException:  # includes cancellation by the worker's send timeout
                client.close()
                raise
            self._give_back(client)
            return result

    async def close(self) -> None:
        """QUIT every idle session; sessions in use are closed when given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in idle))

    async def _quit(self, client: SMTP) -> None:
        try:
            await client.quit(timeout=min(self._settings.timeout_s, 5.0))
        except Exception as exc:  # the session is being dropped anyway
            log.debug("smtp quit failed", error=type(exc).__name__)
        finally:
            client.close()

    def abandon(self) -> None:
        """Drop the sessions without awaiting (their event loop is gone or elsewhere)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            transport = client.transport
            try:
                client.close()
            except RuntimeError:
                # The loop is closed: at least tell the server we are gone.
                if transport is not None:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
