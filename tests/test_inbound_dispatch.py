"""The inbound dispatcher over a real database (SQLite): whatever a stranger writes, the
reply never shows a dossier's status; the applicant's lookup does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.adapter import InboundMessage
from notifier.app import Notifier
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.store.migrate import upgrade
from notifier.store.schema import deliveries
from tests.support import make_settings

APPLICANT, STRANGER = "0901888484", "0912345678"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Notifier, str]]:
    folder: Path = tmp_path_factory.mktemp("inbound")
    notifier = Notifier(
        make_settings(
            database_url=f"sqlite:///{folder / 'db.sqlite'}",
            broker_url="memory://",
            inbound={"max_replies": 1000},
        )
    )
    upgrade(notifier.database)
    event = sample_event(
        5,
        status=Status.SUPPLEMENT_REQUESTED,
        event_id=uuid.uuid4(),
        contacts={"phone": APPLICANT, "email": "a@example.vn", "portal_account_id": "acc-5"},
    )
    assert notifier.ingest.handle(json.dumps(event), source="test").outcome == "accepted"
    yield notifier, event["dossier"]["code"]
    notifier.close()


def _reply_text(notifier: Notifier, delivery_id: uuid.UUID) -> str:
    with notifier.database.engine.connect() as connection:
        content = connection.execute(
            sa.select(deliveries.c.content).where(deliveries.c.delivery_id == delivery_id)
        ).scalar_one()
    return str(content["text"])


def _ask(notifier: Notifier, sender: str, text: str) -> str | None:
    before = _reply_ids(notifier)
    notifier.inbound.handle("esms", "sms", [InboundMessage(sender=sender, text=text)])
    new = _reply_ids(notifier) - before
    if not new:
        return None
    [delivery_id] = new
    return _reply_text(notifier, delivery_id)


def _reply_ids(notifier: Notifier) -> set[uuid.UUID]:
    with notifier.database.engine.connect() as connection:
        return set(
            connection.execute(
                sa.select(deliveries.c.delivery_id).where(deliveries.c.event_status == "reply")
            ).scalars()
        )


def test_the_applicant_gets_the_status_of_their_dossier(app: tuple[Notifier, str]) -> None:
    notifier, code = app
    answer = _ask(notifier, APPLICANT, f"Tra cứu {code}")
    assert answer is not None
    assert code in answer
    assert "bổ sung" in answer.lower()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_whatever_a_stranger_writes_the_reply_shows_no_dossier(
    app: tuple[Notifier, str], data: st.DataObject
) -> None:
    notifier, code = app
    text = data.draw(
        st.one_of(
            st.text(max_size=200),
            st.builds(
                lambda before, after, lower: (
                    (before + code + after).lower() if lower else before + code + after
                ),
                st.sampled_from(["", "TRA CUU ", "tra cứu: ", "tracuu", "CHECK ", " "]),
                st.sampled_from(["", " ", ".", " cam on", "\n"]),
                st.booleans(),
            ),
        )
    )
    answer = _ask(notifier, STRANGER, text)
    assert answer is not None  # every message from a reachable sender is answered
    assert code.lower() not in answer.lower()
    assert "bổ sung giấy tờ" not in answer.lower()
