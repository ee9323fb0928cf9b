"""Service settings: environment variables prefixed ``NOTIFIER_`` over an optional TOML file.

Nested values use a double underscore, e.g. ``NOTIFIER_WORKER__THREADS=8`` or
``NOTIFIER_ADAPTERS__EMAIL__PASSWORD=...``. The TOML file is
``NOTIFIER_CONFIG_FILE`` if set, else ``<config_dir>/notifier.toml`` if it exists.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from notifier.adapter import UncertainSendPolicy

ENV_PREFIX = "NOTIFIER_"
# Stands in for secrets in development; refused in production (see the validator).
_DEV_SECRET = "notifier-development-only"  # noqa: S105


# The keys production refuses to start without (see key_weakness).
_PRODUCTION_KEYS = ("recipient_hash_key", "secret_key")
GENERATE_KEY_COMMAND = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
MIN_KEY_LENGTH = 32
MIN_KEY_BITS = 112  # NIST SP 800-57's floor for a symmetric key's strength
# Stand-ins people leave in place; a key containing one is refused whatever else it holds.
_PLACEHOLDER_WORDS = (
    _DEV_SECRET,
    "development",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "example",
    "secret",
    "password",
    "notifier",
)


def _normalised_key(value: str) -> str:
    return value.strip().casefold()


def _alphabet_size(text: str) -> int:
    """How many symbols a generator of ``text`` evidently drew from (by class)."""
    if re.fullmatch(r"[0-9a-f]+|[0-9A-F]+", text):
        return 16
    size = 0
    size += 10 if re.search(r"[0-9]", text) else 0
    size += 26 if re.search(r"[a-z]", text) else 0
    size += 26 if re.search(r"[A-Z]", text) else 0
    size += 33 if re.search(r"[^0-9a-zA-Z]", text) else 0
    return max(size, 1)


def _new_symbols(text: str) -> int:
    """Characters that carry news, LZ77-style: a stretch of 3+ characters that repeats
    an earlier one (runs included: "aaaa") counts as one symbol, and a character that
    continues an ascending or descending sequence ("abcd", "4321") counts as none."""
    count, i = 0, 0
    while i < len(text):
        longest = 0
        for start in range(i):
            length = 0
            while i + length < len(text) and text[start + length] == text[i + length]:
                length += 1
            longest = max(longest, length)
        step = ord(text[i]) - ord(text[i - 1]) if i else 0
        if longest >= 3:
            count, i = count + 1, i + longest
        elif i >= 2 and step in (1, -1) and step == ord(text[i - 1]) - ord(text[i - 2]):
            i += 1
        else:
            count, i = count + 1, i + 1
    return count


def key_strength_bits(value: str) -> float:
    """A conservative estimate of a key's entropy: symbols that carry news (see
    ``_new_symbols``) times the bits of the alphabet they evidently come from."""
    import math

    # The first 256 characters are plenty to judge (and keep the quadratic scan short).
    text = value.strip()[:256]
    return _new_symbols(text) * math.log2(_alphabet_size(text)) if text else 0.0


def key_weakness(value: str) -> str | None:
    """Why ``value`` is not a production key, or None when it is fit.

    Compared after stripping whitespace, case-insensitively: a placeholder is refused
    with a space after it or in capitals too."""
    normalised = _normalised_key(value)
    if any(word in normalised for word in _PLACEHOLDER_WORDS):
        return "is a placeholder, not a secret"
    if len(normalised) < MIN_KEY_LENGTH:
        return f"must be at least {MIN_KEY_LENGTH} random characters"
    if key_strength_bits(value) < MIN_KEY_BITS:
        return (
            f"is too predictable (repeats, runs or sequences; under {MIN_KEY_BITS} bits of entropy)"
        )
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventsSettings(_Section):
    """Where TTHC systems publish and how big an event may be."""

    exchange: str = "notifier.events"
    routing_key: str = "dossier.status.v1"
    queue: str = "notifier.events.inbound"
    max_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # The bridge hands events to ingest in groups: one message, one confirm, one
    # transaction per group. Events already waiting join. While the worker process is
    # busy, a group also waits for more, up to ``batch_size`` events or
    # ``batch_wait_ms``; an idle process sends a lone event at once. ``prefetch`` must
    # hold at least one full group.
    prefetch: int = Field(default=200, ge=1, le=10_000)
    batch_size: int = Field(default=100, ge=1, le=1_000)
    batch_wait_ms: int = Field(default=500, ge=0, le=5_000)
    # AMQP publishers are bound to agencies by RabbitMQ's validated user_id (see
    # notifier.store.publishers). "strict" rejects a message without user_id, or from a user
    # with no agencies registered; "lenient" accepts those for any agency with a
    # warning, for the transition of an existing deployment only. A user with
    # registered agencies is always held to them.
    amqp_identity: Literal["strict", "lenient"] = "strict"
    # Broker users that are notifier itself besides the one in NOTIFIER_BROKER_URL (e.g.
    # the API's, if it connects as another user): trusted for every agency, and to name
    # the API key that posted an event. Never a TTHC system's user.
    service_users: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _prefetch_holds_a_batch(self) -> EventsSettings:
        if self.prefetch < self.batch_size:
            raise ValueError(
                "NOTIFIER_EVENTS__PREFETCH must be at least NOTIFIER_EVENTS__BATCH_SIZE"
            )
        return self


class BrokerSettings(_Section):
    """How notifier's RabbitMQ queues are declared (``NOTIFIER_BROKER__...``).

    The nodes themselves are in ``NOTIFIER_BROKER_URL``: one URL, several nodes as
    ``amqp://user:pass@rmq1:5672,rmq2:5672,rmq3:5672/vhost`` (see notifier.amqp)."""

    # quorum: replicated (Raft) queues with a delivery limit, for a cluster and for
    # production; classic: a single development node. Unset: quorum in production,
    # classic in development. A queue's type cannot change in place: moving an existing
    # deployment is `notifier broker migrate-queues` (docs/operations.md).
    queue_type: Literal["quorum", "classic"] | None = None
    # Quorum queues only: deliveries of one message that no consumer settled (its worker
    # died, its connection dropped) before the broker dead-letters it to notifier's
    # dead letters. Failovers and restarts count too, so keep it well above 1.
    delivery_limit: int = Field(default=20, ge=2, le=1_000)


