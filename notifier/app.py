"""The application object: wires settings, storage, adapters, templates, the pipeline
and its Dramatiq actors; it holds no logic of its own.

Built once per process (worker, API, demo, tests). Actors are bound to this app's
broker rather than to Dramatiq's global one, so tests can build several apps. Workers'
entry points add the retention job (:func:`notifier.ops.retention.add_retention_job`).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from notifier.adapter import Adapter, AdapterContext, TemplatePart
from notifier.amqp import QueuePolicy, broker_user
from notifier.brokers import NotifierRabbitmqBroker
from notifier.costs import PriceTable
from notifier.logging import get_logger
from notifier.pipeline.actors import Actors, queue_name
from notifier.pipeline.agencies import AgencyRegistry, AgencyRegistryError
from notifier.pipeline.bridge import EventBridge, ingest_arguments
from notifier.pipeline.budget import BudgetGuard, cost_zone
from notifier.pipeline.callbacks import CallbackSender, StatusIntake
from notifier.pipeline.deadletters import DeadLetterRecorder, DeadLetters
from notifier.pipeline.fallback import Fallback
from notifier.pipeline.gate import SendGate
from notifier.pipeline.inbound import InboundDispatcher, ReplyTemplates
from notifier.pipeline.ingest import Ingest
from notifier.pipeline.planning import Planner
from notifier.pipeline.protection import ProviderGuard
from notifier.pipeline.relay import StatusRelay
from notifier.pipeline.rendering import TemplateSet
from notifier.pipeline.routing import Routing
from notifier.pipeline.segments import segment_problems
from notifier.pipeline.sending import Sender
from notifier.pipeline.sweeper import Sweeper
from notifier.plugins.registry import Registry
from notifier.plugins.runtime import AdapterRuntime
from notifier.settings import ENV_PREFIX, Settings, SettingsError
from notifier.store import Database
from notifier.store.callbacks import CallbackStore
from notifier.store.counters import MetricCounters
from notifier.store.deliveries.costs import CostLog
from notifier.store.deliveries.lifecycle import DeliveryStore
from notifier.store.inbound import InboundStore
from notifier.store.inbox import InboxStore
from notifier.store.optouts import OptOutStore
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
        return NotifierRabbitmqBroker(settings.broker_url, QueuePolicy.of(settings))
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
        if "sms" in channels:
            # Each SMS segment is billed: templates over their status's budget stop
            # start-up, like a broken template.
            too_long = segment_problems(self.templates, settings.sms_length)
            if too_long:
                raise SettingsError(too_long)
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
        self.planner = Planner(
            database=self.database,
            routing=self.routing,
            templates=self.templates,
            recipient_kinds={c: p[0].adapter_class.recipient_kind for c, p in channels.items()},
            hash_key=settings.recipient_hash_key.get_secret_value(),
            agencies=self.agencies,
            quiet_hours=settings.choice.quiet_hours,
            secret_key=settings.secret_key.get_secret_value(),
            budget=BudgetGuard(
                CostLog(self.database),
                settings.costs.budgets,
                self.routing.budget,
                cost_zone(settings.costs.timezone),
            ),
        )
        self.ingest = Ingest(
            database=self.database,
            deliveries=self.deliveries,
            planner=self.planner,
            max_event_bytes=settings.events.max_bytes,
            authoriser=self.authoriser,
            agencies=self.agencies,
        )
        self.fallback = Fallback(self.planner, self.deliveries)
        self.prices = PriceTable.from_settings(settings.costs)
        self.tokens = TokenStore(self.database, settings.secret_key.get_secret_value())
        self.callbacks = CallbackStore(self.database, settings.secret_key.get_secret_value())
        self.runtime = AdapterRuntime(
            self.registry, context or AdapterContext(inbox=self.inbox, tokens=self.tokens)
        )
        self.guard = ProviderGuard(
            self.database,
            {
                p.name: settings.provider_policy(p.name, _published_rate(p.adapter_class))
                for p in self.registry.all_providers()
            },
            processes=settings.worker.processes,
            limits=settings.limits,
        )
        self.gate = SendGate(
            database=self.database,
            store=self.deliveries,
            routing=self.routing,
            frequency_caps=settings.choice.frequency_caps,
            quiet_hours=settings.choice.quiet_hours,
        )
        self.sender = Sender(
            gate=self.gate,
            store=self.deliveries,
            registry=self.registry,
            runtime=self.runtime,
            worker=settings.worker,
            guard=self.guard,
            uncertain_send={
                name: policy.uncertain_send
                for name, policy in settings.providers.items()
                if policy.uncertain_send is not None
            },
            prices=self.prices,
        )
        self.broker = broker or build_broker(settings)
        self.actors = Actors(
            self.broker,
            settings.worker,
            channels,
            ingest=self.ingest,
            sender=self.sender,
            fallback=self.fallback,
        )
        self.ingest_actor = self.actors.ingest_actor
        self.deliver_actors = self.actors.deliver_actors
        self.enqueue_deliveries = self.actors.enqueue_deliveries
        self.broker.add_middleware(_AdapterLifecycle(self.runtime))
        # Citizens' messages: one dispatcher for every channel whose adapter reads them.
        hash_key = settings.recipient_hash_key.get_secret_value()
        self.opt_outs = OptOutStore(self.database, hash_key)
        self.inbound_store = InboundStore(self.database)
        self.inbound = InboundDispatcher(
            store=self.inbound_store,
            opt_outs=self.opt_outs,
            templates=ReplyTemplates(settings.config_dir / "templates", channels),
            settings=settings.inbound,
            hash_key=hash_key,
            recipient_kinds={c: p[0].adapter_class.recipient_kind for c, p in channels.items()},
            enqueue=self.actors.enqueue_deliveries,
            agencies=self.agencies,
            default_language=settings.default_language,
        )
        self.sweeper = Sweeper(
            self.deliveries,
            settings.sweeper,
            self.enqueue_deliveries,
            fold_counters=MetricCounters(self.database).fold_all,
        )
        self.broker.add_middleware(self.sweeper)
        # The status stream needs RabbitMQ; in the embedded mode nothing is published
        # and retention prunes the outbox (notifier.ops.retention).
        self.status_relay: StatusRelay | None = None
        # Publishers' callbacks: due rows sent from the database by every worker process;
        # status messages consumed into those rows where there is a status exchange.
        self.callback_sender = CallbackSender(self.callbacks, settings.callbacks)
        self.broker.add_middleware(self.callback_sender)
        self.dead_letters: DeadLetters | None = None
        if settings.uses_rabbitmq and isinstance(self.broker, RabbitmqBroker):
            policy = QueuePolicy.of(settings)
            self.broker.add_middleware(
                EventBridge(settings.broker_url, settings.events, self.ingest_actor, policy)
            )
            # What RabbitMQ dead-letters (a poison message, retries run out) becomes a
            # rejected event or a dead letter in the delivery log.
            self.dead_letters = DeadLetters(
                ingest=self.ingest,
                deliveries=self.deliveries,
                ingest_actor=self.ingest_actor,
                deliver_actors=self.deliver_actors,
                policy=policy,
                service_users=frozenset(
                    {broker_user(settings.broker_url), *settings.events.service_users}
                ),
            )
            self.broker.add_middleware(
                DeadLetterRecorder(
                    settings.broker_url,
                    settings.events,
                    [self.ingest_actor.queue_name]
                    + [a.queue_name for a in self.deliver_actors.values()],
                    self.dead_letters,
                )
            )
            self.status_relay = StatusRelay(self.database, settings.broker_url, settings.statuses)
            self.broker.add_middleware(self.status_relay)
            self.broker.add_middleware(
                StatusIntake(
                    settings.broker_url,
                    settings.statuses.exchange,
                    settings.callbacks,
                    self.callbacks,
                )
            )

    def queue_name(self, name: str) -> str:
        return queue_name(self.settings.worker, name)

    # -- entry points ---------------------------------------------------------------------

    def submit(
        self,
        body: bytes,
        *,
        source: str,
        submitter: Submitter | None = None,
        published_at_ms: int | None = None,
    ) -> None:
        """Hand a raw event to ingest directly (the in-process broker's path, and replay).
        Without a submitter, the event is notifier's own (any agency). ``published_at_ms``:
        when it was published (Unix ms; the API's receipt), if known."""
        self.ingest_actor.send(
            [
                ingest_arguments(
                    body, self.settings.events.max_bytes, submitter, published_at_ms
                )
            ],
            source,
        )

    def channel_parts(self) -> dict[str, tuple[TemplatePart, ...]]:
        return {c: p[0].adapter_class.template_parts for c, p in self.registry.channels.items()}

    def close(self) -> None:
        self.runtime.stop()
        self.guard.close()
        self.sender.journal.close()
        self.broker.close()
        self.database.dispose()
