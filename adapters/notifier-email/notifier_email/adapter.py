"""The email channel adapter: hands rendered messages to an SMTP relay.

Registered as ``email`` in the ``notifier.adapters`` entry-point group. Sessions to
the relay are pooled (see :mod:`notifier_email.pool`); SMTP replies are mapped onto
the core's retry model: 4xx is temporary, 5xx permanent, and 5xx replies about our
own credentials or sender also alert the operator.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPTimeoutError,
)

from notifier.adapter import (
    Adapter,
    AdapterContext,
    DeliveryFailure,
    Health,
    OutboundMessage,
    PermanentFailure,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
    handing_over,
)
from notifier.logging import get_logger
from notifier.masking import scrub

from .message import build_message, envelope_recipient, message_id
from .pool import SmtpPool
from .settings import EmailSettings

__all__ = ["EmailAdapter", "classify_smtp_error"]

log = get_logger(__name__)

# 530 authentication required, 534 mechanism too weak, 535 bad credentials,
# 538 encryption required for the mechanism: all our configuration, not the citizen's.
_AUTH_CODES = frozenset({530, 534, 535, 538})
# 552 at MAIL FROM is "message too big" (SIZE): about this message, not our sender.
_MESSAGE_SIZE = 552


def _server_text(message: str) -> str:
    # Relays like to echo the address back ("<x@y>: user unknown"): mask it, keep it short.
    return scrub(" ".join(message.split()))[:200]


def _from_reply(code: int, message: str, what: str, *, ours: bool) -> DeliveryFailure:
    reason = f"{what}: {_server_text(message)}".rstrip(": ")
    if 400 <= code < 500:
        return TemporaryFailure(reason, code=str(code))
    if 500 <= code < 600:
        return PermanentFailure(reason, code=str(code), operator_alert=ours or code in _AUTH_CODES)
    # Not a reply SMTP allows here (2xx/3xx where an error was expected): try again later.
    return TemporaryFailure(reason, code=str(code))


def classify_smtp_error(exc: BaseException) -> DeliveryFailure:
    """Map an aiosmtplib/network exception to the core's failure types.

    Reasons never contain the recipient address: server text is scrubbed, and the
    exception's own ``str`` (which may include the address) is not used.
    """
    if isinstance(exc, DeliveryFailure):
        return exc
    if isinstance(exc, SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        if first is None:
            return TemporaryFailure("SMTP server refused the recipient")
        return _from_reply(first.code, first.message, "recipient refused", ours=False)
    if isinstance(exc, SMTPRecipientRefused):
        return _from_reply(exc.code, exc.message, "recipient refused", ours=False)
    if isinstance(exc, SMTPAuthenticationError):
        return _from_reply(exc.code, exc.message, "SMTP authentication failed", ours=True)
    if isinstance(exc, SMTPConnectResponseError | SMTPHeloError):
        return _from_reply(exc.code, exc.message, "SMTP server refused the session", ours=True)
    if isinstance(exc, SMTPSenderRefused):
        ours = exc.code != _MESSAGE_SIZE
        return _from_reply(exc.code, exc.message, "sender refused", ours=ours)
    if isinstance(exc, SMTPResponseException):  # SMTPDataError and other replies
        return _from_reply(exc.code, exc.message, "message refused", ours=False)
    if isinstance(exc, SMTPTimeoutError | asyncio.TimeoutError):
        return TemporaryFailure("timed out talking to the SMTP server")
    if isinstance(exc, ConnectionError):  # SMTPServerDisconnected, SMTPConnectError, resets
        return TemporaryFailure(f"SMTP server unreachable: {_server_text(str(exc))}")
    if isinstance(exc, SMTPNotSupported | SMTPException):
        # STARTTLS or AUTH asked for but not offered, and similar: our configuration.
        return PermanentFailure(
            f"SMTP configuration problem: {_server_text(str(exc))}", operator_alert=True
        )
    if isinstance(exc, OSError):  # TLS errors, DNS failures, unreachable networks
        return TemporaryFailure(f"SMTP connection error: {type(exc).__name__}")
    return TemporaryFailure(f"unexpected email error: {type(exc).__name__}")


class _AnswerToDataLost(Exception):
    """The message was sent, but the relay's answer to it never arrived."""