class WorkerSettings(_Section):
    processes: int = Field(default=1, ge=1, le=64)
    threads: int = Field(default=8, ge=1, le=256)
    max_attempts: int = Field(default=8, ge=1, le=50)
    min_backoff_ms: int = Field(default=2_000, ge=10)
    # Dramatiq holds delayed retries unacked in memory; RabbitMQ requeues them after its
    # consumer_timeout (30 min), so broker-held backoff stays well below that.
    max_backoff_ms: int = Field(default=10 * 60_000, ge=100, le=20 * 60_000)
    send_timeout_s: float = Field(default=30.0, gt=0, le=300)
    # A delivery not sent within this age fails ("expired"): news of a dossier a day
    # late is still useful, a week late it misleads.
    max_age_s: float = Field(default=24 * 3600, gt=0)
    queue_prefix: str = Field(default="notifier", pattern=r"^[a-z][a-z0-9_.-]{0,40}$")
    # Deliveries per channel message: claimed in one statement, sent concurrently (up to
    # the adapter's pool), recorded in groups as they finish.
    batch_size: int = Field(default=100, ge=1, le=1_000)
    # Backpressure: no provider call starts while this many results (accepted, or maybe
    # sent) wait to be written, per process. A crash leaves at most this many, plus the
    # calls in flight (the adapters' max_in_flight), sent but unrecorded.
    max_unrecorded: int = Field(default=8, ge=1, le=1_000)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Per caller (API key, else client address) token bucket; see notifier.web.security.
    rate_per_s: float = Field(default=50.0, gt=0)
    burst: int = Field(default=100, ge=1)
    # Reverse proxies (addresses or networks, e.g. ["10.0.0.5", "10.1.0.0/16"]) whose
    # X-Forwarded-For names the client: the client address that rate limits, sign-in
    # throttling and the access log use. From anyone else the header is ignored.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.1.0.0/16)"
                ) from None
        return [item.strip() for item in value]


