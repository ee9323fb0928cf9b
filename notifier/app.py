"""The application object: settings, storage, adapters, templates and the Dramatiq actors.

Built once per process (worker, API, demo, tests). Actors are bound to this app's
broker rather than to Dramatiq's global one, so tests can build several apps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from notifier.adapter import Adapter, AdapterContext, TemplatePart
from notifier.logging import get_logger
from notifier.ops.retention import Retention, RetentionJob
from notifier.pipeline.agencies import AgencyRegistry, AgencyRegistryError
from notifier.pipeline.bridge import EventBridge, ingest_arguments
from notifier.pipeline.ingest import Ingest
from notifier.pipeline.protection import ProviderGuard
from notifier.pipeline.rendering import TemplateSet
from notifier.pipeline.routing import Routing
from notifier.pipeline.sending import Sender
from notifier.pipeline.sweeper import Sweeper
from notifier.plugins.registry import Registry
from notifier.plugins.runtime import AdapterRuntime
from notifier.settings import ENV_PREFIX, Settings, SettingsError
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, DeliveryStore
from notifier.store.inbox import InboxStore
from notifier.store.publishers import Authoriser, PublisherIdentity, Submitter
from notifier.store.tokens import TokenStore

log = get_logger(__name__)


class _AdapterLifecycle(Middleware):
    """Close adapters' pools when the worker stops, after in-flight sends finish."""

    def __init__(self, runtime: AdapterRuntime) -> None:
        self.runtime = runtime

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.stop()


def _published_rate(adapter_class: type[Adapter[Any]]) -> tuple[float, int] | None:
    """An adapter's published request limit as (rate per second, burst), if it has one."""
    limit = adapter_class.default_rate_limit
    return None if limit is None else (limit.rate_per_s, limit.burst)


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.uses_rabbitmq:
        return RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    return StubBroker()


