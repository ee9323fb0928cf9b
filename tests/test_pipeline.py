"""The pipeline on Dramatiq's in-process broker with scripted adapters: retries, failover,
fallback, duplicates and double messages, without any network."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from notifier.adapter import (
    Adapter,
    AdapterSettings,
    LookupAnswer,
    OutboundMessage,
    PermanentFailure,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
)
from notifier.app import Notifier
from notifier.ops.samples import sample_event
from notifier.pipeline.bridge import ingest_arguments
from notifier.plugins.registry import Registry
from notifier.store.migrate import upgrade
from notifier.store.schema import deliveries, delivery_attempts
from tests.support import REPO, RunningWorker, make_settings, wait_until


class Scripted(Adapter[AdapterSettings]):
    """Answers from a per-class script: "ok", "temp", "perm" or "alert"; then "ok"."""

    script: ClassVar[list[str]]
    sent: ClassVar[list[OutboundMessage]]
    # Recipients whose sends take ``slow_s``; every send yields to the loop once.
    slow: ClassVar[set[str]] = set()
    slow_s: ClassVar[float] = 0.0
    in_flight: ClassVar[int] = 0
    most_in_flight: ClassVar[int] = 0
    pool: ClassVar[int] = 10
    # Called as each send starts (tests watch what the core lets through).
    on_start: ClassVar[Callable[[OutboundMessage], None] | None] = None
    lock = threading.Lock()

    @property
    def max_in_flight(self) -> int:
        return self.pool

    async def send(self, message: OutboundMessage) -> SendResult:
        cls = type(self)
        if cls.on_start is not None:
            cls.on_start(message)
        cls.in_flight += 1
        cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            await asyncio.sleep(self.slow_s if message.recipient in self.slow else 0.01)
        finally:
            cls.in_flight -= 1
        with self.lock:
            step = self.script.pop(0) if self.script else "ok"
            if step == "ok":
                self.sent.append(message)
        if step == "temp":
            raise TemporaryFailure("gateway busy", code="503")
        if step == "maybe":
            raise TemporaryFailure("read timeout", code="timeout", maybe_sent=True)
        if step == "perm":
            raise PermanentFailure("not a subscriber", code="-118")
        if step == "alert":
            raise PermanentFailure("balance too low", code="103", operator_alert=True)
        return SendResult(provider_message_id=f"{self.name}-{len(self.sent)}")


class ScriptedWithLookup(Scripted):
    """A scripted provider with a status lookup, answering from ``lookup_answers``."""

    lookup_answers: ClassVar[list[LookupAnswer]] = []
    looked_up: ClassVar[list[OutboundMessage]] = []

    async def lookup(self, message: OutboundMessage) -> LookupAnswer:
        type(self).looked_up.append(message)
        return self.lookup_answers.pop(0) if self.lookup_answers else LookupAnswer.NOT_FOUND


def scripted(
    name: str,
    channel: str,
    kind: RecipientKind,
    parts: tuple[TemplatePart, ...],
    base: type[Scripted] = Scripted,
) -> type[Scripted]:
    return type(
        name,
        (base,),
        {
            "name": name,
            "channel": channel,
            "recipient_kind": kind,
            "template_parts": parts,
            "script": [],
            "sent": [],
        },
    )


EMAIL_PARTS = (TemplatePart("subject"), TemplatePart("text"), TemplatePart("html", html=True))
SMS_PARTS = (TemplatePart("text"),)
MailA = scripted("mail_a", "email", RecipientKind.EMAIL, EMAIL_PARTS)
MailB = scripted("mail_b", "email", RecipientKind.EMAIL, EMAIL_PARTS, ScriptedWithLookup)
Sms = scripted("sms_gw", "sms", RecipientKind.PHONE, SMS_PARTS)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Notifier]:
    return build_app(tmp_path)


def build_app(tmp_path: Path, **overrides: Any) -> Notifier:
    """The scripted pipeline on SQLite; ``overrides`` go to the settings."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "config" / "templates", config / "templates")
    statuses = "\n".join(
        f'{s} = ["email"]'
        for s in (
            "submitted",
            "received",
            "refused",
            "processing",
            "supplement_requested",
            "payment_required",
            "withdrawn",
            "stopped",
            "result_ready",
            "result_returned",
            "overdue",
        )
    )
    (config / "routing.toml").write_text(
        f'[statuses]\n{statuses}\n[fallback]\nemail = ["sms"]\n', "utf-8"
    )
    for adapter in (MailA, MailB, Sms):
        adapter.script, adapter.sent, adapter.slow = [], [], set()
        adapter.in_flight = adapter.most_in_flight = 0
        adapter.pool, adapter.on_start, adapter.dedupe_window_s = 10, None, None
    ScriptedWithLookup.lookup_answers, ScriptedWithLookup.looked_up = [], []
    worker = {
        "max_attempts": 3,
        "min_backoff_ms": 10,
        "max_backoff_ms": 100,
        "send_timeout_s": 2,
        **overrides.pop("worker", {}),
    }
    settings = make_settings(
        config_dir=config,
        database_url=f"sqlite:///{tmp_path}/t.db",
        channels={"email": {"providers": ["mail_a", "mail_b"]}, "sms": {"providers": ["sms_gw"]}},
        worker=worker,
        **overrides,
    )
    registry = Registry.from_settings(
        settings, installed={"mail_a": MailA, "mail_b": MailB, "sms_gw": Sms}
    )
    notifier = Notifier(settings, registry=registry)
    upgrade(notifier.database)
    return notifier


