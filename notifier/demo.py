"""``notifier demo``: the whole path in one process on the embedded default.

SQLite for storage, Dramatiq's in-process broker, a local SMTP catcher standing in
for the mail server; sample events go in, deliveries come out, the log is printed,
and the portal inbox API is served until Ctrl-C (or the demo exits with ``--exit``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import click
from dramatiq import Worker

from notifier.deliverylog import DeliveryLog, DeliveryQuery
from notifier.samples import sample_events
from notifier.settings import load_settings
from notifier.simulators.local import LocalProviders

_UNFINISHED = {"queued", "sending", "temporary-failure"}


def run_demo(*, count: int, exit_after: bool, port: int, workdir: Path) -> int:
    from notifier.app import Notifier
    from notifier.logging import configure_logging
    from notifier.store.migrate import upgrade

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
            **providers.settings_overrides(receipts_base=f"http://127.0.0.1:{port}"),
        )
        configure_logging(settings.log_level, settings.log_format)
        app = Notifier(settings)
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
            click.echo(f"  zalo     local Zalo ZNS {providers.zalo.base_url}\n")
            started = time.monotonic()
            for event in sample_events(count):
                app.submit(json.dumps(event, ensure_ascii=False).encode(), source="demo")
            log = DeliveryLog(app.database, settings.recipient_hash_key.get_secret_value())
            counts = _wait_until_done(log, timeout_s=60 + count * 0.5)
            elapsed = time.monotonic() - started
            rows = log.search(DeliveryQuery(limit=25))
            from notifier.cli import DELIVERY_COLUMNS, print_table

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
            if exit_after:
                return 0 if ok else 1
            _serve_inbox(app, port)
            return 0 if ok else 1
        finally:
            worker.stop()
            app.close()


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


def _serve_inbox(app: object, port: int) -> None:
    import uvicorn

    from notifier.api import create_api
    from notifier.apikeys import ApiKeys
    from notifier.app import Notifier

    assert isinstance(app, Notifier)
    key = ApiKeys(app.database).create("demo", ["inbox", "operator", "publish"], [])
    base = f"http://127.0.0.1:{port}"
    click.echo(f"\nPortal inbox API on {base} (OpenAPI: {base}/docs). Try:")
    click.echo(f"  curl -H 'Authorization: Bearer {key}' {base}/v1/inbox/acc-1/notifications")
    click.echo(f"  curl -H 'Authorization: Bearer {key}' {base}/v1/inbox/acc-1/unread-count")
    click.echo(f"  curl -H 'Authorization: Bearer {key}' '{base}/v1/deliveries?channel=email'")
    click.echo("Ctrl-C to stop.")
    uvicorn.run(create_api(app), host="127.0.0.1", port=port, log_level="warning")
