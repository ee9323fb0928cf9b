"""``notifier demo``: the whole path in one process on the embedded default.

SQLite for storage, Dramatiq's in-process broker, a local SMTP catcher standing in
for the mail server; sample events (dated just before now, so the console's figures
read like a live service's) go in, deliveries come out, the log is printed, and the
API and the operators' console are served until Ctrl-C (or the demo exits with
``--exit``), with a console account made for the demo and its sign-in printed once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from dramatiq import Worker

from notifier.ops.samples import sample_events
from notifier.settings import load_settings
from notifier.store.deliveries.log import DeliveryLog, DeliveryQuery

if TYPE_CHECKING:
    from notifier.app import Notifier

_UNFINISHED = {"queued", "sending", "temporary-failure"}
DEMO_OPERATOR = "demo"
# The samples occur this far apart, ending just before they are submitted.
SAMPLE_SPACING = timedelta(milliseconds=10)


def run_demo(*, count: int, exit_after: bool, port: int, workdir: Path) -> int:
    from notifier.app import Notifier
    from notifier.logging import configure_logging
    from notifier.ops.retention import add_retention_job
    from notifier.store.migrate import upgrade

    try:
        # The local providers are a dev distribution of their own (simulators/), not
        # part of the core: ./dev installs it, a production image has no demo.
        from notifier_simulators.local import LocalProviders
    except ImportError as exc:
        raise click.ClickException(
            "the demo needs the local provider simulators: install them with "
            "`pip install -e simulators/` from a clone of the repository (./dev does)"
        ) from exc

    workdir.mkdir(parents=True, exist_ok=True)
    database_file = workdir / "demo.db"
    for stale in workdir.glob("demo.db*"):
        stale.unlink()

    with LocalProviders() as providers:
        settings = load_settings(
            broker_url="memory://",
            database_url=f"sqlite:///{database_file}",
            log_format="console",
            log_level="WARNING",
            # The demo delivers its samples at any hour: quiet hours (21:00-07:00 Vietnam
            # time) would hold its SMS and Zalo messages till morning, and a long demo
            # would meet the per-recipient caps. Both are on in a deployment.
            choice={"quiet_hours": False, "frequency_caps": False},
            **providers.settings_overrides(receipts_base=f"http://127.0.0.1:{port}"),
        )
        configure_logging(settings.log_level, settings.log_format)
        app = Notifier(settings)
        add_retention_job(app)  # the workers below purge as a deployment's do
        upgrade(app.database)
        providers.seed_tokens(app.tokens)
        smtp = providers.smtp
        worker = Worker(app.broker, worker_threads=8)
        worker.start()
        try:
            click.echo(
                f"notifier demo: {count} dossier events → "
                f"channels {', '.join(sorted(app.registry.channels))}"
            )
            click.echo(f"  storage  {database_file} (SQLite)")
            click.echo("  broker   in-process (Dramatiq StubBroker)")
            click.echo(f"  email    local SMTP catcher on 127.0.0.1:{smtp.port}")
            click.echo(
                f"  sms      local eSMS gateway {providers.esms.base_url} "
                f"(then SpeedSMS {providers.speedsms.base_url})"
            )
            click.echo(f"  zalo     local Zalo ZNS {providers.zalo.base_url}")
            click.echo("  quiet hours and frequency caps off (a deployment has them on)\n")
            started = time.monotonic()
            # Dated just before now: the console's "median time to send" then shows the
            # demo's own latency, not the age of a fixed sample date.
            start = datetime.now(UTC) - count * SAMPLE_SPACING
            events = sample_events(count, start=start, step=SAMPLE_SPACING)
            for event in events:
                app.submit(json.dumps(event, ensure_ascii=False).encode(), source="demo")
            log = DeliveryLog(app.database, settings.recipient_hash_key.get_secret_value())
            counts = _wait_until_done(log, timeout_s=60 + count * 0.5)
            elapsed = time.monotonic() - started
            rows = log.search(DeliveryQuery(limit=25))
            from notifier.cli.common import DELIVERY_COLUMNS, print_table

            print_table([r.__dict__ for r in rows], DELIVERY_COLUMNS)
            total = sum(counts.values())
            if total > len(rows):
                click.echo(f"... {total - len(rows)} more (notifier deliveries --help)")
            click.echo(
                f"\n{total} deliveries in {elapsed:.1f}s: "
                + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            )
            click.echo(f"emails caught by the SMTP catcher: {len(smtp.messages)}")
            if smtp.messages:
                click.echo(f"  e.g. subject: {smtp.messages[0]['Subject']}")
            click.echo(f"SMS taken by the eSMS gateway: {len(providers.esms.messages)}")
            if providers.esms.messages:
                click.echo(f"  e.g. text: {providers.esms.messages[0].content}")
            click.echo(f"Zalo ZNS messages: {len(providers.zalo.messages)}")
            ok = total > 0 and set(counts) <= {"sent", "delivered"}
            ok = _citizens_ask(app, providers, events[0], port) and ok
            if exit_after:
                return 0 if ok else 1
            _serve(app, port)
            return 0 if ok else 1
        finally:
            worker.stop()
            app.close()


def _citizens_ask(app: Notifier, providers: Any, event: dict[str, Any], port: int) -> bool:
    """Citizens ask, notifier answers, through the real inbound path (the API's routes,
    verified as a gateway's and Zalo's calls are): the applicant of the first dossier
    texts "tra cuu <code>" by SMS (eSMS's MO forward), and a Zalo user writes "HD" to
    the OA. Returns whether both were answered."""
    import asyncio

    import httpx

    from notifier.web.api import create_api

    code = event["dossier"]["code"]
    phone = event["applicant"]["contacts"]["phone"]
    token = providers.receipt_token
    question = f"tra cuu {code}"
    before = {id(m) for m in providers.esms.messages}

    async def call_the_api() -> None:
        # The API in this process, through its ASGI interface (the demo serves it on
        # the port only later, without --exit).
        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://127.0.0.1:{port}"
        ) as client:
            await client.get(
                f"/v1/inbound-sms/esms/{token}",
                params=providers.esms.mo_params(phone, question),
            )
            body, headers = providers.zalo.build_user_text("8800112233", "HD")
            await client.post("/v1/receipts/zalo", content=body, headers=headers)

    asyncio.run(call_the_api())
    deadline = time.monotonic() + 30
    answer = None
    while time.monotonic() < deadline:
        answers = [m for m in providers.esms.messages if id(m) not in before]
        if answers and providers.zalo.consultations:
            answer = answers[-1].content
            break
        time.sleep(0.1)
    click.echo("\nCitizens ask, notifier answers (docs/inbound.md):")
    click.echo(f"  SMS from the applicant: {question!r}")
    click.echo(f"    reply by SMS:  {answer!r}")
    zalo = providers.zalo.consultations
    click.echo("  Zalo user to the OA: 'HD'")
    click.echo(f"    consultation reply: {zalo[0].text if zalo else None!r}")
    return answer is not None and bool(zalo)


def _wait_until_done(log: DeliveryLog, timeout_s: float) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    previous: Counter[str] = Counter()
    stable = 0
    while time.monotonic() < deadline:
        counts = Counter(log.status_counts())
        # Done when nothing is in flight and the totals stopped moving (ingest finished).
        stable = stable + 1 if counts == previous and counts else 0
        if stable >= 3 and not (_UNFINISHED & set(counts)):
            return counts
        previous = counts
        time.sleep(0.2)
    return Counter(log.status_counts())


@dataclass(frozen=True)
class DemoServing:
    """What the demo serves once its events are sent: the API with the console, and the
    lines telling a newcomer how to reach it (holding the sign-in, printed once)."""

    api: Any  # the FastAPI application
    instructions: list[str]


def prepare_serving(app: Notifier, port: int) -> DemoServing:
    """The API and console for the demo's database, an API key for curl, and a console
    admin account ``demo`` with a fresh random password. The password is in the
    instructions only: never logged, stored as its scrypt hash like any other."""
    from notifier.store.apikeys import ApiKeys
    from notifier.store.operators import OperatorStore, Role
    from notifier.web.api import create_api

    key = ApiKeys(app.database).create("demo", ["inbox", "operator", "publish"], [])
    password = secrets.token_urlsafe(12)
    OperatorStore(app.database).add(DEMO_OPERATOR, password, Role.ADMIN)
    base = f"http://127.0.0.1:{port}"
    instructions = [
        "",
        f"Operators' console: {base}/console/",
        f"  sign in as {DEMO_OPERATOR!r} with the password {password}",
        "  (made for this demo and shown only here; the demo's database is new each run)",
        "",
        f"Portal inbox API on {base} (OpenAPI: {base}/docs). Try:",
        f"  curl -H 'Authorization: Bearer {key}' {base}/v1/inbox/acc-1/notifications",
        f"  curl -H 'Authorization: Bearer {key}' {base}/v1/inbox/acc-1/unread-count",
        f"  curl -H 'Authorization: Bearer {key}' --json '{{\"channel\": \"email\"}}' "
        f"{base}/v1/deliveries/search",
        "Ctrl-C to stop.",
    ]
    return DemoServing(create_api(app), instructions)


def _serve(app: Notifier, port: int) -> None:
    import uvicorn

    serving = prepare_serving(app, port)
    for line in serving.instructions:
        click.echo(line)
    uvicorn.run(serving.api, host="127.0.0.1", port=port, log_level="warning")
