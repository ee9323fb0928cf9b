"""What operators and Prometheus wait for as the delivery log grows (issue 21, item 6).

Seeds a fresh PostgreSQL database with N deliveries spread over D days, generated in
SQL (no Python loop), then times what operators and Prometheus touch, through the HTTP
API the way they call it: the ``/metrics`` scrape, the console's overview (24 h), a
dossier's timeline, a delivery search by recipient, a month's report, and the daily
retention purge. Each figure is the median and the worst of several calls.

    ./dev bench-log [--deliveries 5000000] [--days 30] [--repeat 5] [--json FILE]

Seeding 5 million deliveries takes minutes; ``--deliveries 200000`` is a quick look.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.infra import PG_ADMIN_URL, fresh_database  # noqa: E402

AGENCIES = 20
PROCEDURES = 60
CHANNELS = ("email", "sms", "zalo", "portal")
PROVIDERS = {"email": "smtp", "sms": "esms", "zalo": "zalo", "portal": "inbox"}

# One event in three has all four channels, the others email and portal only: about
# 2.7 deliveries an event, as a province's mix of contacts gives.
SEED_SQL = """
INSERT INTO events (event_id, received_at, occurred_at, source_system, agency_code,
                    dossier_code, procedure_code, status, payload)
SELECT md5('e' || i)::uuid,
       %(now)s - (%(days)s * interval '1 day') * ((i * 0.6180339887) %% 1),
       %(now)s - (%(days)s * interval '1 day') * ((i * 0.6180339887) %% 1) - interval '2 s',
       'motcua', 'A' || lpad((i %% %(agencies)s)::text, 3, '0'),
       'A' || lpad((i %% %(agencies)s)::text, 3, '0') || '-' || (i / 3),
       'P' || (i %% %(procedures)s), (ARRAY['1','2','3','4','5'])[1 + i %% 5],
       NULL
FROM generate_series(1, %(events)s) AS i;

INSERT INTO deliveries (delivery_id, event_id, dossier_code, agency_code, procedure_code,
    event_status, channel, provider, language, template, recipient_masked, recipient_hash,
    recipient, content, status, attempts, provider_message_id, exhausted, created_at,
    updated_at, sent_at, delivered_at)
SELECT md5('d' || e.n || c.channel)::uuid, e.event_id, e.dossier_code, e.agency_code,
       e.procedure_code, e.status, c.channel, c.provider, 'vi', 'status-' || e.status,
       '09******' || lpad((e.n %% 100)::text, 2, '0'),
       md5('r' || (e.n %% 400000) || c.channel),
       'x' || e.n, '{"text": "Ho so da duoc tiep nhan"}'::json,
       CASE WHEN e.n %% 97 = 0 THEN 'permanent-failure'
            WHEN e.n %% 53 = 0 THEN 'temporary-failure'
            WHEN e.n %% 41 = 0 THEN 'suppressed'
            WHEN c.channel IN ('sms', 'zalo', 'email') AND e.n %% 5 = 0 THEN 'sent'
            ELSE 'delivered' END,
       CASE WHEN e.n %% 97 = 0 THEN 5 WHEN e.n %% 53 = 0 THEN 2
            WHEN e.n %% 41 = 0 THEN 0 ELSE 1 END,
       'pm-' || e.n || c.channel,
       e.n %% 97 = 0,
       e.received_at, e.received_at + interval '3 s',
       e.received_at + interval '1 s', e.received_at + interval '3 s'
FROM (SELECT event_id, dossier_code, agency_code, procedure_code, status, received_at,
             row_number() OVER () AS n FROM events) AS e
JOIN (VALUES ('email', 'smtp', 0), ('portal', 'inbox', 0), ('sms', 'esms', 1),
             ('zalo', 'zalo', 1)) AS c(channel, provider, every_third)
  ON c.every_third = 0 OR e.n %% 3 = 0;

INSERT INTO delivery_attempts (delivery_id, number, provider, started_at, finished_at,
                               outcome, error, error_code, provider_message_id)
SELECT d.delivery_id, a.number, d.provider, d.created_at + a.number * interval '1 s',
       d.created_at + a.number * interval '1 s' + interval '200 ms',
       CASE WHEN a.number = d.attempts THEN
            CASE WHEN d.status = 'delivered' THEN 'sent' ELSE d.status END
            ELSE 'temporary-failure' END,
       NULL, NULL, d.provider_message_id