class ProviderPolicy(_Section):
    """How hard notifier may push one provider (``NOTIFIER_PROVIDERS__<NAME>__...``)."""

    # The provider's own limit for the whole deployment. With NOTIFIER_LIMITS__STORAGE_URL
    # every worker process on every machine draws from one shared limit; without it each
    # process takes its share (rate / worker.processes), for one machine's processes.
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: int = Field(default=10, ge=1)
    # Consecutive temporary failures (or operator alerts) that open the circuit, and for
    # how long calls then stop before one trial call is let through.
    circuit_failures: int = Field(default=5, ge=1)
    circuit_open_s: float = Field(default=30.0, gt=0)
    # What to do when a call's outcome is unknown (the worker died during it, or a
    # read timeout): resend, verify or hold. Unset: the adapter's own default (see its
    # README and docs/reliability.md).
    uncertain_send: UncertainSendPolicy | None = None


_LIMIT_STORAGE_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster", "memory")


class LimitsSettings(_Section):
    """Where provider rate limits are kept (``NOTIFIER_LIMITS__...``): see
    :mod:`notifier.pipeline.sharedlimit` and docs/deployment.md."""

    # redis://[:password@]host:6379/0 (also rediss://, redis+sentinel://, redis+cluster://):
    # one limit per provider shared by every worker process on every machine. Unset:
    # each process keeps its own share (rate / worker.processes), as on one machine.
    # memory:// shares within one process only (tests).
    storage_url: str | None = None
    # Keys are "<key_prefix>/..." so several deployments (or tests) share one Redis.
    key_prefix: str = Field(default="notifier", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Each call to the backend gives up after this long; the backend then counts as down.
    timeout_s: float = Field(default=0.5, gt=0, le=10)
    # While the backend is down: unset, rate-limited providers get no calls (sends wait
    # and come back, never past the provider's limit); N, each process sends at
    # rate / N on its own, where N is the number of worker processes on every machine
    # together (so the total still stays within the limit).
    fallback_processes: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("storage_url")
    @classmethod
    def _known_storage(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in _LIMIT_STORAGE_SCHEMES:
            raise ValueError(
                "must be a redis://, rediss://, redis+sentinel://, redis+cluster:// "
                "or memory:// URL"
            )
        return value.strip()


class SweeperSettings(_Section):
    """Re-enqueues deliveries whose message was lost (a crash between record and enqueue)."""

    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0)
    # Longer than any broker-held retry delay, so a pending retry is not swept too.
    stale_after_s: float = Field(default=15 * 60, gt=0)
    batch: int = Field(default=500, ge=1)


class StatusSettings(_Section):
    """The status stream (notifier.pipeline.relay, docs/events.md "Learning what happened"):
    the outbox relay each worker runs, and the publishers' own status queues."""

    enabled: bool = True
    exchange: str = "notifier.statuses"
    # A publisher's own queue is "<queue_prefix>.<its broker user>" (broker add-publisher).
    queue_prefix: str = "notifier.statuses"
    # The relay wakes on PostgreSQL's NOTIFY at once; it also looks every interval_s
    # (SQLite has no NOTIFY; a notification can be missed while reconnecting).
    interval_s: float = Field(default=5.0, gt=0, le=300)
    batch: int = Field(default=200, ge=1, le=5_000)
    # Published outbox rows are pruned this long after publication (retention job).
    keep_published_days: float = Field(default=2, gt=0)


class ChoiceSettings(_Section):
    """Switches for the rules around a citizen's choice (the rules themselves are in
    config/routing.toml: quiet hours, frequency caps; see docs/templates.md). Off only
    for a benchmark or a test that must not depend on the wall clock."""

    quiet_hours: bool = True
    frequency_caps: bool = True


class RetentionSettings(_Section):
    """How long personal data is kept (see notifier.ops.retention and docs/security.md)."""

    enabled: bool = True
    # Full contacts, message bodies and event payloads; counts and statuses stay.
    deliveries_days: float = Field(default=30, gt=0)
    inbox_days: float = Field(default=180, gt=0)
    receipt_nonces_days: float = Field(default=7, gt=0)
    interval_s: float = Field(default=3600, gt=0)
    batch: int = Field(default=1000, ge=1)


class RollupSettings(_Section):
    """The hourly rollup reports read (notifier.store.deliveries.rollups): each worker
    process recomputes changed hours and rolls up settled ones every interval_s, at most
    max_hours hours per run (a long backlog is caught up over several runs)."""

    enabled: bool = True
    interval_s: float = Field(default=60.0, gt=0)
    max_hours: int = Field(default=48, ge=1, le=10_000)


class CallbackSettings(_Section):
    """Publishers' signed HTTP callbacks (see notifier.pipeline.callbacks, docs/events.md)."""

    enabled: bool = True
    # Our queue, bound to every key of the status exchange (``statuses.exchange``, where
    # the outbox relay publishes); a message that is not a status message goes to
    # ``<queue>.invalid`` with the reason in the log.
    queue: str = "notifier.callbacks"
    prefetch: int = Field(default=100, ge=1, le=10_000)
    # Each worker process's sender: due callbacks claimed per round, requests at once,
    # and how often it looks when nothing was due.
    batch: int = Field(default=50, ge=1, le=1_000)
    concurrency: int = Field(default=8, ge=1, le=64)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Backoff after a failed try: min * 2^(tries - 1), at most max, each jittered down to
    # half at random; a receiver's Retry-After (429/503) is honoured instead, up to an hour.
    min_backoff_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=3600.0, gt=0)
    # A callback still undelivered this long after its status arrived is a dead letter
    # (shown in the console and `notifier callbacks dead-letters`; an admin may replay).
    max_age_s: float = Field(default=3 * 86400, gt=0)
    # Delivered callbacks are forgotten after this long (they hold no contacts).
    keep_delivered_days: float = Field(default=7, gt=0)
    # SSRF: networks that callbacks may reach although not public (e.g. the TTHC
    # systems' LAN, "10.20.0.0/16"); cloud metadata addresses only if listed exactly
    # (a /32). Plain http is refused unless allow_http, and then only to these networks.
    allowed_networks: list[str] = Field(default_factory=list)
    allow_http: bool = False

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.20.0.0/16)"
                ) from None
        return [item.strip() for item in value]

    @model_validator(mode="after")
    def _backoff_order(self) -> CallbackSettings:
        if self.min_backoff_s > self.max_backoff_s:
            raise ValueError(
                "NOTIFIER_CALLBACKS__MIN_BACKOFF_S must not exceed "
                "NOTIFIER_CALLBACKS__MAX_BACKOFF_S"
            )
        return self


