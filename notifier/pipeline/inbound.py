"""The one inbound path's core: a citizen's message, read and verified by its channel's
adapter, is answered here, the same way for every channel.

::

    provider call ─► /v1/receipts/<name>/… or /v1/inbound-sms/<name>/… (notifier.web)
                     └─ adapter.parse_inbound: verify (token or signature, time
                        window), read → InboundMessage(sender, text, sent_at, id)
    InboundDispatcher.handle:
        parse_command (commands.py) ─► STOP / START: opt the sender out / back in
                                    └► a dossier code: look it up (store.inbound)
        answer_for: the status only to the applicant's own phone or Zalo user;
                    anyone else gets [unknown], exactly as for a code that does not exist
        InboundStore.record, one transaction: the message (masked), the sender's
                    rate-limit window, the reply (an events row + a queued delivery)
        enqueue the reply on its channel's queue: sent, retried, logged, reported like
                    any delivery (Zalo answers with a consultation message, see the
                    adapter's README)

A repeat of a provider's message id is stored once and answered once. Per sender, at
most ``InboundSettings.max_replies`` replies a window, then one "too many messages"
reply, then silence until the window ends (:class:`notifier.settings.InboundSettings`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

from jinja2 import TemplateError

from notifier.adapter import InboundMessage, RecipientKind
from notifier.events import Status
from notifier.logging import get_logger
from notifier.masking import mask_recipient, recipient_hash, scrub
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.pipeline.agencies import AgencyRegistry
from notifier.pipeline.commands import Command, CommandKind, parse_command
from notifier.pipeline.rendering import LANGUAGES, sandboxed_environment, status_name
from notifier.settings import InboundSettings, SettingsError
from notifier.store.inbound import (
    Decision,
    DossierRow,
    InboundOutcome,
    InboundRow,
    InboundStore,
    ReplyDraft,
)
from notifier.store.optouts import OptOutStore, canonical_recipient
from notifier.text import sms_length, strip_diacritics

log = get_logger(__name__)

MAX_STORED_TEXT = 1000


class ReplyKind(StrEnum):
    """The reply templates (``config/templates/<lang>/replies.toml``), one per kind."""

    STATUS = "status"
    UNKNOWN = "unknown"
    HELP = "help"
    UNRECOGNISED = "unrecognised"
    STOPPED = "stopped"
    STARTED = "started"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class DossierFacts:
    """What a status reply may say, and who may be told."""

    dossier_code: str
    agency_code: str
    agency_name: str
    status: Status
    due_date: date | None
    language: str | None
    # Keyed hashes of the applicant's phone numbers and Zalo ids.
    owners: frozenset[str]


def answer_for(
    command: Command, facts: DossierFacts | None, sender_hash: str
) -> tuple[ReplyKind, DossierFacts | None]:
    """What to answer, and the facts the answer may show. The privacy rule lives here:
    a status only to one of the dossier's own contacts; to anyone else the answer to a
    code that does not exist, with nothing of the dossier."""
    match command.kind:
        case CommandKind.STATUS:
            if facts is not None and sender_hash in facts.owners:
                return ReplyKind.STATUS, facts
            return ReplyKind.UNKNOWN, None
        case CommandKind.STOP:
            return ReplyKind.STOPPED, None
        case CommandKind.START:
            return ReplyKind.STARTED, None
        case CommandKind.HELP:
            return ReplyKind.HELP, None
        case _:
            return ReplyKind.UNRECOGNISED, None


# Content keys a reply's delivery carries besides its parts (written by ``_draft``).
_REPLY_REFERENCE_KEYS = frozenset({"in_reply_to", "in_reply_received_at"})


class ReplyTemplates:
    """The reply templates of every language, compiled and test-rendered at start-up
    for every channel that takes inbound messages.

    A kind's table holds ``text`` (any channel) and per-channel texts (``sms = "..."``);
    a sub-table named after a channel (``[status.zalo]``) holds that channel's parts
    instead: its own ``text`` if any, and parts its adapter reads, such as Zalo's ZBS
    template (``template_id``, ``template_data``) for a reply after the consultation
    window has closed (adapters/notifier-zalo/README.md)."""

    def __init__(self, templates_dir: Path, channels: Iterable[str]) -> None:
        self._env = sandboxed_environment()
        self._compiled: dict[tuple[str, ReplyKind, str], Any] = {}
        # (language, kind, channel) -> {part name: template}, besides the text.
        self._parts: dict[tuple[str, ReplyKind, str], dict[str, Any]] = {}
        self.channels = sorted(set(channels))
        problems: list[str] = []
        for language in LANGUAGES:
            path = templates_dir / language / "replies.toml"
            if not path.is_file():
                problems.append(f"missing reply templates {path}")
                continue
            try:
                document = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{path}: {exc}")
                continue
            for kind in ReplyKind:
                table = document.get(kind.value)
                if not isinstance(table, dict) or not isinstance(table.get("text"), str):
                    problems.append(f"{path}: [{kind.value}] needs a 'text'")
                    continue
                for key, source in table.items():
                    if isinstance(source, dict) and key != "text":
                        problems.extend(self._channel_parts(path, language, kind, key, source))
                        continue
                    if not isinstance(source, str):
                        problems.append(f"{path}: [{kind.value}].{key} is not text")
                        continue
                    compiled = self._compile(path, f"[{kind.value}].{key}", source, problems)
                    if compiled is not None:
                        self._compiled[(language, kind, key)] = compiled
        if not problems:
            problems.extend(self._test_render())
        if problems:
            raise SettingsError(problems)

    def _compile(self, path: Path, where: str, source: str, problems: list[str]) -> Any:
        try:
            return self._env.from_string(source)
        except TemplateError as exc:
            problems.append(f"{path}: {where}: {exc}")
            return None

    def _channel_parts(
        self, path: Path, language: str, kind: ReplyKind, channel: str, table: dict[str, Any]
    ) -> list[str]:
        problems: list[str] = []
        parts: dict[str, Any] = {}
        for part, source in table.items():
            where = f"[{kind.value}.{channel}].{part}"
            if not isinstance(source, str):
                problems.append(f"{path}: {where} is not text")
            elif part in _REPLY_REFERENCE_KEYS:
                problems.append(f"{path}: {where} is a reserved name")
            elif (compiled := self._compile(path, where, source, problems)) is not None:
                if part == "text":
                    self._compiled[(language, kind, channel)] = compiled
                else:
                    parts[part] = compiled
        self._parts[(language, kind, channel)] = parts
        return problems

    def _test_render(self) -> list[str]:
        problems = []
        for language in LANGUAGES:
            for kind in ReplyKind:
                for channel in [*self.channels, "text"]:
                    for context in _samples(with_status=kind is ReplyKind.STATUS):
                        try:
                            self.render_parts(kind, channel, language, context)
                        except Exception as exc:  # TemplateError, the sandbox's limits
                            problems.append(f"{language}/replies.toml [{kind.value}]: {exc}")
        return list(dict.fromkeys(problems))

    def render(
        self, kind: ReplyKind, channel: str, language: str, context: Mapping[str, Any]
    ) -> str:
        template = (
            self._compiled.get((language, kind, channel))
            or self._compiled[(language, kind, "text")]
        )
        return " ".join(str(template.render({**context, "channel": channel})).split())

    def render_parts(
        self, kind: ReplyKind, channel: str, language: str, context: Mapping[str, Any]
    ) -> dict[str, str]:
        """The reply's parts on ``channel``: its ``text`` and the channel's own parts
        (rendered like the channel's status templates: stripped, inner spacing kept)."""
        parts = {"text": self.render(kind, channel, language, context)}
        full = {**context, "channel": channel}
        for name, template in self._parts.get((language, kind, channel), {}).items():
            parts[name] = str(template.render(full)).strip()
        return parts


def _samples(*, with_status: bool) -> list[dict[str, Any]]:
    """Contexts for the start-up render: a status reply's with long values and every
    status, the others' (which know no dossier)."""
    base = {"dossier_code": "000.00.12.H29-261126-0001", "language": "vi"}
    if not with_status:
        return [{**base, "dossier_code": ""}]
    samples: list[dict[str, Any]] = []
    for status in Status:
        samples.append(
            {
                **base,
                "status": status.value,
                "status_name": status_name(status, "vi"),
                "agency_name": "Ủy ban nhân dân phường Điện Biên, quận Ba Đình, Hà Nội",
                "due_date": date(2026, 12, 31),
            }
        )
    return samples


@dataclass
class InboundSummary:
    """What one provider call's messages came to (the API's answer)."""

    received: int = 0
    answered: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    opted_out: int = 0
    opted_in: int = 0


class InboundDispatcher:
    def __init__(
        self,
        *,
        store: InboundStore,
        opt_outs: OptOutStore,
        templates: ReplyTemplates,
        settings: InboundSettings,
        hash_key: str,
        recipient_kinds: Mapping[str, RecipientKind],
        enqueue: Callable[[Iterable[tuple[UUID, str]]], None],
        agencies: AgencyRegistry | None = None,
        default_language: str = "vi",
    ) -> None:
        self.store = store
        self.opt_outs = opt_outs
        self.templates = templates
        self.settings = settings
        self.hash_key = hash_key
        self.recipient_kinds = dict(recipient_kinds)
        self.enqueue = enqueue
        self.agencies = agencies
        self.default_language = default_language

    def handle(
        self,
        provider: str,
        channel: str,
        messages: Sequence[InboundMessage],
        *,
        received_at: datetime | None = None,
    ) -> InboundSummary:
        """Store and answer each message of one provider call; its replies are queued."""
        summary = InboundSummary(received=len(messages))
        replies: list[tuple[UUID, str]] = []
        for message in messages:
            self._one(
                provider, channel, message, received_at or datetime.now(UTC), summary, replies
            )
        if replies:
            try:
                self.enqueue(replies)
            except Exception:
                # Recorded as queued: the sweeper sends them once they look stale.
                log.exception("inbound replies recorded but not enqueued; the sweeper will")
        return summary

    def _sender(self, channel: str, raw: str) -> str | None:
        """The sender as replies (and the delivery log's hashes) know it, or None when no
        reply can reach it."""
        raw = raw.strip()
        if not raw or len(raw) > 128:
            return None
        kind = self.recipient_kinds.get(channel)
        if kind is RecipientKind.PHONE:
            try:
                return parse_mobile(raw).format(PhoneFormat.E164)
            except InvalidPhone:
                return None
        if kind is None:
            # A channel this process does not send on: its replies wait for the sweeper
            # of a process that does; a phone is still kept in the form ingest hashes.
            return canonical_recipient(raw)
        return raw  # a Zalo user id (or another platform's id), as given

    def _one(
        self,
        provider: str,
        channel: str,
        message: InboundMessage,
        received_at: datetime,
        summary: InboundSummary,
        replies: list[tuple[UUID, str]],
    ) -> None:
        text = _printable(message.text[:MAX_STORED_TEXT])
        raw_sender = _printable(message.sender[:MAX_STORED_TEXT]).strip()
        command = parse_command(text)
        sender = self._sender(channel, raw_sender)
        sender_hash = recipient_hash(sender or raw_sender, self.hash_key)
        row = InboundRow(
            channel=channel,
            provider=provider,
            provider_message_id=_printable(message.provider_message_id or "")[:128] or None,
            sender_masked=mask_recipient(sender or raw_sender),
            sender_hash=sender_hash,
            text_masked=scrub(text),
            command=command.kind.value,
            received_at=received_at,
            sent_at=message.sent_at,
        )
        message = replace(message, provider_message_id=row.provider_message_id)
        if sender is not None and command.kind in (CommandKind.STOP, CommandKind.START):
            # Consent is honoured whatever the rate limit (idempotent, so a repeat of
            # the call changes nothing).
            if command.kind is CommandKind.STOP:
                summary.opted_out += int(
                    self.opt_outs.add(sender, channel, f"{channel}-stop:{provider}")
                )
            else:
                summary.opted_in += int(self.opt_outs.remove(sender, channel))
        facts = None
        if sender is not None and command.kind is CommandKind.STATUS and command.dossier_code:
            facts = self._facts(command.dossier_code)
        kind, shown = answer_for(command, facts, sender_hash)
        limit = self.settings.max_replies

        def decide(number: int) -> Decision:
            if sender is None:
                return Decision(InboundOutcome.IGNORED, None)
            if number > limit + 1:
                return Decision(InboundOutcome.SILENCED, None)
            reply_kind = kind if number <= limit else ReplyKind.RATE_LIMITED
            outcome = InboundOutcome.ANSWERED if number <= limit else InboundOutcome.RATE_LIMITED
            draft = self._draft(
                channel, sender, sender_hash, command, reply_kind, shown, message, received_at
            )
            return Decision(outcome, draft, shown.dossier_code if shown is not None else None)

        recorded = self.store.record(row, decide, window=timedelta(seconds=self.settings.window_s))
        if recorded is None:
            summary.duplicates += 1
            log.info("inbound message repeated: not answered again", provider=provider)
            return
        if recorded.outcome is InboundOutcome.ANSWERED:
            summary.answered += 1
        elif recorded.outcome in (InboundOutcome.RATE_LIMITED, InboundOutcome.SILENCED):
            summary.rate_limited += 1
        if recorded.reply is not None:
            replies.append(recorded.reply)
        log.info(
            "inbound message",
            provider=provider,
            channel=channel,
            command=command.kind.value,
            outcome=recorded.outcome.value,
            reply=kind.value,
        )

    def _facts(self, code: str) -> DossierFacts | None:
        row = self.store.dossier({code, code.upper()})
        if row is None:
            return None
        try:
            status = Status(row.status)
        except ValueError:
            return None
        return DossierFacts(
            dossier_code=row.dossier_code,
            agency_code=row.agency_code,
            agency_name=self._agency_name(row),
            status=status,
            due_date=_due_date(row.payload),
            language=_language(row.payload),
            owners=row.contact_hashes | self._payload_owners(row.payload),
        )

    def _agency_name(self, row: DossierRow) -> str:
        if self.agencies is not None and row.agency_code in self.agencies.agencies:
            return self.agencies.agencies[row.agency_code].name
        name = _path(row.payload, "agency", "name")
        return name if isinstance(name, str) and name else row.agency_code

    def _payload_owners(self, payload: dict[str, Any] | None) -> frozenset[str]:
        """Hashes of the phone and Zalo contacts the applicant gave in the event."""
        values = [
            _path(payload, "applicant", "contacts", "phone"),
            _path(payload, "applicant", "contacts", "zalo", "phone"),
            _path(payload, "applicant", "contacts", "zalo", "user_id"),
        ]
        owners = set()
        for value in values:
            if not isinstance(value, str) or not value.strip():
                continue
            try:
                value = parse_mobile(value).format(PhoneFormat.E164)
            except InvalidPhone:
                value = value.strip()
            owners.add(recipient_hash(value, self.hash_key))
        return frozenset(owners)

    def _draft(
        self,
        channel: str,
        sender: str,
        sender_hash: str,
        command: Command,
        kind: ReplyKind,
        facts: DossierFacts | None,
        message: InboundMessage,
        received_at: datetime,
    ) -> ReplyDraft:
        language = command.language
        if facts is not None and facts.language in LANGUAGES:
            language = facts.language
        if language not in LANGUAGES:
            language = self.default_language
        context: dict[str, Any] = {"dossier_code": "", "language": language}
        if facts is not None:
            context.update(
                dossier_code=facts.dossier_code,
                status=facts.status.value,
                status_name=status_name(facts.status, language),
                agency_name=facts.agency_name,
                due_date=facts.due_date,
            )
        parts = self.templates.render_parts(kind, channel, language, context)
        text = parts["text"]
        content = {
            **parts,
            # What the reply answers: providers with a reply window read it
            # (notifier.adapter.OutboundMessage.in_reply_to).
            "in_reply_to": message.provider_message_id or "",
            "in_reply_received_at": (message.sent_at or received_at).isoformat(),
        }
        if (
            self.recipient_kinds.get(channel) is RecipientKind.PHONE
            and sms_length(strip_diacritics(text)).segments > 1
        ):
            log.info("inbound reply over one SMS segment", reply=kind.value, language=language)
        return ReplyDraft(
            channel=channel,
            recipient=sender,
            recipient_masked=mask_recipient(sender),
            recipient_hash=sender_hash,
            language=language,
            template=f"{language}/replies/{kind.value}",
            content=content,
            dossier_code=facts.dossier_code if facts is not None else "",
            agency_code=facts.agency_code if facts is not None else "",
        )


_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {0x7F: None}


def _printable(value: str) -> str:
    """Without control characters (a NUL cannot be stored in PostgreSQL text) and lone
    surrogates (cannot be encoded): a provider's call may carry anything."""
    value = value.translate(_CONTROL)
    return value.encode("utf-8", errors="ignore").decode("utf-8")


def _path(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _due_date(payload: dict[str, Any] | None) -> date | None:
    for key in ("new_due_date", "due_date"):
        value = _path(payload, "dossier", key)
        if isinstance(value, str):
            try:
                return date.fromisoformat(value[:10])
            except ValueError:
                continue
    return None


def _language(payload: dict[str, Any] | None) -> str | None:
    value = _path(payload, "applicant", "language")
    return value if isinstance(value, str) else None