def submit(app: Notifier, event: dict[str, Any]) -> None:
    app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")


def rows(app: Notifier) -> list[dict[str, Any]]:
    with app.database.engine.connect() as connection:
        result = connection.execute(sa.select(deliveries).order_by(deliveries.c.created_at))
        return [dict(r._mapping) for r in result]


def attempts(app: Notifier) -> list[tuple[str, str | None, str | None]]:
    with app.database.engine.connect() as connection:
        result = connection.execute(
            sa.select(
                delivery_attempts.c.outcome, delivery_attempts.c.provider, delivery_attempts.c.error
            ).order_by(delivery_attempts.c.attempt_id)
        )
        return [tuple(r) for r in result]


def settled(app: Notifier, count: int) -> bool:
    found = rows(app)
    return len(found) == count and all(
        r["status"] in ("sent", "delivered", "permanent-failure") for r in found
    )


def test_temporary_failures_are_retried_then_sent(app: Notifier) -> None:
    MailA.script = ["temp", "temp"]
    MailB.script = ["temp", "temp"]
    with RunningWorker(app):
        submit(app, sample_event(1, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
    [delivery] = rows(app)
    assert delivery["status"] == "sent"
    assert delivery["attempts"] == 3
    assert delivery["provider"] == "mail_a"
    assert [a[0] for a in attempts(app)] == ["temporary-failure", "temporary-failure", "sent"]
    assert attempts(app)[0][2] == "gateway busy"
    assert len(MailA.sent) == 1


def test_retries_are_bounded_then_the_fallback_channel_is_used_once(app: Notifier) -> None:
    MailA.script = ["temp"] * 10
    MailB.script = ["temp"] * 10
    with RunningWorker(app):
        submit(app, sample_event(2, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 2))
    email, sms = rows(app)
    assert email["status"] == "permanent-failure"
    assert email["attempts"] == 3
    assert email["last_error"].startswith("gave up after 3 attempts")
    assert email["exhausted"] is True  # a dead letter: its retries ran out
    assert sms["exhausted"] is False
    assert sms["channel"] == "sms"
    assert sms["status"] == "sent"
    assert sms["fallback_of"] == email["delivery_id"]
    assert len(Sms.sent) == 1
    assert Sms.sent[0].parts["text"]  # rendered from the SMS template of the same event


def test_a_provider_problem_fails_over_to_the_next_provider(app: Notifier) -> None:
    MailA.script = ["alert"]
    with RunningWorker(app):
        submit(app, sample_event(3, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
    [delivery] = rows(app)
    assert delivery["status"] == "sent"
    assert delivery["provider"] == "mail_b"
    assert len(MailA.sent) == 0
    assert len(MailB.sent) == 1


def test_an_unknown_outcome_retries_the_same_provider_instead_of_failing_over(
    tmp_path: Path,
) -> None:
    # A provider that drops repeats of our reference: its policy is resend.
    app = build_app(tmp_path, providers={"mail_a": {"uncertain_send": "resend"}})
    MailA.script = ["maybe"]
    with RunningWorker(app):
        submit(app, sample_event(6, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 1))
    [delivery] = rows(app)
    assert delivery["status"] == "sent"
    assert delivery["provider"] == "mail_a"
    assert delivery["attempts"] == 2
    assert len(MailB.sent) == 0  # mail_b would have sent a second copy


def test_a_recipient_problem_is_final_and_falls_back_once(app: Notifier) -> None:
    MailA.script = ["perm"]
    Sms.script = ["perm"]
    with RunningWorker(app):
        submit(app, sample_event(4, event_id=uuid.uuid4()))
        wait_until(lambda: settled(app, 2))
    email, sms = rows(app)
    assert email["status"] == sms["status"] == "permanent-failure"
    assert email["attempts"] == 1  # not retried
    assert email["exhausted"] is False  # refused, not a dead letter: no retries used up
    assert len(MailB.sent) == 0  # the recipient's problem is not a reason to fail over
    assert sms["fallback_of"] == email["delivery_id"]
    assert len(rows(app)) == 2  # a failed fallback does not fall back again


def test_the_same_event_twice_and_the_same_message_twice_send_once(app: Notifier) -> None:
    event = sample_event(5, event_id=uuid.uuid4())
    with RunningWorker(app):
        submit(app, event)
        submit(app, event)
        wait_until(lambda: settled(app, 1))
        [delivery] = rows(app)
        for _ in range(3):  # redelivered copies of the delivery message
            app.deliver_actors["email"].send([str(delivery["delivery_id"])])
        app.broker.join(app.queue_name("email"))
    assert len(rows(app)) == 1
    assert len(MailA.sent) == 1
    assert rows(app)[0]["attempts"] == 1


def submit_group(app: Notifier, events: list[dict[str, Any]]) -> None:
    """Events as the bridge hands them on: one ingest message for the group."""
    limit = app.settings.events.max_bytes
    bodies = [json.dumps(e, ensure_ascii=False).encode() for e in events]
    app.ingest_actor.send([ingest_arguments(b, limit) for b in bodies], "test")


def test_one_worker_thread_sends_a_channel_group_concurrently(app: Notifier) -> None:
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(20)]
    with RunningWorker(app, threads=1):
        submit_group(app, events)
        wait_until(lambda: settled(app, 20))
    assert len(MailA.sent) == 20
    assert len({m.delivery_id for m in MailA.sent}) == 20
    # One thread, one message of 20 deliveries: the sends overlap on the event loop, as
    # many at once as the adapter allows (Adapter.max_in_flight, 10 unless overridden).
    assert MailA.most_in_flight == 10
    assert all(r["attempts"] == 1 for r in rows(app))


def test_a_group_records_each_send_when_it_finishes_not_when_the_slowest_does(
    app: Notifier,
) -> None:
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(5)]
    slow = events[0]["applicant"]["contacts"]["email"]
    MailA.slow, MailA.slow_s = {slow}, 1.5

    def four_sent_one_in_flight() -> bool:
        statuses = sorted(r["status"] for r in rows(app))
        return statuses == ["sending", "sent", "sent", "sent", "sent"]

    with RunningWorker(app, threads=1):
        submit_group(app, events)
        # A crash now would resend only the one still in flight.
        wait_until(four_sent_one_in_flight, timeout=1.4, interval=0.01)
        wait_until(lambda: settled(app, 5))
    assert [m.recipient for m in MailA.sent][-1] == slow


def test_a_group_keeps_each_deliverys_own_outcome(app: Notifier) -> None:
    MailA.script = ["ok", "perm", "temp", "ok"]
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(4)]
    with RunningWorker(app, threads=1):
        submit_group(app, events)
        # 4 emails: 2 sent, 1 sent by the second provider after the first's outage,
        # 1 refused for the recipient and fallen back to SMS.
        wait_until(lambda: settled(app, 5))
    by_status: dict[str, int] = {}
    for row in rows(app):
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    assert by_status == {"sent": 4, "permanent-failure": 1}
    assert (len(MailA.sent), len(MailB.sent), len(Sms.sent)) == (2, 1, 1)
    assert sorted((outcome, provider) for outcome, provider, _e in attempts(app)) == [
        ("permanent-failure", "mail_a"),
        ("sent", "mail_a"),
        ("sent", "mail_a"),
        ("sent", "mail_b"),
        ("sent", "sms_gw"),
    ]


def test_an_event_that_breaks_ingest_does_not_hold_back_its_group(
    app: Notifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(3)]
    poison = events[1]["dossier"]["code"]
    render = app.templates.render

    def render_or_break(event: Any, channel: str, language: str) -> Any:
        if event.dossier.code == poison:
            raise RuntimeError("a bug met by this event only")
        return render(event, channel, language)

    monkeypatch.setattr(app.templates, "render", render_or_break)
    with RunningWorker(app, threads=1):
        submit_group(app, events)
        wait_until(lambda: settled(app, 2))
        wait_until(lambda: app.broker.dead_letters)
    assert sorted(m.dossier_code for m in MailA.sent) == sorted(
        e["dossier"]["code"] for e in events if e["dossier"]["code"] != poison
    )
    [dead] = app.broker.dead_letters
    [[raw, _meta]] = dead.args[0]
    assert json.loads(raw)["dossier"]["code"] == poison
