"""CPU and wall time of each step of notifier's path, one at a time, in one thread.

    .venv/bin/python benchmarks/components.py [--events 300]

Against the same real services as the benchmark (a fresh PostgreSQL database and
RabbitMQ vhost, the simulators in their own process), each step runs ``--events``
times in a row and is timed with ``time.process_time()`` (this process's CPU, the
adapters' event loop thread included) and the wall clock. No concurrency: this is
what each step costs, not how steps overlap. Next to notifier's own steps it times
other forms written here, not in notifier: the forms the core had before ac09276 and
c645957 (a claim as UPDATE then SELECT with a pool pre-ping; an EmailMessage MIME
build). The group steps (``handle_batch``, ``sender.send``) take all their items in one
call and report per item.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from benchmarks.infra import (
    ProvidersProcess,
    bench_settings,
    fresh_database,
    fresh_vhost,
)
from benchmarks.run import fan_out_events
from notifier.adapter import OutboundMessage
from notifier.app import Notifier
from notifier.events import parse_event
from notifier.logging import configure_logging
from notifier.pipeline.bridge import ingest_arguments
from notifier.store.deliveries.lifecycle import AttemptRecord, ClaimedDelivery, DeliveryStatus
from notifier.store.schema import utcnow

ROWS: list[tuple[str, float, float, str]] = []


def timed(
    label: str,
    items: Sequence[Any],
    step: Callable[[Any], Any],
    per: str = "",
    *,
    group: bool = False,
) -> None:
    """Time ``step`` on each item, or once on all of them (``group``); per item."""
    cpu, wall = time.process_time(), time.perf_counter()
    if group:
        step(items)
    else:
        for item in items:
            step(item)
    n = max(len(items), 1)
    ROWS.append(
        (
            label,
            (time.process_time() - cpu) / n * 1000,
            (time.perf_counter() - wall) / n * 1000,
            per,
        )
    )
    print(f"{label:58s} {ROWS[-1][1]:7.3f} ms CPU {ROWS[-1][2]:7.3f} ms wall", flush=True)


# -- the proposed cheaper forms ---------------------------------------------------------

OLD_CLAIM_UPDATE = sa.text(
    """
    UPDATE deliveries SET status = 'sending', attempts = attempts + 1,
           lease_until = :lease_until, updated_at = :now
     WHERE delivery_id = :delivery_id
       AND (status IN ('queued', 'temporary-failure')
            OR (status = 'sending' AND lease_until < :now))
    """
)
OLD_CLAIM_SELECT = sa.text("SELECT * FROM deliveries WHERE delivery_id = :delivery_id")
_OLD_POLICY = email.policy.SMTP.clone(cte_type="7bit")


def email_message_mime(message: OutboundMessage, sender: str, sender_name: str) -> bytes:
    """The same message built the way the email adapter did before c645957: EmailMessage
    with the SMTP policy, which parses and refolds every header it sets."""
    mime = EmailMessage(policy=_OLD_POLICY)
    mime["From"] = Address(display_name=sender_name, addr_spec=sender)
    mime["To"] = Address(addr_spec=message.recipient)
    mime["Subject"] = message.parts["subject"]
    mime["Date"] = format_datetime(datetime.now(UTC))
    mime["Message-ID"] = f"<{message.delivery_id}@example.com>"
    mime["X-Notifier-Delivery-Id"] = str(message.delivery_id)
    mime.set_content(message.parts["text"])
    mime.add_alternative(message.parts["html"], subtype="html")
    mime["Content-Language"] = message.language
    return mime.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    n = args.events
    with fresh_vhost() as amqp_url, fresh_database() as (database_url, _name):
        providers = ProvidersProcess()
        try:
            settings = bench_settings(amqp_url, database_url, providers.info["overrides"])
            configure_logging("WARNING", "json")
            app = Notifier(settings)
            app.tokens.put("zalo", refresh_token=providers.info["zalo_refresh_token"])
            try:
                measure(app, n, database_url)
            finally:
                app.close()
        finally:
            providers.close()
    print("\n| step | CPU ms | wall ms | per |\n|---|---:|---:|---|")
    for label, cpu, wall, per in ROWS:
        print(f"| {label} | {cpu:.2f} | {wall:.2f} | {per} |")


def measure(app: Notifier, n: int, database_url: str) -> None:
    lease = timedelta(seconds=40)
    bodies = [json.dumps(e, ensure_ascii=False).encode() for e in fan_out_events(3 * n + 20)]
    arguments = [ingest_arguments(b, 65536) for b in bodies]
    # Warm-up: connections, pools, the ZNS token, compiled statements.
    for result in app.ingest.handle_batch(arguments[:20], source="amqp"):
        app.sender.send([delivery_id for delivery_id, _channel in result.to_enqueue])
    batches = [arguments[20 + i * n : 20 + (i + 1) * n] for i in range(3)]

    print(f"{n} of each, one at a time (CPU: this process, all threads)\n")
    timed("parse and validate an event (pydantic)", batches[0],
          lambda a: parse_event(a[0], max_bytes=65536), "event")
    events = [parse_event(a[0], max_bytes=65536) for a in batches[0]]
    for channel in ("email", "sms", "zalo", "portal"):
        timed(f"render {channel} templates", events,
              lambda e, c=channel: app.templates.render(e, c, e.applicant.language), "delivery")
    results: list[Any] = []
    timed("ingest.handle (validate, dedupe, route, render, record)", batches[0],
          lambda a: results.append(app.ingest.handle(a[0], source="amqp", meta=a[1])), "event")
    timed("ingest.handle_batch, the whole group at once", batches[1],
          lambda group: results.extend(app.ingest.handle_batch(group, source="amqp")),
          "event", group=True)
    results.extend(app.ingest.handle_batch(batches[2], source="amqp"))
    first = [d for r in results[:n] for d in r.to_enqueue]
    second = [d for r in results[n : 2 * n] for d in r.to_enqueue]
    third = [d for r in results[2 * n :] for d in r.to_enqueue]

    timed("bridge → ingest actor send (confirmed publish)", batches[0],
          lambda a: app.ingest_actor.send([a], "amqp"), "event")
    timed("enqueue one delivery (Dramatiq send, confirmed)", first[:n],
          lambda d: app.enqueue_deliveries([d]), "delivery")

    def select_one(_item: Any) -> None:
        with app.database.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    timed("SELECT 1 through the engine (no pre-ping since ac09276)", range(n), select_one,
          "query")
    pinged = sa.create_engine(database_url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    def select_one_pinged(_item: Any) -> None:
        with pinged.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    timed("SELECT 1 through an engine with pool_pre_ping (before ac09276)", range(n),
          select_one_pinged, "query")

    claimed: dict[str, list[ClaimedDelivery]] = {c: [] for c in ("email", "sms", "zalo", "portal")}

    def claim(item: tuple[uuid.UUID, str]) -> None:
        [got] = app.deliveries.claim([item[0]], lease).claimed
        claimed[item[1]].append(got)

    timed("claim (DeliveryStore.claim: one UPDATE … RETURNING)", first, claim, "delivery")

    def old_claim(item: tuple[uuid.UUID, str]) -> None:
        now = utcnow()
        with pinged.begin() as connection:
            connection.execute(
                OLD_CLAIM_UPDATE, {"delivery_id": item[0], "now": now, "lease_until": now + lease}
            )
            row = connection.execute(OLD_CLAIM_SELECT, {"delivery_id": item[0]}).first()
        assert row is not None

    timed("claim as before ac09276 (pre-ping, UPDATE, SELECT *)", second, old_claim, "delivery")

    messages = {c: [x.message() for x in got] for c, got in claimed.items()}
    email_adapter = app.runtime.adapter(app.registry.providers("email")[0])
    from notifier_email.message import build_message

    timed("email MIME build (build_message: written directly)", messages["email"],
          lambda m: build_message(email_adapter.settings, m, m.recipient, "<x@y>"),
          "email")
    timed("email MIME build as before c645957 (EmailMessage)", messages["email"],
          lambda m: email_message_mime(m, "noreply@example.com", "Cổng Dịch vụ công"), "email")
    for channel in ("email", "sms", "zalo", "portal"):
        adapter = app.runtime.adapter(app.registry.providers(channel)[0])
        timed(f"{channel} adapter send (on the loop, waited for)", messages[channel],
              lambda m, a=adapter: app.runtime.submit(a.send(m)).result(10), "delivery")

    async def nothing() -> None:
        await asyncio.sleep(0)

    timed("runtime.submit of an empty coroutine (thread hop)", range(n),
          lambda _i: app.runtime.submit(nothing()).result(10), "call")
    every = [x for got in claimed.values() for x in got]
    timed("finish_attempts of one (UPDATE, INSERT)", every,
          lambda c: app.deliveries.finish_attempts(
              [AttemptRecord(c, DeliveryStatus.SENT, c.channel, utcnow())]),
          "delivery")

    for channel in ("email", "sms", "zalo", "portal"):
        timed(f"sender.send, a group of {channel} (claim, send concurrently, record)",
              [d for d, c in third if c == channel], app.sender.send, "delivery", group=True)
    pinged.dispose()


if __name__ == "__main__":
    main()