class Notifier:
    def __init__(
        self,
        settings: Settings,
        *,
        broker: dramatiq.Broker | None = None,
        registry: Registry | None = None,
        context: AdapterContext | None = None,
    ) -> None:
        self.settings = settings
        self.database = Database(settings.database_url)
        self.inbox = InboxStore(self.database)
        self.deliveries = DeliveryStore(self.database)
        self.registry = registry or Registry.from_settings(settings)
        channels = self.registry.channels
        self.templates = TemplateSet(settings.config_dir / "templates", self.channel_parts())
        for channel, reason in self.registry.disabled.items():
            log.info("channel off", channel=channel, reason=reason)
        self.routing = Routing.load(settings.config_dir / "routing.toml", set(channels))
        if self.routing.skipped_channels:
            log.warning(
                "routing names channels that are not enabled here; they are skipped",
                channels=sorted(self.routing.skipped_channels),
            )
        path = settings.agencies_path
        try:
            self.agencies = None if path is None else AgencyRegistry.load(path)
        except AgencyRegistryError as exc:
            raise SettingsError([f"{ENV_PREFIX}AGENCIES_FILE: {exc}"]) from None
        self.authoriser = Authoriser(
            self.database, PublisherIdentity(settings.events.amqp_identity)
        )
        self.ingest = Ingest(
            database=self.database,
            deliveries=self.deliveries,
            routing=self.routing,
            templates=self.templates,
            recipient_kinds={c: p[0].adapter_class.recipient_kind for c, p in channels.items()},
            max_event_bytes=settings.events.max_bytes,
            hash_key=settings.recipient_hash_key.get_secret_value(),
            authoriser=self.authoriser,
            agencies=self.agencies,
        )
        self.tokens = TokenStore(self.database, settings.secret_key.get_secret_value())
        self.runtime = AdapterRuntime(
            self.registry, context or AdapterContext(inbox=self.inbox, tokens=self.tokens)
        )
        self.sender = Sender(
            store=self.deliveries,
            registry=self.registry,
            runtime=self.runtime,
            worker=settings.worker,
            uncertain_send={
                name: policy.uncertain_send
                for name, policy in settings.providers.items()
                if policy.uncertain_send is not None
            },
        )
        self.guard = ProviderGuard(
            self.database,
            {
                p.name: settings.provider_policy(p.name, _published_rate(p.adapter_class))
                for p in self.registry.all_providers()
            },
            processes=settings.worker.processes,
        )
        self.sender.guard = self.guard
        self.sender.observers.append(self.guard.observe)
        self.broker = broker or build_broker(settings)
        self._declare_actors()
        self.broker.add_middleware(_AdapterLifecycle(self.runtime))
        self.sweeper = Sweeper(
            self.deliveries,
            settings.sweeper,
            self.enqueue_deliveries,
        )
        self.broker.add_middleware(self.sweeper)
        self.broker.add_middleware(RetentionJob(Retention.for_app(self)))  # personal data purge
        if settings.uses_rabbitmq and isinstance(self.broker, RabbitmqBroker):
            self.broker.add_middleware(
                EventBridge(settings.broker_url, settings.events, self.ingest_actor)
            )

    # -- actors ---------------------------------------------------------------------------

    def queue_name(self, name: str) -> str:
        return f"{self.settings.worker.queue_prefix}.{name}"

    def _declare_actors(self) -> None:
        worker = self.settings.worker
        options: dict[str, Any] = {
            "broker": self.broker,
            "min_backoff": worker.min_backoff_ms,
            "max_backoff": worker.max_backoff_ms,
        }

        def ingest(events: list[tuple[str, dict[str, Any]]], source: str) -> None:
            try:
                results = self.ingest.handle_batch(
                    [(raw, meta) for raw, meta in events], source=source
                )
            except Exception:
                if len(events) == 1:
                    raise  # retried with backoff, then dead-lettered with its reason
                # One event's fault must not hold back or dead-letter the others: each
                # goes on alone (those already recorded are dropped as duplicates).
                log.exception("ingest of a group failed; its events go on one by one")
                for item in events:
                    self.ingest_actor.send([item], source)
                return
            self.enqueue_deliveries(d for result in results for d in result.to_enqueue)

        self.ingest_actor: dramatiq.Actor[..., None] = dramatiq.actor(
            actor_name="ingest",
            queue_name=self.queue_name("ingest"),
            max_retries=worker.max_attempts,
            **options,
        )(ingest)
        self.deliver_actors: dict[str, dramatiq.Actor[..., None]] = {}
        for channel in self.registry.channels:
            self.deliver_actors[channel] = dramatiq.actor(
                actor_name=f"deliver_{channel}",
                queue_name=self.queue_name(channel),
                # Attempts and age are bounded in the database (deferrals while every
                # circuit is open do not count); this is only a backstop.
                max_retries=1000,
                **options,
            )(self._deliverer(channel))

    def _deliverer(self, channel: str) -> Callable[[list[str]], None]:
        falls_back = bool(self.routing.fallback_for(channel))

        def deliver(delivery_ids: list[str]) -> None:
            retries: dict[int, list[tuple[UUID, int]]] = {}
            for outcome in self.sender.send([UUID(i) for i in delivery_ids]):
                # Also when nothing was done: a redelivered message after a crash between
                # the failure record and this point still plans the fallback (once).
                if falls_back and outcome.status in (DeliveryStatus.PERMANENT_FAILURE, None):
                    self.enqueue_deliveries(self.ingest.plan_fallback(outcome.delivery_id))
                if outcome.retry_in_ms is not None:
                    # Retries due within the same second travel in one message.
                    retries.setdefault(outcome.retry_in_ms // 1000, []).append(
                        (outcome.delivery_id, outcome.retry_in_ms)
                    )
            for group in retries.values():
                self.enqueue_deliveries(
                    [(delivery_id, channel) for delivery_id, _ in group],
                    delay_ms=max(delay for _, delay in group),
                )

        return deliver

    def enqueue_deliveries(
        self, deliveries: Iterable[tuple[UUID, str]], *, delay_ms: int | None = None
    ) -> None:
        """Put deliveries on their channels' queues (confirmed by RabbitMQ), one message
        per channel and ``worker.batch_size`` deliveries."""
        by_channel: dict[str, list[str]] = {}
        for delivery_id, channel in deliveries:
            by_channel.setdefault(channel, []).append(str(delivery_id))
        size = self.settings.worker.batch_size
        for channel, ids in by_channel.items():
            for start in range(0, len(ids), size):
                self.deliver_actors[channel].send_with_options(
                    args=(ids[start : start + size],), delay=delay_ms
                )

    # -- entry points ---------------------------------------------------------------------

    def submit(self, body: bytes, *, source: str, submitter: Submitter | None = None) -> None:
        """Hand a raw event to ingest directly (the in-process broker's path, and replay).
        Without a submitter, the event is notifier's own (any agency)."""
        self.ingest_actor.send(
            [ingest_arguments(body, self.settings.events.max_bytes, submitter)], source
        )

    def channel_parts(self) -> dict[str, tuple[TemplatePart, ...]]:
        return {c: p[0].adapter_class.template_parts for c, p in self.registry.channels.items()}

    def close(self) -> None:
        self.runtime.stop()
        self.guard.close()
        self.sender.journal.close()
        self.broker.close()
        self.database.dispose()