class InboundSettings(_Section):
    """Citizens' inbound messages (TRA CUU, STOP, ...): notifier.pipeline.inbound.

    Per sender (phone number or Zalo user id), messages are counted in fixed windows
    that start with the sender's first message and last ``window_s``. The first
    ``max_replies`` messages of a window are answered; the next one gets one "too many
    messages" reply; the rest of the window none (stored and counted, not answered).
    So a flood from one number costs at most ``max_replies + 1`` replies a window.
    """

    max_replies: int = Field(default=10, ge=1, le=1000)
    window_s: float = Field(default=3600.0, ge=60, le=7 * 86_400)


class ChannelSettings(_Section):
    """Which installed adapters serve a channel, in failover order."""

    providers: list[str] = Field(default_factory=list)
    enabled: bool = True


class ProviderPrice(_Section):
    """What one provider charges, in VND (``[costs.prices.<provider>]``).

    SMS gateways bill per segment, some by carrier: ``carriers`` (``viettel``,
    ``mobifone``, ``vinaphone``, ``vietnamobile``, ``gmobile``, ``reddi``, ``itel``)
    over ``per_segment_vnd``. Zalo bills per message: ``per_message_vnd`` to a phone
    number (ZNS), ``per_uid_message_vnd`` to a Zalo user id (ZBS by UID). Email and
    the portal inbox are usually 0; a provider with no price has no cost recorded."""

    per_segment_vnd: Decimal | None = Field(default=None, ge=0)
    carriers: dict[str, Decimal] = Field(default_factory=dict)
    per_message_vnd: Decimal | None = Field(default=None, ge=0)
    per_uid_message_vnd: Decimal | None = Field(default=None, ge=0)

    @field_validator("carriers")
    @classmethod
    def _non_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        negative = [carrier for carrier, price in value.items() if price < 0]
        if negative:
            raise ValueError(f"prices must not be negative: {', '.join(negative)}")
        return {carrier.strip().lower(): price for carrier, price in value.items()}


