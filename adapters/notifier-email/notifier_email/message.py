"""Turns a rendered :class:`~notifier.adapter.OutboundMessage` into MIME bytes for SMTP."""

from __future__ import annotations

import email.charset
import email.policy
import re
from datetime import UTC, datetime
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from uuid import UUID

from notifier.adapter import OutboundMessage, PermanentFailure

from .settings import EmailSettings, check_addr_spec

DELIVERY_ID_HEADER = "X-Notifier-Delivery-Id"

# 7bit transfer: non-ASCII bodies go out base64 and headers as RFC 2047 encoded words,
# so any relay takes them, with or without 8BITMIME; CRLF line ends, as SMTP wants.
POLICY = email.policy.compat32.clone(linesep="\r\n")
_UTF8 = email.charset.Charset("utf-8")  # headers: the shortest RFC 2047 encoding

# Runs of whitespace and control characters, CR/LF included, become one space, so a
# subject can never end its header line and start another (header injection).
_SUBJECT_BREAKS = re.compile(r"[\s\x00-\x1f\x7f]+")


_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")


def clean_subject(subject: str) -> str:
    return _SUBJECT_BREAKS.sub(" ", subject).strip()


def envelope_recipient(recipient: str) -> str:
    """The recipient as sent in RCPT TO, or PermanentFailure (the address is not repeated).

    An internationalised domain is converted to its ASCII (IDNA) form; a non-ASCII
    local part would need SMTPUTF8, which government relays rarely offer.
    """
    value = recipient.strip()
    local, at, domain = value.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise PermanentFailure("recipient address has an invalid domain") from None
        value = f"{local}@{domain}"
    try:
        return check_addr_spec(value)
    except ValueError as exc:
        raise PermanentFailure(f"recipient address {exc}") from None


def message_id(delivery_id: UUID, from_address: str) -> str:
    """A Message-ID fixed by the delivery id: a retry of the same delivery carries the
    same id, so a mailbox that got the first attempt after all can drop the duplicate."""
    domain = from_address.rpartition("@")[2]
    return f"<{delivery_id}@{domain}>"


def build_message(
    settings: EmailSettings, message: OutboundMessage, recipient: str, msgid: str
) -> Message:
    """multipart/alternative (text, then html, so clients prefer the last: html).

    Built with the email package's compat32 classes: the same headers and parts as
    EmailMessage with the SMTP policy, at a quarter of the CPU (that policy parses and
    refolds every header it sets; measured 2.2 ms against 0.6 ms a message)."""
    text = message.parts.get("text") or ""
    html = message.parts.get("html") or ""
    if not text.strip() and not html.strip():
        raise PermanentFailure("email has neither a text nor an html body")

    msg: Message
    if text.strip() and html.strip():
        msg = MIMEMultipart("alternative", policy=POLICY)
        msg.attach(MIMEText(text, "plain", "utf-8", policy=POLICY))
        msg.attach(MIMEText(html, "html", "utf-8", policy=POLICY))
    elif text.strip():
        msg = MIMEText(text, "plain", "utf-8", policy=POLICY)
    else:
        msg = MIMEText(html, "html", "utf-8", policy=POLICY)
    msg["From"] = formataddr((str(Header(settings.from_name, _UTF8)), settings.from_address))
    msg["To"] = recipient
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    # compat32 takes Header objects as values (RFC 2047, folded); typeshed says str.
    msg["Subject"] = Header(clean_subject(message.parts.get("subject", "")), _UTF8)  # type: ignore[assignment]
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = msgid
    msg[DELIVERY_ID_HEADER] = str(message.delivery_id)
    if _LANGUAGE_TAG.fullmatch(message.language):
        msg["Content-Language"] = message.language
    return msg
