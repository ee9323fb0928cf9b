"""The "morning batch" (issue 19): each dossier moves through three statuses within a
minute (received, processing, result ready), for many dossiers, every status routed to
email, the portal, Zalo and SMS. Run twice on a fresh PostgreSQL database against the
local simulators: once sending every status, once coalescing SMS and Zalo over a
2-minute window (the shipped ``always`` list: result ready goes at once and supersedes
the two held before it). Reports messages sent per channel and VND charged (the
simulators' own records, and notifier's report, which must agree), and what
coalescing saved.

    .venv/bin/python benchmarks/morning_batch.py --quick  # 300 dossiers
    .venv/bin/python benchmarks/morning_batch.py           # 2,000 dossiers

The clock is controlled (time-machine): the statuses' minute and the window pass
without waiting. Sends, database writes and the sweeper's release are real.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
import time_machine
from dramatiq import Worker
from notifier_simulators.local import LocalProviders
from notifier_simulators.sms import EsmsSimulator

from benchmarks.infra import REPO, fresh_database
from notifier.app import Notifier
from notifier.ops.reports import build_report
from notifier.ops.samples import sample_event
from notifier.settings import load_settings
from notifier.store import Database
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.schema import deliveries

STATUSES = ("received", "processing", "result_ready")
STEP_S = 20  # three statuses within a minute
WINDOW_S = 120
GROUP = 100  # events per ingest call, as the bridge groups them
UNFINISHED = ("queued", "sending", "temporary-failure", "scheduled")


def config_dir(root: Path, *, coalesce: bool) -> Path:
    config = root / "config"
    shutil.copytree(REPO / "config", config, dirs_exist_ok=True)
    routing = (config / "routing.toml").read_text("utf-8")
    for status in STATUSES:
        line = next(x for x in routing.splitlines() if x.startswith(f"{status} "))
        routing = routing.replace(line, f'{status} = ["portal", "email", "zalo", "sms"]')
    if coalesce:
        routing = routing.replace(
            "window_s = {}", f"window_s = {{ sms = {WINDOW_S}, zalo = {WINDOW_S} }}"
        )
    (config / "routing.toml").write_text(routing, "utf-8")
    return config


def prices(providers: LocalProviders) -> dict[str, Any]:
    """Our price table set to what the simulators bill (eSMS by carrier and segment,
    Zalo per message), so the report's estimates can be checked against their records."""
    carriers = dict(EsmsSimulator.DEFAULT_PRICES)
    return {
        "prices": {
            "esms": {"per_segment_vnd": carriers.pop("unknown"), "carriers": carriers},
            "zalo": {
                "per_message_vnd": providers.zalo.zns_price_vnd,
                "per_uid_message_vnd": providers.zalo.uid_price_vnd,
            },
        }
    }


def events_at(step: int, dossiers: int, start: datetime) -> list[str]:
    made = []
    for index in range(dossiers):
        event = sample_event(index, event_id=uuid.uuid4())
        event["dossier"]["status"] = STATUSES[step]
        event["occurred_at"] = (start + timedelta(seconds=step * STEP_S)).isoformat()
        made.append(json.dumps(event, ensure_ascii=False))
    return made


def unfinished(database: Database) -> int:
    d = deliveries.c
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).where(d.status.in_(UNFINISHED))
            ).scalar_one()
        )


def run(dossiers: int, *, coalesce: bool) -> dict[str, Any]:
    with (
        fresh_database() as (url, _name),
        LocalProviders(parse_emails=False) as providers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        settings = load_settings(
            config_dir=config_dir(Path(tmp), coalesce=coalesce),
            database_url=url,
            log_level="WARNING",
            # A morning's batch, measured at whatever hour it runs: the citizen's night
            # (quiet hours) would hold SMS and Zalo until 7:00 in Vietnam.
            choice={"quiet_hours": False},
            costs=prices(providers),
            **providers.settings_overrides(),
        )
        app = Notifier(settings)
        providers.seed_tokens(app.tokens)
        worker = Worker(app.broker, worker_threads=8, worker_timeout=100)
        start = datetime.now(UTC).replace(microsecond=0)
        began = time.perf_counter()
        with time_machine.travel(start, tick=True) as clock:
            worker.start()
            try:
                for step in range(len(STATUSES)):
                    clock.move_to(start + timedelta(seconds=step * STEP_S))
                    raw = events_at(step, dossiers, start)
                    for first in range(0, len(raw), GROUP):
                        results = app.ingest.handle_batch(
                            [(text, {}) for text in raw[first : first + GROUP]], source="bench"
                        )
                        app.enqueue_deliveries([d for r in results for d in r.to_enqueue])
                # Past the window: the sweeper releases what is still held.
                clock.move_to(start + timedelta(seconds=2 * STEP_S + WINDOW_S + 5))
                app.sweeper.release_due()
                deadline = time.monotonic() + 600
                while unfinished(app.database) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    app.sweeper.release_due()
            finally:
                worker.stop()
        elapsed = time.perf_counter() - began
        report = build_report(
            DeliveryLog(app.database, ""),
            start - timedelta(hours=1),
            start + timedelta(hours=1),
        ).as_json()
        app.close()
        charged = {"sms": providers.esms.charged_vnd, "zalo": providers.zalo.charged_vnd}
        return {
            "coalescing": coalesce,
            "dossiers": dossiers,
            "events": dossiers * len(STATUSES),
            "seconds": round(elapsed, 1),
            "messages": {
                "email": len(providers.smtp.messages),
                "portal": report["by_channel"].get("portal", 0),
                "sms": len(providers.esms.messages),
                "zalo": len(providers.zalo.messages),
            },
            "superseded": report["superseded"],
            "unfinished": report["by_status"].get("queued", 0)
            + report["by_status"].get("scheduled", 0),
            "charged_vnd": charged,
            "report_vnd": {
                channel: report["cost"]["by_channel"].get(channel, "0") for channel in charged
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 dossiers instead of 2,000")
    parser.add_argument("--dossiers", type=int, help="how many dossiers")
    args = parser.parse_args()
    dossiers = args.dossiers or (300 if args.quick else 2000)
    every = run(dossiers, coalesce=False)
    coalesced = run(dossiers, coalesce=True)
    paid = ("sms", "zalo")
    saved_messages = sum(every["messages"][c] - coalesced["messages"][c] for c in paid)
    saved_vnd = sum(every["charged_vnd"][c] - coalesced["charged_vnd"][c] for c in paid)
    agree = all(
        Decimal(run_["report_vnd"][c]) == run_["charged_vnd"][c]
        for run_ in (every, coalesced)
        for c in paid
    )
    summary = {
        "scenario": "morning batch",
        "every_status": every,
        "coalesced": coalesced,
        "saved": {
            "messages": saved_messages,
            "vnd": saved_vnd,
            "share_of_paid_messages": round(
                saved_messages / max(1, sum(every["messages"][c] for c in paid)), 3
            ),
        },
        "report_matches_simulators_charges": agree,
    }
    print(json.dumps(summary, indent=2))
    header = f"{'':<14}{'email':>7}{'portal':>7}{'zalo':>7}{'sms':>7}{'VND (zalo+sms)':>16}"
    print("\n" + header)
    for name, result in (("every status", every), ("coalesced", coalesced)):
        m = result["messages"]
        vnd = sum(result["charged_vnd"].values())
        print(f"{name:<14}{m['email']:>7}{m['portal']:>7}{m['zalo']:>7}{m['sms']:>7}{vnd:>16,}")
    print(f"saved: {saved_messages} paid messages, {saved_vnd:,} VND; report agrees: {agree}")


if __name__ == "__main__":
    main()
