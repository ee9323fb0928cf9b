"""What operators and Prometheus wait for as the delivery log grows (issue 21, item 6).

Seeds a fresh PostgreSQL database with N deliveries spread over D days, generated in
SQL (no Python loop), then times what operators and Prometheus touch, through the HTTP
API the way they call it: the ``/metrics`` scrape, the console's overview (24 h), a
dossier's timeline, a delivery search by recipient, a month's report, and the daily
retention purge. Each figure is the median and the worst of several calls; the targets
of issue 21 (item 6) are printed with met / MISSED / not measured.

    ./dev bench-log [--deliveries 5000000 | --sizes 200000 5000000] [--days 30]
                    [--repeat 5] [--keep-database NAME | --database NAME] [--json FILE]

Seeding 5 million deliveries takes 10+ minutes; ``--deliveries 200000`` is a quick look.
``--keep-database NAME`` keeps the seeded log in database NAME (seeded only if it does
not exist yet); ``--database NAME`` measures such a kept log without seeding. Either way
the measurements run on a copy (``CREATE DATABASE ... TEMPLATE NAME``, a file copy,
then the migrations this checkout adds), since the purge changes rows: the kept log
stays as seeded. With two sizes the scrape's flatness is judged (see ``FLAT``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.infra import PG_ADMIN_URL, fresh_database  # noqa: E402
from notifier.store import Database  # noqa: E402
from notifier.store.migrate import upgrade  # noqa: E402

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
            -- Waiting for a retry: only recent ones (retries end within the max age).
            WHEN e.n %% 53 = 0 AND e.received_at > %(now)s - interval '1 hour'
                 THEN 'temporary-failure'
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


# Issue 21's targets, on the median of the calls: (what, under ms).
TARGETS_MS = {
    "metrics scrape": 100.0,
    "dossier lookup": 50.0,
    "overview (24 h)": 500.0,
    "month's report": 5000.0,
}
# The scrape is "flat in log size" when its median at the largest size is at most this
# many times the one at the smallest, plus a few ms of noise.
FLAT = 1.5
FLAT_NOISE_MS = 5.0
# Where a kept log notes how it was seeded (its measurements reuse the same clock).
SEED_NOTE = "bench_seed"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--deliveries", type=int, help="one log size (default 5,000,000)")
    sizes.add_argument(
        "--sizes", type=int, nargs="+", help="several log sizes, each seeded and measured"
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument(
        "--keep-database",
        metavar="NAME",
        help="seed into database NAME (unless it exists) and keep it for later runs",
    )
    kept.add_argument(
        "--database", metavar="NAME", help="measure the log kept in NAME; no seeding"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--report", type=Path, help="print the targets of a --json file (from an earlier run)"
    )
    args = parser.parse_args(argv)
    args.sizes = args.sizes or [args.deliveries or 5_000_000]
    named = args.keep_database or args.database
    if named and len(args.sizes) > 1:
        parser.error("a kept database holds one log size: give one --deliveries")
    return args


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


def after_seed(database_url: str) -> dict[str, float]:
    """What an upgrade's migrations do for a log they find (rows written with SQL made
    no status changes): the derived tables rebuilt from the rows. Seconds each."""
    rollup_s = roll_up(database_url, datetime.now(UTC))
    print(f"  hourly rollup rebuilt from the log in {rollup_s:.1f} s", flush=True)
    return {"counters_rebuild_s": rebuild_metric_counters(database_url), "rollup_s": rollup_s}


def rebuild_metric_counters(database_url: str) -> float:
    """Count the seeded rows into /metrics' counters, as migration 0016 does on an
    upgrade (rows written with SQL have no status changes to fold)."""
    from notifier.store import Database
    from notifier.store.counters import rebuild_counters

    database = Database(database_url)
    started = time.perf_counter()
    rebuild_counters(database)
    database.dispose()
    seconds = time.perf_counter() - started
    print(f"  metric counters rebuilt from the log in {seconds:.1f} s", flush=True)
    return seconds
def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def _url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def _exists(name: str) -> bool:
    with _admin() as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return found.fetchone() is not None


def _note_seed(name: str, figures: dict[str, Any], days: int, now: datetime) -> None:
    with psycopg.connect(_url(name).replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {SEED_NOTE} (note json NOT NULL)")
        note = {**figures, "days": days, "now": now.isoformat()}
        connection.execute(f"INSERT INTO {SEED_NOTE} VALUES (%s)", (json.dumps(note),))


def _read_seed(name: str) -> dict[str, Any]:
    with psycopg.connect(_url(name).replace("+psycopg", ""), autocommit=True) as connection:
        row = connection.execute(f"SELECT note FROM {SEED_NOTE}").fetchone()
    if row is None:
        raise SystemExit(f"{name} holds no seeded log (no {SEED_NOTE} row)")
    return dict(row[0])


def kept_log(name: str, deliveries: int, days: int, now: datetime) -> dict[str, Any]:
    """The log kept in database ``name``: seeded now if the database does not exist.
    Returns what the seed noted (its figures, days and clock)."""
    if _exists(name):
        return _read_seed(name)
    with _admin() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database = Database(_url(name))
    upgrade(database)
    database.dispose()
    print(f"seeding {deliveries:,} deliveries over {days} days into {name} (kept) ...")
    figures = seed(name, deliveries, days, now)
    figures.update(after_seed(_url(name)))
    _note_seed(name, {**figures, "events": events_for(deliveries)}, days, now)
    return _read_seed(name)


@contextmanager
def copy_of(name: str) -> Iterator[tuple[str, str]]:
    """A throwaway copy of database ``name`` (a file copy), migrated to this checkout's
    head: (SQLAlchemy URL, its name). Dropped afterwards."""
    copy = f"notifier_bench_{uuid.uuid4().hex[:10]}"
    started = time.perf_counter()
    with _admin() as connection:
        connection.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    try:
        database = Database(_url(copy))
        upgrade(database)
        database.dispose()
        print(f"  copied {name} and migrated the copy in {time.perf_counter() - started:.0f} s")
        yield _url(copy), copy
    finally:
        with _admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
def roll_up(database_url: str, now: datetime) -> float:
    """Roll up the seeded hours, as migration 0018 does for an upgrading province."""
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


def one_size(args: argparse.Namespace, deliveries: int) -> dict[str, Any]:
    """Seed (or copy a kept log) and measure one log size."""
    named = args.keep_database or args.database
    if named is None:
        now = datetime.now(UTC)
        with fresh_database() as (url, name):
            print(f"seeding {deliveries:,} deliveries over {args.days} days ...", flush=True)
            seeded = seed(name, deliveries, args.days, now)
            print(
                f"  {seeded['deliveries']:,} rows, {seeded['size']}, "
                f"{seeded['seconds']:.0f} s",
                flush=True,
            )
            seeded.update(after_seed(url))
            dossier = a_dossier(events_for(deliveries))
            timings = measure(url, args.days, args.repeat, now, dossier)
        return {"seeded": seeded, "timings": timings}
    if args.database and not _exists(args.database):
        raise SystemExit(f"no database {args.database}: seed it with --keep-database first")
    note = kept_log(named, deliveries, args.days, datetime.now(UTC))
    now = datetime.fromisoformat(note["now"])
    days = int(note["days"])
    hours = (datetime.now(UTC) - now).total_seconds() / 3600
    print(f"the log kept in {named}: {note['deliveries']:,} rows, seeded {hours:.1f} h ago")
    if hours > 1:
        # The API's windows end now, not at the seed's clock: the last 24 h hold less.
        print(f"  NOTE: the overview's last 24 h hold only the seed's newest {24 - hours:.0f} h")
    seeded = {k: note[k] for k in ("deliveries", "size", "seconds")} | {"kept_in": named}
    with copy_of(named) as (url, _copy):
        timings = measure(url, days, args.repeat, now, a_dossier(note["events"]))
    return {"seeded": seeded, "timings": timings}


def targets(sizes: list[dict[str, Any]]) -> list[list[str]]:
    """Issue 21's targets on the largest log measured, with met / MISSED / not
    measured; the scrape's flatness needs two sizes, at least ten times apart."""
    largest = max(sizes, key=lambda f: f["seeded"]["deliveries"])
    smallest = min(sizes, key=lambda f: f["seeded"]["deliveries"])
    rows_label = f"{largest['seeded']['deliveries']:,} rows"
    rows = []
    for what, limit in TARGETS_MS.items():
        timing = largest["timings"].get(what)
        if timing is None:
            rows.append([f"{what} < {limit:g} ms", "-", "not measured"])
            continue
        median = timing["median_ms"]
        verdict = "met" if median < limit else "MISSED"
        rows.append([f"{what} < {limit:g} ms", f"{median:.1f} ms at {rows_label}", verdict])
    small_rows = smallest["seeded"]["deliveries"]
    if small_rows * 10 > largest["seeded"]["deliveries"]:
        rows.append(["metrics scrape flat in log size", "one log size (or sizes < 10× apart)",
                     "not measured"])
    else:
        small = smallest["timings"]["metrics scrape"]["median_ms"]
        large = largest["timings"]["metrics scrape"]["median_ms"]
        flat = large <= small * FLAT + FLAT_NOISE_MS
        rows.append(
            [
                f"metrics scrape flat in log size (≤ {FLAT:g}× + {FLAT_NOISE_MS:g} ms)",
                f"{small:.1f} ms at {small_rows:,} rows, {large:.1f} ms at {rows_label}",
                "met" if flat else "MISSED",
            ]
        )
    return rows


def print_targets(rows: list[list[str]]) -> None:
    print("\nTargets (issue 21, item 6; medians)")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        figures = json.loads(args.report.read_text())
        print_targets(targets(figures.get("sizes") or [figures]))
        return 0
    sizes = [one_size(args, deliveries) for deliveries in sorted(args.sizes)]
    rows = targets(sizes)
    print_targets(rows)
    # The largest size also at the top level, as files before --sizes had it.
    figures = {**sizes[-1], "sizes": sizes, "targets": rows}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
