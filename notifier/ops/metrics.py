"""Prometheus metrics, all named ``notifier_*`` (and Dramatiq's own ``dramatiq_*``).

Two sources, scraped separately (see docs/operations.md):

* the API's ``/metrics``: :class:`StateCollector` reads counters kept in the database
  (folded from the status outbox, :mod:`notifier.store.counters`), the backlog through
  indexes, provider health and the RabbitMQ queue depths at scrape time, so every API
  replica reports the same figures, nothing is lost when a worker restarts, and a
  scrape costs the same whatever the size of the log;
* each worker host's Dramatiq exposition server (port 9191): Dramatiq's Prometheus
  middleware (message counts, errors, retries, durations) plus what
  :func:`instrument_worker` adds: provider call latency and outcomes.

``prometheus_client`` is imported only inside functions, never at module level: it
chooses between in-process and multiprocess (mmap file) storage once, when first
imported, from ``PROMETHEUS_MULTIPROC_DIR``. A worker must set that variable to
Dramatiq's directory before the first import, or the metrics it records never reach
the exposition server, which runs in another process.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.pipeline.budget import BudgetLevel, budget_statuses, cost_zone
from notifier.pipeline.guard import ProviderCall
from notifier.store.counters import (
    DELIVERIES,
    HELD,
    REJECTED,
    RETRIES,
    SCRAPE_FOLD_LIMIT,
    SUPPRESSED,
    MetricCounters,
    backlog,
)
from notifier.store.deliveries.costs import CostLog, month_start, next_month
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.schema import utcnow
from notifier.store.statuses import StatusOutbox

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from notifier.app import Notifier

log = get_logger(__name__)

CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}
# Provider calls range from a local inbox insert (ms) to a slow gateway (send timeout).
SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StateCollector:
    """Gauges and counters read from the database and the broker at each scrape."""

    def __init__(self, app: Notifier) -> None:
        self.app = app

    def queue_names(self) -> list[str]:
        """Dramatiq's queues of this deployment (with their delay and dead-letter queues),
        the public inbound events queue, and the callbacks' queue (with its invalid one)."""
        base = [self.app.ingest_actor.queue_name] + [
            actor.queue_name for actor in self.app.deliver_actors.values()
        ]
        names = [f"{q}{suffix}" for q in base for suffix in ("", ".DQ", ".XQ")]
        callbacks = self.app.settings.callbacks.queue
        return [*names, self.app.settings.events.queue, callbacks, f"{callbacks}.invalid"]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        database_up = GaugeMetricFamily(
            "notifier_database_up", "1 if the last scrape could read the database."
        )
        try:
            yield from self._from_database()
            database_up.add_metric([], 1)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics could not read the database", error=repr(exc))
            database_up.add_metric([], 0)
        yield database_up
        if self.app.settings.uses_rabbitmq:
            depths = self._queue_depths()
            broker_up = GaugeMetricFamily(
                "notifier_broker_up", "1 if the last scrape could reach RabbitMQ."
            )
            broker_up.add_metric([], 0 if depths is None else 1)
            yield broker_up
            if depths is not None:
                depth = GaugeMetricFamily(
                    "notifier_queue_depth",
                    "Messages ready in each queue (.DQ: delayed retries, .XQ: dead-lettered).",
                    labels=["queue"],
                )
                for name, count in sorted(depths.items()):
                    depth.add_metric([name], count)
                yield depth

    def _from_database(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        # Counters: what waits in the outbox first (bounded), then a few rows; gauges
        # through indexes. Nothing here groups the delivery log (notifier.store.counters).
        counters = MetricCounters(self.app.database)
        counters.fold(SCRAPE_FOLD_LIMIT)
        values = counters.read()
        waiting = backlog(self.app.database)
        # The state shown, derived from the latest outcomes (as the console shows it).
        health_rows = DeliveryLog(self.app.database, "").provider_health()

        finished = CounterMetricFamily(
            "notifier_deliveries",
            "Deliveries that reached each final status, by channel and provider (provider "
            "'none' before the first attempt); one sent then delivered counts in both.",
            labels=["channel", "provider", "status"],
        )
        for (channel, provider, status), value in sorted(values.of(DELIVERIES).items()):
            finished.add_metric([channel, provider, status], value)
        yield finished
        in_flight = GaugeMetricFamily(
            "notifier_deliveries_in_flight",
            "Deliveries not final now: queued, sending, temporary-failure (waiting for a "
            "retry), scheduled (held) and unknown (waiting for an admin).",
            labels=["channel", "provider", "status"],
        )
        for (channel, provider, status), count in sorted(waiting.in_flight.items()):
            in_flight.add_metric([channel, provider, status], count)
        yield in_flight
        suppressed = CounterMetricFamily(
            "notifier_deliveries_suppressed",
            "Deliveries not sent because of a rule or the citizen's choice, by reason. "
            "Not failures.",
            labels=["channel", "reason"],
        )
        for (channel, reason), value in sorted(values.of(SUPPRESSED).items()):
            suppressed.add_metric([channel, reason], value)
        yield suppressed
        held = CounterMetricFamily(
            "notifier_deliveries_held",
            "Held deliveries (quiet hours, a frequency cap, coalescing) whose hold ended: "
            "sent, failed, superseded or suppressed.",
            labels=["channel", "reason"],
        )
        for (channel, reason), value in sorted(values.of(HELD).items()):
            held.add_metric([channel, reason], value)
        yield held
        by_reason = GaugeMetricFamily(
            "notifier_deliveries_by_reason",
            "Deliveries held now by a rule (kind scheduled), by channel and reason. Not "
            "failures. (Suppressed ones: notifier_deliveries_suppressed_total; holds that "
            "ended: notifier_deliveries_held_total.)",
            labels=["channel", "kind", "reason"],
        )
        for (channel, reason), count in sorted(waiting.held.items()):
            by_reason.add_metric([channel, "scheduled", reason], count)
        yield by_reason
        retry_total = CounterMetricFamily(
            "notifier_delivery_retries",
            "Attempts after the first, counted when a send ends (sent, failed, unknown).",
            labels=["channel"],
        )
        retried = values.of(RETRIES)
        channels = {channel for channel, _provider, _status in values.of(DELIVERIES)}
        for channel in sorted(channels | {labels[0] for labels in retried}):
            retry_total.add_metric([channel], retried.get((channel,), 0.0))
        yield retry_total
        latency = HistogramMetricFamily(
            "notifier_publish_to_accepted_seconds",
            "From an event's publish (its receipt by notifier) to the provider's acceptance "
            "of each of its deliveries, by channel; held deliveries left out.",
            labels=["channel"],
        )
        for channel in values.latency_channels():
            buckets, total = values.latency(channel)
            latency.add_metric(
                [channel], [(_le(upper), count) for upper, count in buckets], total
            )
        yield latency
        oldest_unsent = GaugeMetricFamily(
            "notifier_oldest_unsent_seconds",
            "Age of the oldest delivery waiting to be sent now (queued, sending, waiting "
            "for a retry, or held and due), since it was created or became due; 0 with none.",
            labels=["channel"],
        )
        now = utcnow()
        for channel in sorted(set(self.app.deliver_actors) | set(waiting.oldest_unsent)):
            since = waiting.oldest_unsent.get(channel)
            oldest_unsent.add_metric(
                [channel], 0.0 if since is None else max(0.0, (now - since).total_seconds())
            )
        yield oldest_unsent
        dead_letters = GaugeMetricFamily(
            "notifier_dead_letters",
            "Deliveries that failed after exhausting their retries (replayable).",
            labels=["channel"],
        )
        for channel, count in sorted(waiting.dead_letters.items()):
            dead_letters.add_metric([channel], count)
        yield dead_letters
        yield CounterMetricFamily(
            "notifier_rejected_events",
            "Events refused at ingest, with their reasons kept in the log.",
            value=values.of(REJECTED).get((), 0.0),
        )
        yield GaugeMetricFamily(
            "notifier_status_counters_pending",
            "Status changes not yet added to the counters above (the workers' sweepers "
            "and each scrape fold them).",
            value=counters.pending(),
        )
        circuit = GaugeMetricFamily(
            "notifier_circuit_state",
            "Provider circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["provider", "channel"],
        )
        failures = GaugeMetricFamily(
            "notifier_provider_consecutive_failures",
            "Failures in a row of each provider, as workers last recorded.",
            labels=["provider", "channel"],
        )
        for health in health_rows:
            labels = [health.provider, health.channel]
            circuit.add_metric(labels, CIRCUIT_STATES.get(health.circuit_state, 2))
            failures.add_metric(labels, int(health.consecutive_failures))
        yield circuit
        yield failures
        inbound = GaugeMetricFamily(
            "notifier_inbound_messages",
            "Citizens' messages kept (SMS, Zalo) by channel, what they asked (status, stop, "
            "start, help, unrecognised) and what came of it (answered, rate-limited, "
            "silenced, ignored).",
            labels=["channel", "command", "outcome"],
        )
        for (channel, command, outcome), n in sorted(self.app.inbound_store.counts().items()):
            inbound.add_metric([channel, command, outcome], n)
        yield inbound
        pending, oldest = StatusOutbox(self.app.database).backlog()
        yield GaugeMetricFamily(
            "notifier_status_outbox_pending",
            "Status changes recorded and not yet published to the status stream.",
            value=pending,
        )
        yield GaugeMetricFamily(
            "notifier_status_outbox_oldest_pending_seconds",
            "Age of the oldest status change not yet published (0 when none waits).",
            value=0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds()),
        )
        yield from self._callbacks()
        yield from self._costs()

    def _callbacks(self) -> Iterator[Metric]:
        """Each publisher's callback health (labels: publisher, kind)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self.app.callbacks.health()
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "backlog": GaugeMetricFamily(
                "notifier_callback_backlog",
                "Callbacks waiting to be delivered to each publisher (due now or later).",
                labels=["publisher", "kind"],
            ),
            "oldest": GaugeMetricFamily(
                "notifier_callback_oldest_pending_seconds",
                "Age of each publisher's oldest undelivered callback (0 with none).",
                labels=["publisher", "kind"],
            ),
            "dead": GaugeMetricFamily(
                "notifier_callback_dead_letters",
                "Callbacks given up after the configured age (replayable by an admin).",
                labels=["publisher", "kind"],
            ),
            "failures": GaugeMetricFamily(
                "notifier_callback_consecutive_failures",
                "Failed callback tries in a row to each publisher since its last success.",
                labels=["publisher", "kind"],
            ),
            "success": GaugeMetricFamily(
                "notifier_callback_last_success_timestamp_seconds",
                "When each publisher last accepted a callback (Unix time; 0 never).",
                labels=["publisher", "kind"],
            ),
            "delivered": CounterMetricFamily(
                "notifier_callbacks_delivered",
                "Callbacks delivered to each publisher, among those kept (pruned after "
                "callbacks.keep_delivered_days).",
                labels=["publisher", "kind"],
            ),
        }
        now = time.time()
        for item in health:
            labels = [item.target.publisher_name, item.target.publisher_kind.value]
            oldest = item.oldest_pending_at
            families["backlog"].add_metric(labels, item.backlog)
            families["oldest"].add_metric(
                labels, 0 if oldest is None else max(0.0, now - oldest.timestamp())
            )
            families["dead"].add_metric(labels, item.dead_letters)
            families["failures"].add_metric(labels, item.consecutive_failures)
            success = item.last_success_at
            families["success"].add_metric(labels, 0 if success is None else success.timestamp())
            families["delivered"].add_metric(labels, item.delivered)
        yield from families.values()

    def _costs(self) -> Iterator[Metric]:
        """This month's cost per agency and channel, and each budget's use and alerts
        (80% and 100%), months counted in ``[costs] timezone``."""
        from prometheus_client.core import GaugeMetricFamily

        costs = self.app.settings.costs
        tz = cost_zone(costs.timezone)
        start = month_start(utcnow(), tz)
        cost_log = CostLog(self.app.database)
        month_cost = GaugeMetricFamily(
            "notifier_month_cost_vnd",
            "What this calendar month's deliveries cost, in VND (providers' reported "
            "charges, else notifier's estimates from the price table).",
            labels=["agency", "channel"],
        )
        for (agency, channel), cost in sorted(cost_log.spend(start, next_month(start, tz)).items()):
            month_cost.add_metric([agency, channel], float(cost))
        yield month_cost
        budget = GaugeMetricFamily(
            "notifier_budget_vnd", "Each agency's monthly budget, in VND.", labels=["agency"]
        )
        used = GaugeMetricFamily(
            "notifier_budget_used_ratio",
            "Share of its monthly budget an agency has spent (1 = all of it).",
            labels=["agency"],
        )
        alert = GaugeMetricFamily(
            "notifier_budget_alert",
            "1 when an agency has spent at least this percentage of its monthly budget "
            "(80 and 100).",
            labels=["agency", "level"],
        )
        for status in budget_statuses(cost_log, costs.budgets, tz):
            budget.add_metric([status.agency_code], float(status.budget_vnd))
            used.add_metric([status.agency_code], float(status.share))
            level = status.level
            alert.add_metric([status.agency_code, "80"], 0 if level is BudgetLevel.OK else 1)
            alert.add_metric(
                [status.agency_code, "100"], 1 if level is BudgetLevel.EXHAUSTED else 0
            )
        yield budget
        yield used
        yield alert

    def _queue_depths(self) -> dict[str, int] | None:
        """Ready messages per queue via passive declares (None if RabbitMQ is down); a
        queue nobody declared yet is left out."""
        import pika
        from pika.exceptions import AMQPError, ChannelClosedByBroker

        from notifier.amqp import node_parameters

        parameters = node_parameters(
            self.app.settings.broker_url,
            heartbeat=0,
            socket_timeout=2,
            blocked_connection_timeout=2,
        )
        depths: dict[str, int] = {}
        try:
            connection = pika.BlockingConnection(parameters)
        except AMQPError as exc:
            log.warning("metrics could not reach RabbitMQ", error=repr(exc))
            return None
        try:
            channel = connection.channel()
            for name in self.queue_names():
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                    depths[name] = int(declared.method.message_count)
                except ChannelClosedByBroker:  # 404: not declared (yet)
                    channel = connection.channel()
        except AMQPError as exc:
            log.warning("metrics lost RabbitMQ mid-scrape", error=repr(exc))
            return None
        finally:
            if connection.is_open:
                connection.close()
        return depths


def _le(upper: float) -> str:
    """A bucket's upper bound as Prometheus writes it ("+Inf", "0.05", "1.0")."""
    return "+Inf" if math.isinf(upper) else repr(float(upper))


