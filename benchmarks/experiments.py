"""Proposed core changes, applied as patches inside the benchmark's worker processes only.

    ./dev bench --experiment finish-one-statement --experiment no-dramatiq-prometheus

They measure a change before it is made in notifier; they are not notifier's code.
``run.py`` puts ``benchmarks/experiment_site`` on the workers' PYTHONPATH, whose
``sitecustomize`` calls :func:`apply` with NOTIFIER_BENCH_EXPERIMENTS (comma-separated)
before Dramatiq forks its worker processes. Each patch keeps the patched function's
contract (the same outcomes and rows); see docs/performance.md for the proposals.

Three earlier experiments are now in the core and were removed from here: no pool
pre-ping and the one-statement claim (ac09276), and the compat32 MIME build (c645957).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ENV = "NOTIFIER_BENCH_EXPERIMENTS"


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


def no_dramatiq_prometheus() -> None:
    """Workers without Dramatiq's Prometheus middleware (its per-message histograms and
    counters in multiprocess mmap files); notifier's own send metrics stay."""
    from notifier import metrics

    original = metrics.instrument_worker

    def instrument_worker(app: Any, *, dramatiq_middleware: bool = True) -> Any:
        return original(app, dramatiq_middleware=False)

    metrics.instrument_worker = instrument_worker


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "finish-one-statement": finish_one_statement,
    "no-dramatiq-prometheus": no_dramatiq_prometheus,
}


def apply(names: str | None = None) -> list[str]:
    chosen = [n for n in (names if names is not None else os.environ.get(ENV, "")).split(",") if n]
    for name in chosen:
        EXPERIMENTS[name]()
    return chosen
