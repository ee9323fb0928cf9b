"""Crash-window guarantees with scripted adapters: backpressure on unrecorded results, the
dispatch mark that tells "claimed, never called" from "called, outcome unknown", and each
uncertain-send policy (resend, verify, hold) with an admin's resolution."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from notifier.adapter import LookupAnswer
from notifier.app import Notifier
from notifier.ops.replay import Replayer, ReplayOutcome, Resolution
from notifier.ops.samples import sample_event
from notifier.pipeline.guard import ProviderCall
from notifier.settings import SettingsError
from notifier.store.deliveries.lifecycle import DeliveryStatus, DispatchMark
from notifier.store.schema import deliveries
from tests.support import RunningWorker, wait_until
from tests.test_pipeline import (
    MailA,
    MailB,
    attempts,
    build_app,
    rows,
    settled,
    submit_group,
)


def planned_email(app: Notifier, index: int = 1) -> UUID:
    """One event ingested (no worker): the id of its email delivery, queued."""
    event = sample_event(index, event_id=uuid.uuid4())
    [result] = app.ingest.handle_batch([(json.dumps(event), {})], source="test")
    [(delivery_id, channel)] = result.to_enqueue
    assert channel == "email"
    return delivery_id


def killed_mid_send(app: Notifier, delivery_id: UUID, *, marked: str | None) -> None:
    """The state a worker killed with SIGKILL leaves: claimed under a lease that has run
    out, and (``marked``) the call to that provider marked as started, or not."""
    claims = app.deliveries.claim([delivery_id], timedelta(seconds=-1))
    [claimed] = claims.claimed
    if marked is not None:
        app.deliveries.mark_dispatched([DispatchMark(delivery_id, marked, claimed.attempt)])


def status_of(app: Notifier, delivery_id: UUID) -> dict[str, Any]:
    with app.database.engine.connect() as connection:
        row = connection.execute(
            sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
        ).one()
        return dict(row._mapping)


# -- backpressure --------------------------------------------------------------------------


def test_no_provider_call_starts_while_max_unrecorded_results_wait_to_be_written(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path, worker={"max_unrecorded": 3})
    MailA.pool = 1  # one call at a time: the bound is then exactly max_unrecorded
    waiting_at_start: list[int] = []
    MailA.on_start = lambda message: waiting_at_start.append(app.sender.backlog.waiting)
    # Recording is stuck (a slow database under load): results pile up unwritten.
    unstuck = threading.Event()
    finish = app.deliveries.finish_attempts

    def stuck_finish(records: Any) -> None:
        unstuck.wait(30)
        finish(records)

    app.deliveries.finish_attempts = stuck_finish  # type: ignore[method-assign]
    events = [sample_event(i, event_id=uuid.uuid4()) for i in range(10)]
    with RunningWorker(app, threads=1):
        submit_group(app, events)
        # The fourth call is held back, not started.
        wait_until(lambda: app.sender.backlog.blocked >= 1, timeout=20, interval=0.01)
        calls_while_stuck = len(MailA.sent)
        waiting_while_stuck = app.sender.backlog.waiting
        unstuck.set()
        wait_until(lambda: settled(app, 10), timeout=30)
    assert calls_while_stuck == 3
    assert waiting_while_stuck == 3
    assert max(waiting_at_start) < 3
    assert len(MailA.sent) == 10
    assert app.sender.backlog.waiting == 0


# -- the dispatch mark ---------------------------------------------------------------------


def test_a_claim_whose_worker_died_before_the_call_is_sent_as_never_called(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)  # mail_a's policy: hold
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked=None)
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is DeliveryStatus.SENT
    assert [m.delivery_id for m in MailA.sent] == [delivery_id]
    row = status_of(app, delivery_id)
    assert (row["dispatch_provider"], row["dispatch_attempt"]) == (None, None)


def test_a_marked_call_to_a_hold_provider_becomes_unknown_and_is_not_sent_again(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_a")
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is DeliveryStatus.UNKNOWN
    assert MailA.sent == []
    assert MailB.sent == []
    row = status_of(app, delivery_id)
    assert row["status"] == "unknown"
    assert row["dispatch_provider"] == "mail_a"
    # Held is final: a redelivered message does nothing more.
    assert app.sender.send([delivery_id])[0].status is None
    assert MailA.sent == []
    assert [o for o, _p, _e in attempts(app)] == ["unknown"]


def test_a_maybe_sent_answer_from_a_hold_provider_holds_the_delivery_without_failover(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)
    MailA.script = ["maybe"]
    delivery_id = planned_email(app)
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is DeliveryStatus.UNKNOWN
    assert outcome.retry_in_ms is None
    assert MailB.sent == []  # the next provider would send a second copy
    assert "may have been sent" in status_of(app, delivery_id)["last_error"]


def test_a_marked_call_to_a_resend_provider_is_sent_again_through_that_provider_only(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path, providers={"mail_b": {"uncertain_send": "resend"}})
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_b")
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is DeliveryStatus.SENT
    # Not mail_a, first in the channel's order: only mail_b drops the repeat.
    assert MailA.sent == []
    assert [m.delivery_id for m in MailB.sent] == [delivery_id]


def test_a_resend_waiting_for_its_providers_circuit_never_goes_to_another_provider(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path, providers={"mail_a": {"uncertain_send": "resend"}})
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_a")
    for _ in range(5):  # mail_a failing: its circuit opens
        app.guard.observe(ProviderCall("email", "mail_a", "temporary-failure", 0.1))
    # Twice: the first try waits for mail_a's circuit, and so does the next one.
    for _ in range(2):
        [outcome] = app.sender.send([delivery_id])
        assert outcome.retry_in_ms is not None
        assert status_of(app, delivery_id)["dispatch_provider"] == "mail_a"
    assert MailA.sent == []
    assert MailB.sent == []  # mail_b would not drop mail_a's repeat


def test_a_resend_provider_past_its_dedupe_window_holds_instead(tmp_path: Path) -> None:
    app = build_app(tmp_path, providers={"mail_a": {"uncertain_send": "resend"}})
    MailA.dedupe_window_s = 0.0  # drops repeats only within 0 s of the first send
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_a")
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is DeliveryStatus.UNKNOWN
    assert MailA.sent == []
    assert "drops a repeat" in status_of(app, delivery_id)["last_error"]


@pytest.mark.parametrize(
    ("answer", "status", "sends"),
    [
        (LookupAnswer.ACCEPTED, DeliveryStatus.SENT, 0),
        (LookupAnswer.DELIVERED, DeliveryStatus.DELIVERED, 0),
        (LookupAnswer.NOT_FOUND, DeliveryStatus.SENT, 1),
    ],
)
def test_a_verify_provider_is_asked_before_anything_is_sent_again(
    tmp_path: Path, answer: LookupAnswer, status: DeliveryStatus, sends: int
) -> None:
    app = build_app(tmp_path, providers={"mail_b": {"uncertain_send": "verify"}})
    MailB.lookup_answers = [answer]  # type: ignore[attr-defined]
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_b")
    [outcome] = app.sender.send([delivery_id])
    assert outcome.status is status
    assert [m.delivery_id for m in MailB.looked_up] == [delivery_id]  # type: ignore[attr-defined]
    assert len(MailA.sent) + len(MailB.sent) == sends


def test_verify_for_an_adapter_without_a_status_lookup_is_refused_at_start_up(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError, match="verify needs a status lookup"):
        build_app(tmp_path, providers={"mail_a": {"uncertain_send": "verify"}})


# -- an admin's resolution -----------------------------------------------------------------


def held(app: Notifier) -> UUID:
    delivery_id = planned_email(app)
    killed_mid_send(app, delivery_id, marked="mail_a")
    assert app.sender.send([delivery_id])[0].status is DeliveryStatus.UNKNOWN
    return delivery_id


def test_an_admin_resends_an_unknown_delivery_and_it_is_sent_once(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    delivery_id = held(app)
    replayer = Replayer(app)
    with RunningWorker(app, threads=1):
        result = replayer.resolve(delivery_id, Resolution.RESEND, actor="console:alice")
        again = replayer.resolve(delivery_id, Resolution.RESEND, actor="console:alice")
        wait_until(lambda: settled(app, 1))
    assert result.outcome is ReplayOutcome.REPLAYED
    assert again.outcome is ReplayOutcome.NOT_REPLAYABLE
    assert [m.delivery_id for m in MailA.sent] == [delivery_id]
    log = attempts(app)
    assert [o for o, _p, _e in log] == ["unknown", "resolved:resend", "sent"]
    assert "console:alice" in (log[1][2] or "")


def test_an_admin_marks_an_unknown_delivery_sent_without_a_send(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    delivery_id = held(app)
    result = Replayer(app).resolve(delivery_id, Resolution.MARK_SENT, actor="cli:bob")
    assert result.outcome is ReplayOutcome.MARKED_SENT
    row = status_of(app, delivery_id)
    assert row["status"] == "sent"
    assert row["sent_at"] is not None
    assert MailA.sent == []
    assert [o for o, _p, _e in attempts(app)] == ["unknown", "resolved:mark-sent"]
    assert rows(app)[0]["dispatch_provider"] is None


def test_a_delivery_report_from_its_provider_settles_an_unknown_delivery(
    tmp_path: Path,
) -> None:
    # The provider had the held message after all: its report ends the question, so no
    # admin has to decide, and a report from a provider that was not called changes nothing.
    app = build_app(tmp_path)
    delivery_id = held(app)
    assert not app.deliveries.apply_receipt(
        "mail_b",
        channels={"email"},
        delivered=True,
        delivery_id=delivery_id,
        provider_message_id=None,
        error=None,
        error_code=None,
    )
    assert status_of(app, delivery_id)["status"] == "unknown"
    assert app.deliveries.apply_receipt(
        "mail_a",
        channels={"email"},
        delivered=True,
        delivery_id=delivery_id,
        provider_message_id=None,
        error=None,
        error_code=None,
    )
    row = status_of(app, delivery_id)
    assert row["status"] == "delivered"
    assert row["dispatch_provider"] is None
    assert MailA.sent == []