def state_registry(app: Notifier) -> CollectorRegistry:
    """A registry of its own for the API's /metrics (not the global default one)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(app))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


class SendMetrics:
    """Provider call latency and outcomes, fed by the sender's observer hook."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client as prom

        self.registry = registry if registry is not None else prom.CollectorRegistry()
        labels = ["channel", "provider", "outcome"]
        self.send_seconds = prom.Histogram(
            "notifier_send_seconds",
            "Time of one provider call (a send), by outcome.",
            labels,
            buckets=SEND_BUCKETS,
            registry=self.registry,
        )
        self.calls = prom.Counter(
            "notifier_provider_calls",
            "Provider calls by outcome (sent, delivered, temporary-failure, permanent-failure).",
            labels,
            registry=self.registry,
        )
        self.alerts = prom.Counter(
            "notifier_provider_alerts",
            "Provider failures that need an operator (credentials, balance, quota).",
            ["channel", "provider", "code"],
            registry=self.registry,
        )

    def observe(self, call: ProviderCall) -> None:
        labels = (call.channel, call.provider, call.outcome)
        self.send_seconds.labels(*labels).observe(call.seconds)
        self.calls.labels(*labels).inc()
        if call.operator_alert:
            self.alerts.labels(call.channel, call.provider, call.error_code or "").inc()