class EmailAdapter(Adapter[EmailSettings]):
    """Sends a subject + text + html email through one SMTP relay, over pooled sessions."""

    name: ClassVar[str] = "email"
    channel: ClassVar[str] = "email"
    description: ClassVar[str] = (
        "Email through an SMTP relay (STARTTLS or implicit TLS, optional AUTH), "
        "with pooled sessions"
    )
    settings_model = EmailSettings
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.EMAIL
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (
        TemplatePart("subject", max_length=200),
        TemplatePart("text"),
        TemplatePart("html", html=True),
    )
    # send() says when DATA starts: a send cut before it (waiting for a session, or for
    # a busy event loop) sent nothing, and is retried rather than held for an admin.
    reports_handover: ClassVar[bool] = True

    def __init__(self, settings: EmailSettings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        # Created on first use: asyncio objects belong to the loop that runs ``send``,
        # and the adapter is constructed before (and outside) that loop.
        self._pool: SmtpPool | None = None

    @property
    def max_in_flight(self) -> int:
        return self.settings.pool_size

    def _get_pool(self) -> SmtpPool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is not None and pool.loop is not loop:
            pool.abandon()  # used from a new loop (tests, a restarted runtime)
            pool = None
        if pool is None or pool.closed:
            pool = self._pool = SmtpPool(self.settings)
        return pool

    @property
    def answer_timeout_s(self) -> float:
        return self.settings.data_timeout_s

    async def send(self, message: OutboundMessage) -> SendResult:
        recipient = envelope_recipient(message.recipient)
        msgid = message_id(message.delivery_id, self.settings.from_address)
        data = build_message(self.settings, message, recipient, msgid)
        sender = self.settings.from_address

        async def transaction(client: SMTP) -> str:
            # MAIL, RCPT and DATA one by one rather than sendmail(), to know when the
            # message went out: a refusal up to DATA's answer means nothing was taken,
            # while a lost answer to DATA means the relay may hold the message.
            await client.mail(sender)
            await client.rcpt(recipient)
            handing_over()  # from here a cut send may have left (see below)
            try:
                response = await client.data(data, timeout=self.settings.data_timeout_s)
            except SMTPResponseException:
                raise  # the relay answered: it refused the message
            except (TimeoutError, OSError, SMTPException) as exc:
                raise _AnswerToDataLost(type(exc).__name__) from exc
            return response.message

        try:
            reply = await self._get_pool().run(transaction)
        except _AnswerToDataLost as exc:
            # Not a stale session (the pool does not retry this): repeating it now could
            # deliver twice, so the sender applies the email provider's uncertain policy.
            raise TemporaryFailure(
                f"no answer from the SMTP server after the message was sent ({exc})",
                code="smtp-no-answer-to-data",
                maybe_sent=True,
            ) from None
        except Exception as exc:
            failure = classify_smtp_error(exc)
            # Chain only exceptions whose text cannot hold the address (network errors);
            # aiosmtplib's reply exceptions carry the recipient in their args.
            cause = exc if isinstance(exc, OSError | asyncio.TimeoutError) else None
            raise failure from cause
        return SendResult(provider_message_id=msgid, details={"smtp_reply": _server_text(reply)})

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if pool.loop is asyncio.get_running_loop():
            await pool.close()
        else:  # its sessions cannot be awaited from this loop
            pool.abandon()

    async def health(self) -> Health:
        """NOOP on a pooled session: proves the relay answers and accepts our login."""

        async def noop(client: SMTP) -> None:
            await client.noop()

        where = f"{self.settings.host}:{self.settings.port}"
        try:
            await self._get_pool().run(noop)
        except Exception as exc:
            return Health(ok=False, detail=f"{where}: {classify_smtp_error(exc)}")
        return Health(ok=True, detail=where)
