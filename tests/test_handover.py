"""A send cut at the send timeout: uncertain only if it reached the handover.

The core cuts every provider call at ``send_timeout_s``. An adapter that reports its
handover (``reports_handover``; the email adapter does, before DATA) lets the core tell
a send that never left (retried, or failed over, like any temporary failure) from one
that may have reached the provider (the provider's uncertain-send policy: here ``hold``,
so ``unknown``). Scripted adapters on SQLite, as in tests/test_pipeline.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from notifier.adapter import OutboundMessage, handing_over
from notifier.ops.samples import sample_event
from tests.support import RunningWorker, wait_until
from tests.test_pipeline import MailA, MailB, attempts, build_app, rows, submit


def _first_send_hangs(message: OutboundMessage, *, after_handover: bool) -> None:
    if not MailA.sent and message.recipient not in MailA.slow:
        if after_handover:
            handing_over()
        MailA.slow = {message.recipient}


def test_a_send_cut_before_its_handover_fails_over_instead_of_being_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_app(tmp_path)  # send_timeout_s = 2
    monkeypatch.setattr(MailA, "reports_handover", True, raising=False)
    MailA.slow_s = 4.0
    MailA.on_start = lambda message: _first_send_hangs(message, after_handover=False)
    with RunningWorker(app):
        submit(app, sample_event(1, event_id=uuid.uuid4()))
        wait_until(lambda: [r["status"] for r in rows(app)] == ["sent"], timeout=20)
    [delivery] = rows(app)
    assert delivery["provider"] == "mail_b"
    assert len(MailB.sent) == 1
    assert [a[0] for a in attempts(app)] == ["sent"]  # one try: mail_a cut, mail_b sent


def test_a_send_cut_after_its_handover_is_held_as_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_app(tmp_path)
    monkeypatch.setattr(MailA, "reports_handover", True, raising=False)
    MailA.slow_s = 4.0
    MailA.on_start = lambda message: _first_send_hangs(message, after_handover=True)
    with RunningWorker(app):
        submit(app, sample_event(2, event_id=uuid.uuid4()))
        wait_until(lambda: [r["status"] for r in rows(app)] == ["unknown"], timeout=20)
    assert MailB.sent == []  # another provider would have sent it twice


def test_an_adapter_that_does_not_report_its_handover_is_uncertain_when_cut(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)
    assert MailA.reports_handover is False
    MailA.slow_s = 4.0
    MailA.on_start = lambda message: _first_send_hangs(message, after_handover=False)
    with RunningWorker(app):
        submit(app, sample_event(3, event_id=uuid.uuid4()))
        wait_until(lambda: [r["status"] for r in rows(app)] == ["unknown"], timeout=20)
    assert MailB.sent == []


def _answer_after_handover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, answer_s: float, wait_s: float
) -> list[dict[str, object]]:
    """One email whose provider answers ``answer_s`` after the handover, from an adapter
    that waits ``wait_s`` for answers (send_timeout_s is 2 s); its delivery once final."""
    app = build_app(tmp_path)
    monkeypatch.setattr(MailA, "reports_handover", True, raising=False)
    monkeypatch.setattr(MailA, "answer_timeout_s", wait_s, raising=False)
    MailA.slow_s = answer_s
    MailA.on_start = lambda message: _first_send_hangs(message, after_handover=True)
    with RunningWorker(app):
        submit(app, sample_event(4, event_id=uuid.uuid4()))
        wait_until(lambda: [r["status"] for r in rows(app)] in (["sent"], ["unknown"]), timeout=30)
    assert MailB.sent == []  # never another provider: it would be sent twice
    found = rows(app)
    found[0]["attempts_log"] = [a[0] for a in attempts(app)]
    return found


def test_a_send_past_its_handover_waits_for_the_answer_as_long_as_its_adapter_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMTP's end of DATA may take minutes on a busy relay (RFC 5321): a send that handed
    its message over is not cut at send_timeout_s (2 s here) when its adapter declares a
    longer wait for the answer, so it ends sent, not held as unknown."""
    [delivery] = _answer_after_handover(tmp_path, monkeypatch, answer_s=4.0, wait_s=8.0)
    assert (delivery["status"], delivery["provider"]) == ("sent", "mail_a")
    assert delivery["attempts_log"] == ["sent"]


def test_an_answer_later_than_the_adapters_wait_from_the_start_of_the_send_is_uncertain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait counts from the start of the send, as the lease that covers it does: an
    answer 4.5 s in, past a 3 s wait, is not waited for (send_timeout_s plus the wait
    would be 5 s, longer than the lease allows for)."""
    [delivery] = _answer_after_handover(tmp_path, monkeypatch, answer_s=4.5, wait_s=3.0)
    assert delivery["status"] == "unknown"
    assert "no answer within 3s" in str(delivery["last_error"] or "")


def test_only_the_channel_whose_adapter_waits_longer_for_answers_gets_a_longer_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed worker's claims come back when their lease runs out: one adapter's long
    answer wait must not hold back every channel's recovery."""
    monkeypatch.setattr(MailA, "answer_timeout_s", 30.0, raising=False)
    app = build_app(tmp_path)  # email: mail_a then mail_b; sms: sms; send_timeout_s = 2
    try:
        leases = {channel: lease.total_seconds() for channel, lease in app.sender.leases.items()}
        assert leases["email"] == (30 + 5) + (2 + 5) + 10
        assert leases["sms"] == (2 + 5) + 10
        assert app.sender.lease.total_seconds() == leases["email"]
    finally:
        app.close()