def instrument_worker(app: Notifier, *, dramatiq_middleware: bool = True) -> SendMetrics:
    """Export a worker's metrics: Dramatiq's Prometheus middleware and provider calls.

    Call it where the worker module builds its app (``notifier.cli.worker``), before
    anything imports ``prometheus_client``. The middleware starts its exposition
    server only under the ``dramatiq`` command (``notifier worker``): it is a "fork"
    the command runs, and its metrics are created on the ``process_boot`` hook, which
    only the command emits. An in-process ``dramatiq.Worker`` (tests, the demo) must
    pass ``dramatiq_middleware=False``.
    """
    if dramatiq_middleware:
        from dramatiq.middleware.prometheus import DB_PATH, Prometheus

        values = sys.modules.get("prometheus_client.values")
        if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
            log.warning(
                "prometheus_client was imported before the worker set up multiprocess "
                "metrics: notifier_send_seconds will not reach the exposition server"
            )
        # Dramatiq's own middleware sets this on process boot; the send metrics are
        # created before that, so set it first (same directory: dramatiq_prom_db).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = DB_PATH
        app.broker.add_middleware(Prometheus())
    metrics = SendMetrics()
    app.sender.observers.append(metrics.observe)
    return metrics


def metric_names(text: str) -> set[str]:
    """Names of the metric families in an exposition text (for tests and checks)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in an exposition text, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
