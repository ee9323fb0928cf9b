"""A property of planning (issue 18), checked by hypothesis over statuses, agencies'
routings and the citizen's preferences on any identity: a channel the citizen turned
off never gets a delivery that will be sent for a status that is not mandatory, and the
portal copy is never dropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from notifier_simulators.local import LocalProviders

from notifier.app import Notifier
from notifier.events import EventRejected, Status, parse_event
from notifier.ops.samples import sample_event
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.migrate import upgrade
from notifier.store.preferences import (
    CHOOSABLE_CHANNELS,
    IdentityKind,
    Preference,
    PreferenceStore,
)
from tests.support import make_settings

ACCOUNT, PHONE, EMAIL = "vneid-77", "0912 000 111", "citizen@example.vn"
CHANNELS = ("portal", *CHOOSABLE_CHANNELS)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifier]:
    path: Path = tmp_path_factory.mktemp("property")
    with LocalProviders() as providers:  # every channel enabled (nothing is sent here)
        app = Notifier(
            make_settings(database_url=f"sqlite:///{path}/p.db", **providers.settings_overrides())
        )
        assert set(CHANNELS) <= set(app.planner.recipient_kinds)
        upgrade(app.database)
        yield app
        app.close()


offs = st.frozensets(st.sampled_from(CHOOSABLE_CHANNELS))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    status=st.sampled_from(list(Status)),
    routed=st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True),
    account_off=offs,
    phone_off=offs,
    email_off=offs,
    with_account=st.booleans(),
)
def test_planning_never_sends_on_a_channel_turned_off_and_never_drops_the_portal_copy(
    app: Notifier,
    status: Status,
    routed: list[str],
    account_off: frozenset[str],
    phone_off: frozenset[str],
    email_off: frozenset[str],
    with_account: bool,
) -> None:
    store = PreferenceStore(app.database, app.settings.recipient_hash_key.get_secret_value())
    for kind, value, off in (
        (IdentityKind.ACCOUNT, ACCOUNT, account_off),
        (IdentityKind.PHONE, PHONE, phone_off),
        (IdentityKind.EMAIL, EMAIL, email_off),
    ):
        store.put(kind, value, Preference(channels_off=off), changed_by="property")
    contacts: dict[str, object] = {"phone": PHONE, "email": EMAIL, "zalo": {"phone": PHONE}}
    if with_account:
        contacts["portal_account_id"] = ACCOUNT
    raw = sample_event(5, status=status, event_id=uuid.uuid4(), contacts=contacts)
    event = parse_event(json.dumps(raw), max_bytes=app.settings.events.max_bytes)
    app.routing.agencies[event.agency.code] = {status: tuple(routed)}
    try:
        planned = app.planner.plan(event)
    except EventRejected:
        # Routed only to the portal, and no account: a kept reject, nothing to send.
        assert routed == ["portal"]
        assert not with_account
        return
    finally:
        del app.routing.agencies[event.agency.code]
    mandatory = app.routing.choices.is_mandatory(event.agency.code, status.value)
    off_for = {"sms": phone_off, "zalo": phone_off, "email": email_off, "portal": frozenset()}
    will_send = [p for p in planned if p.status is not DeliveryStatus.SUPPRESSED]
    if not mandatory:
        for p in will_send:
            # The account's choice applies when the event names the account.
            chosen = (account_off if with_account else frozenset()) | off_for[p.channel]
            assert p.channel not in chosen, (p.channel, p.status)
    else:
        assert not [p for p in planned if p.status is DeliveryStatus.SUPPRESSED]
    portal = [p for p in will_send if p.channel == "portal"]
    if with_account and ("portal" in routed or not will_send):
        # Routed to the portal, or every other channel turned off: the inbox has it.
        assert len(portal) == 1
    if not with_account:
        assert portal == []
