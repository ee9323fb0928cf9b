"""A local SMTP catcher for the demo, the tests and the benchmarks, built on aiosmtpd.

It runs its own event loop in a daemon thread, so plain synchronous code can use it,
and so can async code running on a different loop::

    with SmtpCatcher() as smtp:               # binds 127.0.0.1 on a free port
        ...send to 127.0.0.1:smtp.port...
        [msg] = smtp.wait_for(1)
        msg["Subject"], msg.envelope_to        # decoded str, ('citizen@example.vn',)

Tests can make it misbehave on purpose: :meth:`SmtpCatcher.fail_next` answers the
next MAIL/RCPT/DATA commands with an error reply, ``auth=("user", "pass")`` requires
AUTH, ``latency_s`` slows every reply down like a remote relay, and
:meth:`SmtpCatcher.drop_connections` hangs up on every client,
:meth:`SmtpCatcher.hang_up_after_data` keeps the next messages but hangs up before
answering their DATA (the relay has them; the client never hears so). ``connections``
counts accepted TCP connections, so a test can prove that a client reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from notifier.masking import mask_recipient

__all__ = ["CaughtMessage", "SmtpCatcher", "Stage"]

Stage = Literal["mail", "rcpt", "data"]

_START_TIMEOUT_S = 5.0


class CaughtMessage(EmailMessage):
    """A received message, parsed with the default policy, plus its SMTP envelope.

    ``msg["Subject"]`` is the decoded subject; ``msg.raw`` the bytes as received.
    """

    envelope_from: str = ""
    envelope_to: tuple[str, ...] = ()
    raw: bytes = b""
    authenticated_as: str | None = None  # AUTH user of the session, if it logged in
    connection_id: int = 0  # 1 for the first connection accepted, 2 for the next...
    received_at: float = 0.0  # time.monotonic() when DATA was accepted (for rate checks)


# The default policy (decoded headers, get_content()), building CaughtMessage objects.
_PARSE_POLICY = EmailPolicy(message_factory=CaughtMessage)


@dataclass
class _Failure:
    remaining: int
    reply: str


class _Session(SMTP):
    """aiosmtpd's protocol, plus bookkeeping of the connections it serves."""

    def __init__(self, catcher: SmtpCatcher, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.catcher = catcher
        self.connection_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # a STARTTLS upgrade calls this again
        super().connection_made(transport)
        if first:
            self.connection_id = self.catcher._connected(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.catcher._disconnected(self)
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks. Each returns the reply line, so it also does aiosmtpd's default
    bookkeeping (the envelope is only filled in when a hook returns nothing)."""

    def __init__(self, catcher: SmtpCatcher) -> None:
        self.catcher = catcher

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self.catcher._delay()
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to us
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self.catcher._delay()
        refusal = self.catcher._refusal(session, "mail")
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self.catcher._delay()
        refusal = self.catcher._refusal(session, "rcpt")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.catcher._delay()
        refusal = self.catcher._refusal(session, "data")
        if refusal:
            return refusal
        connection_id = server.connection_id if isinstance(server, _Session) else 0
        number = self.catcher._record(session, envelope, connection_id)
        if self.catcher._take_hang_up() and server.transport is not None:
            server.transport.close()  # kept, but the 250 never reaches the client
        return f"250 2.0.0 OK: queued as CATCHER{number:06d}"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.catcher._quit()
        return "221 Bye"


class SmtpCatcher:
    """An SMTP server on 127.0.0.1 that keeps what it receives in memory.

    ``port=0`` (the default) picks a free port; read it from :attr:`port` after
    :meth:`start`. With ``auth=(username, password)`` the server offers AUTH
    PLAIN/LOGIN without TLS and refuses MAIL/RCPT from sessions that did not log in
    (530). ``latency_s`` is waited before every EHLO/MAIL/RCPT/DATA reply. With
    ``parse_messages=False`` (benchmarks: parsing costs about 1 ms of CPU a message)
    messages keep only their envelope and ``raw`` bytes, and have no headers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auth: tuple[str, str] | None = None,
        latency_s: float = 0.0,
        parse_messages: bool = True,
        server_hostname: str = "smtp-catcher.test",
    ) -> None:
        self.host = host
        self._requested_port = port
        self._auth = auth
        self.latency_s = latency_s
        self.parse_messages = parse_messages
        # Given explicitly: aiosmtpd would otherwise call getfqdn() per connection.
        self._server_hostname = server_hostname
        self._handler = _Handler(self)
        self._cond = threading.Condition()
        self._messages: list[CaughtMessage] = []
        self._failures: dict[Stage, _Failure] = {}
        self._hang_ups_after_data = 0
        self._sessions: set[_Session] = set()
        self._connections = 0
        self._quits = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        if self._loop is not None:
            raise RuntimeError("SmtpCatcher is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="smtp-catcher", daemon=True)
        thread.start()
        try:
            server = asyncio.run_coroutine_threadsafe(self._listen(loop), loop).result(
                _START_TIMEOUT_S
            )
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT_S)
            raise
        self._loop, self._thread, self._server = loop, thread, server
        self._port = int(server.sockets[0].getsockname()[1])
        return self

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> asyncio.Server:
        def session() -> _Session:
            kwargs: dict[str, Any] = {
                "hostname": self._server_hostname,
                "ident": "notifier SMTP catcher",
                "enable_SMTPUTF8": True,
                "loop": loop,
            }
            if self._auth is not None:
                # AUTH without TLS: local testing only. MAIL/RCPT enforce it (530),
                # which avoids aiosmtpd's auth_required-without-TLS warning.
                kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
            return _Session(self, self._handler, **kwargs)

        return await loop.create_server(session, host=self.host, port=self._requested_port)

    def stop(self) -> None:
        """Close the listener and every open connection, and end the thread."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            self._close_sessions()
            await asyncio.sleep(0)  # let connection_lost callbacks run
            await server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(_START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT_S)
            self._loop = self._thread = self._server = None

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
        if self._loop is None:
            raise RuntimeError("SmtpCatcher is not running; call start() first")
        return self._port

    # -- what was received -----------------------------------------------------------

    @property
    def messages(self) -> list[CaughtMessage]:
        """A snapshot of the messages received so far, oldest first."""
        with self._cond:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """TCP connections accepted since start (or :meth:`reset`)."""
        with self._cond:
            return self._connections

    @property
    def active_connections(self) -> int:
        with self._cond:
            return len(self._sessions)

    @property
    def quits(self) -> int:
        """QUIT commands received: connections the client closed politely."""
        with self._cond:
            return self._quits

    def wait_for(self, count: int, timeout: float = 5.0) -> list[CaughtMessage]:
        """Block until at least ``count`` messages arrived; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"got {len(self._messages)} of {count} messages within {timeout:g}s"
                )
            return list(self._messages)

    def wait_for_idle(self, timeout: float = 5.0) -> None:
        """Block until no client connection is open; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._sessions, timeout):
                raise TimeoutError(f"{len(self._sessions)} connections still open")

    def reset(self) -> None:
        """Forget messages, pending failures and counters (open connections stay)."""
        with self._cond:
            self._messages.clear()
            self._failures.clear()
            self._hang_ups_after_data = 0
            self._connections = 0
            self._quits = 0

    # -- misbehaving on purpose -------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        code: int = 451,
        message: str = "4.3.0 Temporary failure, try again later",
        *,
        stage: Stage = "rcpt",
    ) -> None:
        """Answer the next ``n`` commands of ``stage`` (MAIL, RCPT or DATA) with
        ``code message`` instead of accepting them."""
        if not 400 <= code <= 599:
            raise ValueError("code must be an SMTP error reply code (4xx or 5xx)")
        with self._cond:
            if n > 0:
                self._failures[stage] = _Failure(n, f"{code} {message}")
            else:
                self._failures.pop(stage, None)

    def hang_up_after_data(self, n: int = 1) -> None:
        """Keep the next ``n`` messages, then hang up instead of answering their DATA:
        the client cannot tell whether the relay took them."""
        with self._cond:
            self._hang_ups_after_data = n

    def _take_hang_up(self) -> bool:
        with self._cond:
            if self._hang_ups_after_data <= 0:
                return False
            self._hang_ups_after_data -= 1
            return True

    def drop_connections(self) -> int:
        """Hang up on every connected client (as a relay's idle timeout would)."""
        loop = self._loop
        if loop is None:
            return 0

        async def drop() -> int:
            count = self._close_sessions()
            await asyncio.sleep(0)
            return count

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(_START_TIMEOUT_S)

    # -- called on the server thread ---------------------------------------------------

    def _close_sessions(self) -> int:
        with self._cond:
            sessions = list(self._sessions)
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        return len(sessions)

    def _connected(self, session: _Session) -> int:
        with self._cond:
            self._connections += 1
            self._sessions.add(session)
            self._cond.notify_all()
            return self._connections

    def _disconnected(self, session: _Session) -> None:
        with self._cond:
            self._sessions.discard(session)
            self._cond.notify_all()

    def _quit(self) -> None:
        with self._cond:
            self._quits += 1

    async def _delay(self) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

    def _refusal(self, session: Session, stage: Stage) -> str | None:
        if self._auth is not None and not session.authenticated and stage != "data":
            return "530 5.7.0 Authentication required"
        with self._cond:
            failure = self._failures.get(stage)
            if failure is None:
                return None
            failure.remaining -= 1
            if failure.remaining <= 0:
                del self._failures[stage]
            return failure.reply

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self._auth is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login.decode(errors="replace"),
                auth_data.password.decode(errors="replace"),
            )
            == self._auth
        )
        # auth_data is what session.auth_data becomes: keep only the user name.
        return AuthResult(success=ok, handled=False, auth_data=self._auth[0] if ok else None)

    def _record(self, session: Session, envelope: Envelope, connection_id: int) -> int:
        raw = envelope.original_content or b""
        if self.parse_messages:
            message = BytesParser(policy=_PARSE_POLICY).parsebytes(raw)
        else:
            message = CaughtMessage(policy=_PARSE_POLICY)
        message.envelope_from = envelope.mail_from or ""
        message.envelope_to = tuple(envelope.rcpt_tos)
        message.raw = raw
        user = session.auth_data if session.authenticated else None
        message.authenticated_as = user if isinstance(user, str) else None
        message.connection_id = connection_id
        message.received_at = time.monotonic()
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()
            return len(self._messages)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()


def serve_forever(port: int = 2525, host: str = "127.0.0.1") -> None:  # pragma: no cover
    """Run a catcher in the foreground, printing a line per message (for the demo)."""
    with SmtpCatcher(host, port) as catcher:
        print(f"SMTP catcher listening on {host}:{catcher.port}; Ctrl+C to stop", flush=True)
        seen = 0
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                messages = catcher.messages
                for message in messages[seen:]:
                    _print_message(message)
                seen = len(messages)
                time.sleep(0.2)


def _print_message(message: CaughtMessage) -> None:  # pragma: no cover
    to = ", ".join(mask_recipient(address) for address in message.envelope_to)
    delivery = message.get("X-Notifier-Delivery-Id", "-")
    print(f"-> {to} | {message['Subject']} | {delivery}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 2525)
