"""Provider health shows the latest outcome whatever happened to the process that wrote
it: a circuit left "open" by a worker that was killed clears on the next success of
another process (PostgreSQL; the dead worker is a real process, killed with SIGKILL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner

from notifier.cli.main import main
from notifier.pipeline.guard import ProviderCall
from notifier.pipeline.protection import ProviderGuard
from notifier.settings import ProviderPolicy
from notifier.store import Database
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.schema import utcnow
from tests.support import REPO

pytestmark = pytest.mark.integration

# A worker whose eSMS calls keep failing: its circuit opens for an hour, the state is
# written, and the process dies without a word (kill -9).
DYING_WORKER = """
import os, signal, sys
from notifier.pipeline.protection import ProviderGuard
from notifier.pipeline.guard import ProviderCall
from notifier.settings import ProviderPolicy
from notifier.store import Database

policy = ProviderPolicy(circuit_failures=3, circuit_open_s=3600)
guard = ProviderGuard(Database(sys.argv[1]), {"esms": policy})
for _ in range(3):
    guard.observe(ProviderCall("sms", "esms", "temporary-failure", 0.2, "99"))
guard.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_circuit_left_open_by_a_killed_worker_shows_closed_after_a_success_elsewhere(
    pg_url: str, pg_database: Database
) -> None:
    died = subprocess.run(
        [sys.executable, "-c", DYING_WORKER, pg_url], capture_output=True, timeout=120
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()[-2000:]
    log = DeliveryLog(pg_database, "unused")
    [left] = log.provider_health()
    assert left.circuit_state == "open"
    assert left.open_until is not None
    assert left.open_until > utcnow() + timedelta(minutes=50)

    # Another worker process (this one) sends through eSMS, and it works.
    guard = ProviderGuard(pg_database, {"esms": ProviderPolicy()})
    guard.observe(ProviderCall("sms", "esms", "sent", 0.1))
    guard.flush()
    guard.close()

    [now] = log.provider_health()
    assert now.circuit_state == "closed"
    assert now.consecutive_failures == 0
    assert now.last_success_at is not None
    assert now.last_failure_at is not None
    assert now.last_failure_at < now.last_success_at
    env = {
        "NOTIFIER_DATABASE_URL": pg_url,
        "NOTIFIER_CONFIG_DIR": str(REPO / "config"),
        "NOTIFIER_BROKER_URL": "memory://",
    }
    shown = CliRunner().invoke(main, ["providers", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    items = json.loads(shown.output)
    [esms] = [item for item in items if item["provider"] == "esms"]
    assert esms["circuit_state"] == "closed"
    assert esms["last_success_at"] is not None


def test_a_failure_after_the_success_leaves_the_circuit_as_its_process_recorded(
    pg_database: Database,
) -> None:
    failing = ProviderGuard(
        pg_database, {"esms": ProviderPolicy(circuit_failures=2, circuit_open_s=600)}
    )
    healthy = ProviderGuard(pg_database, {"esms": ProviderPolicy()})
    healthy.observe(ProviderCall("sms", "esms", "sent", 0.1))
    healthy.flush()
    for _ in range(2):
        failing.observe(ProviderCall("sms", "esms", "temporary-failure", 0.2, "99"))
    failing.flush()
    [shown] = DeliveryLog(pg_database, "unused").provider_health()
    assert shown.circuit_state == "open"  # opened after the last success anyone saw
    for guard in (failing, healthy):
        guard.close()