class CostSettings(_Section):
    """Prices per provider and monthly budgets per agency (see notifier.costs)."""

    prices: dict[str, ProviderPrice] = Field(default_factory=dict)
    # Agency code -> monthly budget in VND. Alerts at 80% and 100% (metric and console);
    # what routing does at 100% is config/routing.toml's [budget] at_limit.
    budgets: dict[str, Decimal] = Field(default_factory=dict)
    # Months (reports, budgets) begin at midnight on the 1st in this zone.
    timezone: str = "Asia/Ho_Chi_Minh"

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        bad = [agency for agency, budget in value.items() if budget <= 0]
        if bad:
            raise ValueError(f"budgets must be positive VND amounts: {', '.join(bad)}")
        return value


class SmsLengthSettings(_Section):
    """SMS segment budgets per status, checked against the SMS templates at start-up
    (``[sms_length]``; see notifier.pipeline.segments)."""

    # Segments any status's SMS may take; ``segments`` sets stricter (or looser) ones
    # per status name, e.g. { received = 1, processing = 1 }.
    default_segments: int = Field(default=2, ge=1, le=10)
    segments: dict[str, int] = Field(default_factory=dict)
    # Measure as UCS-2 with diacritics (70 a segment) rather than unaccented GSM-7 (160):
    # set it when the SMS gateways are set to Unicode.
    unicode: bool = False

    @field_validator("segments")
    @classmethod
    def _at_least_one(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [status for status, n in value.items() if not 1 <= n <= 10]
        if bad:
            raise ValueError(f"segment budgets are 1 to 10: {', '.join(bad)}")
        return value

    def budget_for(self, status: str) -> int:
        return self.segments.get(status, self.default_segments)


class Settings(BaseSettings):
    """All of notifier's settings, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    environment: Literal["development", "production"] = "development"
    broker_url: str = Field(
        default="memory://",
        description="amqp://user:pass@host:5672/vhost for RabbitMQ, or memory:// (in-process).",
    )
    database_url: str = Field(
        default="sqlite:///notifier.db",
        description=(
            "postgresql+psycopg://... in production (several hosts for failover: "
            "postgresql://u:pw@pg1:5432,pg2:5432/notifier?target_session_attrs=read-write); "
            "sqlite:///file.db embedded."
        ),
    )
    config_dir: Path = Path("config")
    agencies_file: Path | None = Field(
        default=None,
        description=(
            "Registry of agencies (TOML, code -> official names); relative to config_dir. "
            "When set, unknown agency codes are rejected and names come from it."
        ),
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    default_language: Literal["vi", "en"] = "vi"
    recipient_hash_key: SecretStr = Field(
        default=SecretStr(_DEV_SECRET),
        description="HMAC key for searchable recipient hashes; set a secret one in production.",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(_DEV_SECRET),
        description=(
            "Encrypts stored provider tokens, callback signing secrets and portal accounts' "
            "Zalo user ids; set a secret one in production."
        ),
    )

    events: EventsSettings = Field(default_factory=EventsSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    channels: dict[str, ChannelSettings] = Field(default_factory=dict)
    providers: dict[str, ProviderPolicy] = Field(default_factory=dict)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    sweeper: SweeperSettings = Field(default_factory=SweeperSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    rollup: RollupSettings = Field(default_factory=RollupSettings)
    statuses: StatusSettings = Field(default_factory=StatusSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    choice: ChoiceSettings = Field(default_factory=ChoiceSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    sms_length: SmsLengthSettings = Field(default_factory=SmsLengthSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    adapters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Raw settings per adapter name; each adapter validates its own.",
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://", "memory://")):
            raise ValueError("must start with amqp://, amqps:// or memory://")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        return database_url_for_sqlalchemy(value)

    @model_validator(mode="after")
    def _no_development_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            keys = {name: getattr(self, name).get_secret_value() for name in _PRODUCTION_KEYS}
            weak = [
                f"{ENV_PREFIX}{name.upper()} {weakness}"
                for name, weakness in ((n, key_weakness(v)) for n, v in keys.items())
                if weakness is not None
            ]
            if weak:
                raise ValueError(
                    "; ".join(weak) + f" in production; generate each key with: "
                    f"{GENERATE_KEY_COMMAND}"
                )
            if len({_normalised_key(value) for value in keys.values()}) < len(keys):
                raise ValueError(
                    f"{ENV_PREFIX}SECRET_KEY and {ENV_PREFIX}RECIPIENT_HASH_KEY must be two "
                    f"different keys in production; generate each with: {GENERATE_KEY_COMMAND}"
                )
        return self

    def provider_policy(
        self, name: str, default_rate: tuple[float, int] | None = None
    ) -> ProviderPolicy:
        """The policy for one provider: as configured, with the adapter's published
        rate limit ``default_rate`` (rate per second, burst) where none is configured."""
        policy = self.providers.get(name) or ProviderPolicy()
        if default_rate is None or "rate_per_s" in policy.model_fields_set:
            return policy
        rate_per_s, burst = default_rate
        if "burst" in policy.model_fields_set:
            burst = policy.burst
        return policy.model_copy(update={"rate_per_s": rate_per_s, "burst": burst})

    @model_validator(mode="after")
    def _sweeper_after_retries(self) -> Settings:
        if self.sweeper.stale_after_s * 1000 <= self.worker.max_backoff_ms:
            raise ValueError(
                "NOTIFIER_SWEEPER__STALE_AFTER_S must be longer than "
                "NOTIFIER_WORKER__MAX_BACKOFF_MS, or pending retries would be swept"
            )
        return self

    @property
    def agencies_path(self) -> Path | None:
        if self.agencies_file is None:
            return None
        return (
            self.agencies_file
            if self.agencies_file.is_absolute()
            else (self.config_dir / self.agencies_file)
        )

    @property
    def queue_type(self) -> Literal["quorum", "classic"]:
        """The queue type in force: as set, else quorum in production, classic in
        development."""
        if self.broker.queue_type is not None:
            return self.broker.queue_type
        return "quorum" if self.environment == "production" else "classic"

    @property
    def uses_rabbitmq(self) -> bool:
        return self.broker_url.startswith(("amqp://", "amqps://"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        sources.append(file_secret_settings)
        return tuple(sources)


def _config_file() -> Path | None:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SettingsError([f"{ENV_PREFIX}CONFIG_FILE: no such file: {path}"])
        return path
    config_dir = Path(os.environ.get(f"{ENV_PREFIX}CONFIG_DIR", "config"))
    default = config_dir / "notifier.toml"
    return default if default.is_file() else None


def database_url_for_sqlalchemy(url: str) -> str:
    """A database URL as SQLAlchemy takes it: psycopg 3 as the driver, and libpq's
    several hosts (``postgresql://u:pw@pg1:5432,pg2:5432/notifier?target_session_attrs=
    read-write``) moved into ``host=`` query parameters, which SQLAlchemy hands to libpq
    as one multi-host connection string (libpq tries them in order and keeps the first
    that is read-write). SQLite URLs and single-host URLs are kept as they are."""
    if not url.startswith("postgresql"):
        return url
    scheme, _, rest = url.partition("://")
    if scheme == "postgresql":
        scheme = "postgresql+psycopg"  # one driver everywhere: psycopg 3
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return f"{scheme}://{rest}"
    path, _, query = tail.partition("?")
    params = [f"host={host.strip()}" for host in hosts.split(",") if host.strip()]
    joined = "&".join([*params, query] if query else params)
    return f"{scheme}://{userinfo}{at}{path or '/'}?{joined}"


class SettingsError(Exception):
    """Settings that cannot start the service; one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


def _env_name(location: tuple[int | str, ...]) -> str:
    if not location:
        return "settings"  # a check across fields; its message names the variables
    return ENV_PREFIX + "__".join(str(part).upper() for part in location)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one line per bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{_env_name(error['loc'])}: {error['msg']}"
            + (f" (got {error['input']!r})" if _safe_to_echo(error) else "")
            for error in exc.errors()
        ]
        raise SettingsError(problems) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{_config_file()}: not valid TOML: {exc}"]) from None
    except SourceError as exc:
        # e.g. 'error parsing value for field "worker" from source "EnvSettingsSource"'
        match = re.search(r'field "([^"]+)"', str(exc))
        name = ENV_PREFIX + (match.group(1).upper() if match else "*")
        raise SettingsError(
            [f"{name}: not valid JSON; give JSON, or set {name}__<KEY> variables instead"]
        ) from None


def _safe_to_echo(error: Any) -> bool:
    """Echo simple bad values, never anything under a name that may hold a secret."""
    name = " ".join(str(part).lower() for part in error["loc"])
    secretish = any(word in name for word in ("password", "secret", "key", "token", "url"))
    return not secretish and isinstance(error.get("input"), str | int | float | bool)