FROM deliveries AS d
JOIN LATERAL generate_series(1, d.attempts) AS a(number) ON true;
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def events_for(deliveries: int) -> int:
    """Events that give about ``deliveries`` rows with the seed's channel mix (8 per 3)."""
    return max(3, deliveries * 3 // 8)


def seed(database_name: str, deliveries: int, days: int, now: datetime) -> dict[str, Any]:
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database_name
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        parameters = {
            "now": now,
            "days": days,
            "events": events_for(deliveries),
            "agencies": AGENCIES,
            "procedures": PROCEDURES,
        }
        # No rollup triggers while seeding (they would mark every old row's hour):
        # rebuild_rollups rolls up every hour afresh after the seed.
        connection.execute("SET session_replication_role = replica")
        for statement in SEED_SQL.split(";"):
            if statement.strip():
                connection.execute(statement, parameters)
        connection.execute("VACUUM ANALYZE")
        count = connection.execute("SELECT count(*) FROM deliveries").fetchone()
        size = connection.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('deliveries'))"
        ).fetchone()
    assert count is not None
    assert size is not None
    return {"deliveries": int(count[0]), "size": size[0], "seconds": time.perf_counter() - started}


def roll_up(database_url: str, now: datetime) -> float:
    """Roll up the seeded hours, as migration 0017 does for an upgrading province."""
    from notifier.store import Database
    from notifier.store.deliveries.rollups import rebuild_rollups

    started = time.perf_counter()
    database = Database(database_url)
    try:
        rebuild_rollups(database, now)
    finally:
        database.dispose()
    return time.perf_counter() - started


def timed(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    call()  # the first call warms caches and connections; the operator's second look counts
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "max_ms": max(samples)}


def a_dossier(events: int) -> str:
    """A dossier code the seed made, from the middle of the log."""
    i = events // 2
    return f"A{i % AGENCIES:03d}-{i // 3}"


def measure(
    database_url: str, days: int, repeat: int, now: datetime, dossier: str
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from benchmarks.infra import bench_settings
    from notifier.app import Notifier
    from notifier.ops.retention import Retention
    from notifier.store.apikeys import ApiKeys
    from notifier.web.api import create_api

    settings = bench_settings("memory://", database_url, {})
    app = Notifier(settings)
    key = ApiKeys(app.database).create("bench-operator", ["operator", "metrics"], [])
    headers = {"Authorization": f"Bearer {key}"}
    api = create_api(app)
    month_start = (now - timedelta(days=days)).date().isoformat()
    month_end = now.date().isoformat()
    results: dict[str, Any] = {}
    with TestClient(api) as client:

        def get(path: str, **params: str) -> Callable[[], Any]:
            def call() -> Any:
                response = client.get(path, headers=headers, params=params)
                response.raise_for_status()
                return response

            return call

        def search() -> Any:
            response = client.post(
                "/v1/deliveries/search",
                headers=headers,
                json={"agency": "A007", "channel": "sms", "status": "permanent-failure"},
            )
            response.raise_for_status()
            return response

        checks: dict[str, Callable[[], Any]] = {
            "metrics scrape": get("/metrics"),
            "overview (24 h)": get("/v1/overview", window="day"),
            "dossier lookup": get(f"/v1/dossiers/{dossier}"),
            "delivery search": search,
            "month's report": get("/v1/reports", **{"from": month_start, "to": month_end}),
        }
        for name, call in checks.items():
            results[name] = timed(call, repeat)
            print(
                f"  {name:<18} median {results[name]['median_ms']:9.1f} ms   "
                f"worst {results[name]['max_ms']:9.1f} ms",
                flush=True,
            )
    # The daily purge: one day past the retention period, as a worker runs it.
    retention = Retention(app.database, settings)
    started = time.perf_counter()
    report = retention.purge(now - timedelta(days=days - 1) + retention.delivery_age)
    results["retention purge (1 day)"] = {
        "median_ms": (time.perf_counter() - started) * 1000,
        "rows": report.total,
    }
    print(
        f"  retention purge    {results['retention purge (1 day)']['median_ms']:9.1f} ms "
        f"({report.total} rows)",
        flush=True,
    )
    app.close()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.now(UTC)
    with fresh_database() as (url, name):
        print(f"seeding {args.deliveries:,} deliveries over {args.days} days ...", flush=True)
        seeded = seed(name, args.deliveries, args.days, now)
        print(
            f"  {seeded['deliveries']:,} rows, {seeded['size']}, {seeded['seconds']:.0f} s",
            flush=True,
        )
        seeded["rollup_seconds"] = roll_up(url, now)
        print(f"  rolled up in {seeded['rollup_seconds']:.0f} s", flush=True)
        figures = {
            "seeded": seeded,
            "timings": measure(
                url, args.days, args.repeat, now, a_dossier(events_for(args.deliveries))
            ),
        }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
