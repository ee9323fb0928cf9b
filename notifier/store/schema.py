"""Tables. Changes here need a migration in ``notifier/migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back time-zone aware (SQLite drops it)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.Uuid, primary_key=True),
    # Indexed for the retention purge, which clears payloads oldest first.
    sa.Column("received_at", UTCDateTime, nullable=False, index=True),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("source_system", sa.String(64), nullable=False),
    sa.Column("agency_code", sa.String(64), nullable=False),
    sa.Column("dossier_code", sa.String(64), nullable=False, index=True),
    sa.Column("procedure_code", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    # The event as received; personal data, purged after the retention period.
    sa.Column("payload", sa.JSON, nullable=True),
    # Copies received again after it was accepted (each one announced as event.duplicate).
    sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"),
    # When its publisher published it (the bridge reads our publishers' header, or the
    # AMQP timestamp): the start of /metrics' publish -> accepted latency. None when
    # unknown (then received_at stands for it, as for events the API took directly).
    sa.Column("published_at", UTCDateTime, nullable=True),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", sa.Uuid, primary_key=True),
    # (Found by event through uq_deliveries_key, which leads with event_id: migration 0019.)
    sa.Column("event_id", sa.Uuid, sa.ForeignKey("events.event_id"), nullable=False),
    sa.Column("dossier_code", sa.String(64), nullable=False, index=True),
    sa.Column("agency_code", sa.String(64), nullable=False),
    sa.Column("procedure_code", sa.String(64), nullable=False),
    sa.Column("event_status", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(64), nullable=True),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("template", sa.String(128), nullable=False),
    sa.Column("recipient_masked", sa.String(128), nullable=False),
    # HMAC of the normalised recipient: searchable without keeping it in clear.
    sa.Column("recipient_hash", sa.String(64), nullable=False),  # ix_deliveries_cap leads with it
    # Full recipient and rendered parts; purged after the retention period.
    sa.Column("recipient", sa.String(320), nullable=True),
    sa.Column("content", sa.JSON, nullable=True),
    sa.Column("status", sa.String(24), nullable=False),  # ix_deliveries_held_due leads with it
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("provider_message_id", sa.String(128), nullable=True, index=True),
    sa.Column("last_error", sa.Text, nullable=True),
    # A permanent failure that used up its retries (a dead letter an admin may replay),
    # as against one the provider refused outright. False in every other status.
    sa.Column("exhausted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    # The dispatch mark: a provider call of this attempt may have started (written
    # before the call, cleared when its outcome is recorded). A claim that finds it set
    # knows the last call's outcome is unknown and applies the provider's policy.
    sa.Column("dispatch_provider", sa.String(64), nullable=True),
    sa.Column("dispatch_attempt", sa.Integer, nullable=True),
    # Set on a fallback delivery (e.g. SMS after Zalo failed): the delivery it replaces.
    sa.Column("fallback_of", sa.Uuid, nullable=True, index=True),
    # What the delivery cost (notifier.costs): SMS segments billed, the amount in VND,
    # and whether that is our price table's estimate or the provider's reported charge.
    sa.Column("segments", sa.Integer, nullable=True),
    sa.Column("cost_vnd", sa.Numeric(14, 2), nullable=True),
    sa.Column("cost_source", sa.String(16), nullable=True),
    # Set on a delivery coalesced away (status superseded): the one sent in its place.
    sa.Column("superseded_by", sa.Uuid, nullable=True, index=True),
    # A held delivery (status "scheduled"): when it is due, and why it waits
    # (notifier.store.deliveries.lifecycle.HoldReason). The reason stays after release.
    sa.Column("due_at", UTCDateTime, nullable=True),
    sa.Column("hold_reason", sa.String(32), nullable=True),
    sa.Index("ix_deliveries_held_due", "status", "due_at"),
    # The citizen's choices (notifier.store.preferences): the keyed hash of the event's
    # portal account id (preferences set on the account apply to all its deliveries);
    # why a delivery was suppressed (SuppressReason); the keyed hash of its channel,
    # recipient and rendered text (identical messages are sent once per window); and
    # when it passed the send-time gate (what a frequency cap counts).
    sa.Column("account_hash", sa.String(64), nullable=True),
    sa.Column("suppressed_reason", sa.String(32), nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Column("counted_at", UTCDateTime, nullable=True),
    sa.Index("ix_deliveries_cap", "recipient_hash", "channel", "counted_at"),
    # Dead letters (the /metrics gauge, the replay backlog): only the exhausted rows, a
    # column the send path leaves unchanged, so sends keep their HOT updates.
    sa.Index(
        "ix_deliveries_dead_letters",
        "channel",
        postgresql_where=sa.text("exhausted"),
        sqlite_where=sa.text("exhausted"),
    ),
    # The idempotency key: one delivery per event, channel and recipient.
    sa.UniqueConstraint("event_id", "channel", "recipient_hash", name="uq_deliveries_key"),
    # Room on each page for the dispatch mark's HOT update (migration 0019).
    postgresql_with={"fillfactor": 85},
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("attempt_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.Uuid,
        sa.ForeignKey("deliveries.delivery_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("provider", sa.String(64), nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=False),
    sa.Column("outcome", sa.String(24), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("provider_message_id", sa.String(128), nullable=True),
)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("reject_id", sa.Uuid, primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False, index=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("errors", sa.JSON, nullable=True),
    sa.Column("event_id", sa.String(64), nullable=True),
    # For reading: the body as text (invalid UTF-8 shown as U+FFFD). Replay uses
    # payload_raw, the bytes received, so it never replays an altered event.
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("payload_raw", sa.LargeBinary, nullable=True),
    sa.Column("payload_bytes", sa.Integer, nullable=False),
    sa.Column("replayed_at", UTCDateTime, nullable=True),
    # Who submitted it (see notifier.store.publishers): replay re-checks their scope.
    sa.Column("submitter_kind", sa.String(16), nullable=True),
    sa.Column("submitter_name", sa.String(100), nullable=True),
    sa.Column("submitter_id", sa.String(64), nullable=True),
    sa.Column("submitter_agencies", sa.JSON, nullable=True),
    # Why the last replay was refused (it stays a reject), shown to operators.
    sa.Column("replay_refusal", sa.Text, nullable=True),
    # What could be read of the event (None when it could not): kept after the payload
    # is purged, so the publisher still finds its reject by event id or dossier.
    sa.Column("agency_code", sa.String(64), nullable=True),
    sa.Column("dossier_code", sa.String(64), nullable=True, index=True),
    sa.Index("ix_rejected_events_event_id", "event_id"),
)

inbox_notifications = sa.Table(
    "inbox_notifications",
    metadata,
    sa.Column("notification_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("agency_code", sa.String(64), nullable=False),
    sa.Column("dossier_code", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("link", sa.String(500), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("read_at", UTCDateTime, nullable=True),
    sa.Index("ix_inbox_account_newest", "account_id", "notification_id"),
)

api_clients = sa.Table(
    "api_clients",
    metadata,
    sa.Column("client_id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("agencies", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

# The agencies each RabbitMQ publisher user may publish for (its validated user_id).
broker_publishers = sa.Table(
    "broker_publishers",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("agencies", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

provider_tokens = sa.Table(
    "provider_tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # Fernet-encrypted with a key derived from NOTIFIER_SECRET_KEY.
    sa.Column("access_token", sa.Text, nullable=True),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

operators = sa.Table(
    "operators",
    metadata,
    sa.Column("operator_id", sa.Uuid, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    # scrypt, with its parameters and salt, in one string (see notifier.web.console auth).
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # "viewer" or "admin"
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
)

# A signed-in console session, by the SHA-256 of the random id its cookie carries:
# deleted on sign-out, and all of an operator's on a password change or when the
# account is disabled, so a copied cookie is worth nothing after any of them.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    sa.Column(
        "operator_id",
        sa.Uuid,
        sa.ForeignKey("operators.operator_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# The latest known state of each provider, written by workers on changes, read by the
# console and metrics (circuit state lives per worker process; this is the last word).
provider_health = sa.Table(
    "provider_health",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("circuit_state", sa.String(16), nullable=False),  # closed | open | half-open
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_until", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),  # e.g. ZNS daily quota left
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The latest outcomes any process saw (written every few seconds at most), and when
    # the circuit last opened: the state shown is derived from them, so an "open" left
    # by a worker that died does not outlive the next success elsewhere.
    sa.Column("opened_at", UTCDateTime, nullable=True),
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
)

# Receipts already taken, so a replayed webhook is refused.
receipt_nonces = sa.Table(
    "receipt_nonces",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False, index=True),
)

# How far the retention purge has cleared each table (notifier.ops.retention): every
# row older than ``cleared_before`` has had its personal data cleared, so a purge starts
# there instead of walking past the days cleared before (rows stay for counts).
retention_marks = sa.Table(
    "retention_marks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("cleared_before", UTCDateTime, nullable=False),
)

# A citizen's opt-out from a channel, by keyed recipient hash.
opt_outs = sa.Table(
    "opt_outs",
    metadata,
    sa.Column("recipient_hash", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(32), nullable=False),  # sms-stop, portal, operator
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The record of status changes (notifier.store.statuses): one row per change, written in
# the transaction that makes the change, published to the status stream by the relay
# (at least once, ``change_id`` the dedupe key) and pruned once published and old.
# ``sequence`` is the row's own number: it grows with each change of one delivery
# (changes of one row are serialised by its lock), so a receiver drops stale ones.
status_outbox = sa.Table(
    "status_outbox",
    metadata,
    sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("change_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("type", sa.String(48), nullable=False),
    sa.Column("agency_code", sa.String(64), nullable=True),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    # The message as it will be published (no contact in clear: recipients masked).
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=True),
    # A send's outcome (a provider's answer, or retries given up), as against a receipt
    # or an admin's decision: the metric counters count its retries and its latency.
    sa.Column("send_outcome", sa.Boolean, nullable=False, server_default=sa.false()),
    # Added to the metric counters (notifier.store.counters); retention keeps the row
    # until it is, so no change goes uncounted.
    sa.Column("folded", sa.Boolean, nullable=False, server_default=sa.false()),
    # Pending rows, oldest first: what the relay reads.
    sa.Index(
        "ix_status_outbox_pending",
        "sequence",
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    ),
    # Rows not yet folded into the counters, oldest first: what the folders read.
    sa.Index(
        "ix_status_outbox_unfolded",
        "sequence",
        postgresql_where=sa.text("NOT folded"),
        sqlite_where=sa.text("NOT folded"),
    ),
)

# Monotonic counters behind /metrics (notifier.store.counters): one row per metric and
# label values (a JSON array), raised by folding status_outbox rows, never lowered, so
# a scrape reads a few rows whatever the size of the log, and a counter never drops.
metric_counters = sa.Table(
    "metric_counters",
    metadata,
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("labels", sa.String(400), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)

# A publisher's callback: its URL and signing secrets (Fernet-encrypted, a JSON list,
# newest first: two during a rotation), and its health as the senders last saw it.
# The publisher is an API key or a broker user, by kind and name (its agencies are
# read from api_clients / broker_publishers when a status arrives).
callback_targets = sa.Table(
    "callback_targets",
    metadata,
    sa.Column("target_id", sa.Uuid, primary_key=True),
    sa.Column("publisher_kind", sa.String(16), nullable=False),
    sa.Column("publisher_name", sa.String(100), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secrets", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.UniqueConstraint("publisher_kind", "publisher_name", name="uq_callback_targets_publisher"),
)

# Who may hear the status stream changed: one row, its version raised (by triggers, in
# the changing transaction) whenever a callback target, an API key or a broker
# publisher is added, removed, or changes what decides who hears what. The callback
# intake keeps the audience it read with this version and reads it again only when the
# version moved (notifier.store.callbacks.AudienceCache). Migration 0020.
callback_audience = sa.Table(
    "callback_audience",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

# One status message to one publisher: written when the message is consumed (once per
# message id and target), sent when due. ``due_at`` is also the lease: a sender that
# claims the row moves it past the send's timeout, so a sender that dies leaves it due
# again. ``window_start`` starts the give-up age (reset by an admin's replay).
callback_deliveries = sa.Table(
    "callback_deliveries",
    metadata,
    sa.Column("callback_id", sa.Uuid, primary_key=True),
    sa.Column("message_id", sa.String(100), nullable=False),
    sa.Column(
        "target_id",
        sa.Uuid,
        sa.ForeignKey("callback_targets.target_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("agency", sa.String(64), nullable=True),
    sa.Column("sequence", sa.BigInteger, nullable=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("dead_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.UniqueConstraint("message_id", "target_id", name="uq_callback_deliveries_key"),
    sa.Index("ix_callback_deliveries_due", "status", "due_at"),
)

# A citizen's preferences, by the keyed hash of one identity (a portal account id, a
# phone in +84 form or an email: the hash opt-outs and the delivery log use), never in
# clear. Channels listed in channels_off are not used (the portal inbox cannot be
# turned off); language and quiet_hours None: the event's language, quiet hours on.
preferences = sa.Table(
    "preferences",
    metadata,
    sa.Column("identity_hash", sa.String(64), primary_key=True),
    sa.Column("identity_kind", sa.String(16), nullable=False),  # account, phone, email
    sa.Column("channels_off", sa.JSON, nullable=False),
    sa.Column("language", sa.String(8), nullable=True),
    sa.Column("quiet_hours", sa.Boolean, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(100), nullable=False),
    # A portal account's Zalo user id (ZBS by UID, the cheapest Zalo send), set by the
    # portal: personal data, so Fernet-encrypted with a key derived from
    # NOTIFIER_SECRET_KEY like provider tokens. Only on identities of kind account.
    sa.Column("zalo_user_id", sa.Text, nullable=True),
)

# Every change of preferences: who (the API key's name), when, and the values before
# and after (no contact in clear: only the identity's hash).
preference_changes = sa.Table(
    "preference_changes",
    metadata,
    sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("identity_hash", sa.String(64), nullable=False, index=True),
    sa.Column("identity_kind", sa.String(16), nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
    sa.Column("changed_by", sa.String(100), nullable=False),
    sa.Column("before", sa.JSON, nullable=True),
    sa.Column("after", sa.JSON, nullable=False),
)

# Citizens' messages to us (an SMS forwarded by a gateway, a text to the Zalo OA), each
# with what the core made of it. The sender is kept hashed and masked only, the text
# masked (notifier.masking.scrub); the text is cleared after the deliveries' retention.
inbound_messages = sa.Table(
    "inbound_messages",
    metadata,
    sa.Column("inbound_id", sa.Uuid, primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False, index=True),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    # The provider's id of the message: a repeat (a replayed or retried call) is refused.
    sa.Column("provider_message_id", sa.String(128), nullable=True),
    sa.Column("sender_masked", sa.String(128), nullable=False),
    sa.Column("sender_hash", sa.String(64), nullable=False, index=True),
    sa.Column("text_masked", sa.Text, nullable=True),
    # What the text asked (CommandKind) and what came of it (InboundOutcome).
    sa.Column("command", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False, index=True),
    sa.Column("dossier_code", sa.String(64), nullable=True),
    # The reply: a delivery like any other (its event row has the same id as this row).
    sa.Column("reply_delivery_id", sa.Uuid, nullable=True),
    sa.UniqueConstraint("provider", "provider_message_id", name="uq_inbound_messages_provider"),
)

# Each sender's current rate-limit window (see notifier.settings.InboundSettings).
inbound_senders = sa.Table(
    "inbound_senders",
    metadata,
    sa.Column("sender_hash", sa.String(64), primary_key=True),
    sa.Column("window_started_at", UTCDateTime, nullable=False),
    sa.Column("messages", sa.Integer, nullable=False),
)


# The hourly rollup (notifier.store.deliveries.rollups): what reports, the console and
# the budget read instead of grouping millions of raw rows. Hours are UTC; every table
# is recomputed for a whole hour at once from the raw rows (never incremented), so a
# row is always the hour's figure as of its last recompute. ``rollup_state`` says up to
# where the hours are rolled up; ``rollup_dirty`` lists hours whose raw rows changed
# after they were (PostgreSQL triggers write it, in the changing transaction).
rollup_state = sa.Table(
    "rollup_state",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    # Every hour before this is in the rollup tables (None: none yet).
    sa.Column("rolled_until", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

rollup_dirty = sa.Table(
    "rollup_dirty",
    metadata,
    sa.Column("mark_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("hour", UTCDateTime, nullable=False, index=True),
)

# Deliveries created in an hour, per agency, procedure, channel, status and provider
# ("" for none): how many, how many of them are dead letters (exhausted), and their cost.
delivery_hours = sa.Table(
    "delivery_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("agency_code", sa.String(64), primary_key=True),
    sa.Column("procedure_code", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(24), primary_key=True),
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("deliveries", sa.Integer, nullable=False),
    sa.Column("exhausted", sa.Integer, nullable=False),
    # With a cost recorded; its sum; the part the providers reported themselves.
    sa.Column("charged", sa.Integer, nullable=False),
    sa.Column("cost_vnd", sa.Numeric(18, 2), nullable=False),
    sa.Column("reported_vnd", sa.Numeric(18, 2), nullable=False),
    # With SMS segments recorded, and their sum.
    sa.Column("segmented", sa.Integer, nullable=False),
    sa.Column("segments", sa.BigInteger, nullable=False),
)

# Deliveries created in an hour that were suppressed or held, by reason ("" for none).
delivery_reason_hours = sa.Table(
    "delivery_reason_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(24), primary_key=True),
    sa.Column("suppressed_reason", sa.String(32), primary_key=True),
    sa.Column("hold_reason", sa.String(32), primary_key=True),
    sa.Column("deliveries", sa.Integer, nullable=False),
)

# Deliveries created in an hour and sent, per channel and delivery-time bucket (event
# occurred_at to sent_at, log-spaced buckets: notifier.store.deliveries.rollups).
delivery_latency_hours = sa.Table(
    "delivery_latency_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("bucket", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
)

# Dossier status events received in an hour (replies to citizens' messages aside).
event_hours = sa.Table(
    "event_hours",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("events", sa.Integer, nullable=False),
)
