"""Proposed core changes, applied as patches inside the benchmark's worker processes only.

    ./dev bench --experiment no-pre-ping --experiment claim-returning ...

They measure a change before it is made in notifier; they are not notifier's code.
``run.py`` puts ``benchmarks/experiment_site`` on the workers' PYTHONPATH, whose
``sitecustomize`` calls :func:`apply` with NOTIFIER_BENCH_EXPERIMENTS (comma-separated)
before Dramatiq forks its worker processes. Each patch keeps the patched function's
contract (the same outcomes and rows); see docs/performance.md for the proposals.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import charset as email_charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from typing import Any
from uuid import UUID

ENV = "NOTIFIER_BENCH_EXPERIMENTS"


def no_pre_ping() -> None:
    """Database: no ``SELECT 1`` before every checkout (pool_pre_ping=False); a dead
    connection is replaced after its first error instead (pool_recycle bounds age)."""
    import sqlalchemy as sa

    from notifier.store import database

    original = database.Database.__init__

    def init(self: Any, url: str, *, echo: bool = False) -> None:
        original(self, url, echo=echo)
        if not self.is_sqlite:
            self.engine.dispose()
            self.engine = sa.create_engine(
                url, echo=echo, pool_size=10, max_overflow=20, pool_recycle=300
            )

    database.Database.__init__ = init  # type: ignore[method-assign]


def claim_returning() -> None:
    """DeliveryStore.claim: one ``UPDATE … RETURNING`` (the common case) instead of an
    UPDATE then a SELECT of the whole row; the SELECT only when nothing was claimed."""
    import sqlalchemy as sa

    from notifier import deliveries as module
    from notifier.deliveries import (
        _CLAIMABLE,
        ClaimedDelivery,
        ClaimOutcome,
        DeliveryStatus,
    )
    from notifier.store.schema import deliveries, utcnow

    d = deliveries.c
    statement = (
        sa.update(deliveries)
        .where(
            d.delivery_id == sa.bindparam("id"),
            sa.or_(
                d.status.in_([s.value for s in _CLAIMABLE]),
                sa.and_(
                    d.status == DeliveryStatus.SENDING.value,
                    d.lease_until < sa.bindparam("now"),
                ),
            ),
        )
        .values(
            status=DeliveryStatus.SENDING.value,
            attempts=d.attempts + 1,
            lease_until=sa.bindparam("lease_until"),
            updated_at=sa.bindparam("now"),
        )
        .returning(
            d.delivery_id, d.event_id, d.channel, d.recipient, d.language, d.content,
            d.dossier_code, d.agency_code, d.event_status, d.attempts, d.created_at,
        )
    )
    why = sa.select(d.status).where(d.delivery_id == sa.bindparam("id"))

    def claim(
        self: Any, delivery_id: UUID, lease: timedelta
    ) -> tuple[ClaimOutcome, ClaimedDelivery | None]:
        now = utcnow()
        with self.database.begin() as connection:
            row = connection.execute(
                statement, {"id": delivery_id, "now": now, "lease_until": now + lease}
            ).first()
            if row is None:
                status = connection.execute(why, {"id": delivery_id}).scalar()
        if row is None:
            if status is None:
                return ClaimOutcome.MISSING, None
            if DeliveryStatus(status).final:
                return ClaimOutcome.FINISHED, None
            return ClaimOutcome.BUSY, None
        m = row._mapping
        return ClaimOutcome.CLAIMED, ClaimedDelivery(
            delivery_id=m["delivery_id"], event_id=m["event_id"], channel=m["channel"],
            recipient=m["recipient"], language=m["language"], content=m["content"],
            dossier_code=m["dossier_code"], agency_code=m["agency_code"],
            event_status=m["event_status"], attempt=m["attempts"], created_at=m["created_at"],
        )

    module.DeliveryStore.claim = claim  # type: ignore[method-assign]


def finish_one_statement() -> None:
    """DeliveryStore.finish_attempt: the status update and the attempt row in one
    statement (a data-modifying CTE), one round trip instead of two, on PostgreSQL."""
    import sqlalchemy as sa

    from notifier import deliveries as module
    from notifier.deliveries import DeliveryStatus
    from notifier.store.schema import utcnow

    original = module.DeliveryStore.finish_attempt
    statement = sa.text(
        """
        WITH updated AS (
            UPDATE deliveries
               SET status = :status, lease_until = NULL, updated_at = :now,
                   last_error = :error, provider = COALESCE(:provider, provider),
                   provider_message_id = COALESCE(:provider_message_id, provider_message_id),
                   details = COALESCE(CAST(:details AS json), details),
                   sent_at = CASE WHEN :sent THEN :now ELSE sent_at END,
                   delivered_at = CASE WHEN :delivered THEN :now ELSE delivered_at END
             WHERE delivery_id = :delivery_id
            RETURNING delivery_id
        )
        INSERT INTO delivery_attempts (delivery_id, number, provider, started_at,
                                       finished_at, outcome, error, error_code,
                                       provider_message_id)
        SELECT delivery_id, :number, :provider, :started_at, :now, :status, :error,
               :error_code, :provider_message_id
          FROM updated
        """
    )

    def finish_attempt(self: Any, claimed: Any, **outcome: Any) -> None:
        if self.database.is_sqlite or not outcome.get("counted", True):
            original(self, claimed, **outcome)
            return
        import json

        status: DeliveryStatus = outcome["status"]
        details = outcome.get("details")
        with self.database.begin() as connection:
            connection.execute(
                statement,
                {
                    "delivery_id": claimed.delivery_id,
                    "status": status.value,
                    "now": utcnow(),
                    "error": outcome.get("error"),
                    "error_code": outcome.get("error_code"),
                    "provider": outcome.get("provider"),
                    "provider_message_id": outcome.get("provider_message_id"),
                    "details": json.dumps(details) if details else None,
                    "sent": status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED),
                    "delivered": status is DeliveryStatus.DELIVERED,
                    "number": claimed.attempt,
                    "started_at": outcome["started_at"],
                },
            )

    module.DeliveryStore.finish_attempt = finish_attempt  # type: ignore[method-assign]


_UTF8 = email_charset.Charset("utf-8")
_UTF8.header_encoding = email_charset.QP
_UTF8.body_encoding = email_charset.BASE64


def compat32_mime() -> None:
    """Email: build the same multipart/alternative message with the email package's
    compat32 classes (MIMEText, Header) instead of EmailMessage + the SMTP policy,
    which parses and refolds every header (about 2 ms of CPU a message)."""
    from notifier_email import adapter, message

    from notifier.adapter import PermanentFailure

    def build_message(settings: Any, msg: Any, recipient: str, msgid: str) -> Any:
        text = msg.parts.get("text") or ""
        html = msg.parts.get("html") or ""
        if not text.strip() and not html.strip():
            raise PermanentFailure("email has neither a text nor an html body")
        if text.strip() and html.strip():
            mime: Any = MIMEMultipart("alternative")
            mime.attach(MIMEText(text, "plain", _UTF8))
            mime.attach(MIMEText(html, "html", _UTF8))
        elif text.strip():
            mime = MIMEText(text, "plain", _UTF8)
        else:
            mime = MIMEText(html, "html", _UTF8)
        mime["From"] = formataddr(
            (str(Header(settings.from_name, "utf-8")), settings.from_address)
        )
        mime["To"] = recipient
        if settings.reply_to:
            mime["Reply-To"] = settings.reply_to
        mime["Subject"] = Header(message.clean_subject(msg.parts.get("subject", "")), "utf-8")
        mime["Date"] = format_datetime(datetime.now(UTC))
        mime["Message-ID"] = msgid
        mime[message.DELIVERY_ID_HEADER] = str(msg.delivery_id)
        if message._LANGUAGE_TAG.fullmatch(msg.language):
            mime["Content-Language"] = msg.language
        return mime

    adapter.build_message = build_message  # type: ignore[assignment]


def no_dramatiq_prometheus() -> None:
    """Workers without Dramatiq's Prometheus middleware (its per-message histograms and
    counters in multiprocess mmap files); notifier's own send metrics stay."""
    from notifier import metrics

    original = metrics.instrument_worker

    def instrument_worker(app: Any, *, dramatiq_middleware: bool = True) -> Any:
        return original(app, dramatiq_middleware=False)

    metrics.instrument_worker = instrument_worker


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "no-pre-ping": no_pre_ping,
    "claim-returning": claim_returning,
    "finish-one-statement": finish_one_statement,
    "compat32-mime": compat32_mime,
    "no-dramatiq-prometheus": no_dramatiq_prometheus,
}


def apply(names: str | None = None) -> list[str]:
    chosen = [n for n in (names if names is not None else os.environ.get(ENV, "")).split(",") if n]
    for name in chosen:
        EXPERIMENTS[name]()
    return chosen
