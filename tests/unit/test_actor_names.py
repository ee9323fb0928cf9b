"""Actor and queue names are part of a deployment: messages in flight carry them, so a
change would leave them unconsumed. These tests pin them as they have always been."""

from __future__ import annotations

from pathlib import Path

from notifier.app import Notifier
from tests.support import make_settings


def _names(app: Notifier) -> set[tuple[str, str]]:
    return {
        (name, app.broker.get_actor(name).queue_name) for name in app.broker.get_declared_actors()
    }


def test_a_default_app_declares_ingest_and_one_deliver_actor_per_channel_on_fixed_queues(
    tmp_path: Path,
) -> None:
    app = Notifier(make_settings(database_url=f"sqlite:///{tmp_path / 'n.db'}"))
    try:
        assert _names(app) == {
            ("ingest", "notifier.ingest"),
            ("deliver_email", "notifier.email"),
            ("deliver_portal", "notifier.portal"),
        }
        assert app.broker.get_declared_queues() == {
            "notifier.ingest",
            "notifier.ingest.DQ",
            "notifier.email",
            "notifier.email.DQ",
            "notifier.portal",
            "notifier.portal.DQ",
        }
    finally:
        app.close()


def test_queue_names_are_the_deployments_prefix_then_the_stage_or_channel(
    tmp_path: Path,
) -> None:
    app = Notifier(
        make_settings(
            database_url=f"sqlite:///{tmp_path / 'n.db'}",
            worker={"queue_prefix": "tinh-a"},
            adapters={"zalo": {"app_id": "a", "app_secret": "s", "oa_secret_key": "k"}},
            channels={"zalo": {"providers": ["zalo"]}},
        )
    )
    try:
        assert ("ingest", "tinh-a.ingest") in _names(app)
        assert ("deliver_zalo", "tinh-a.zalo") in _names(app)
        assert app.queue_name("zalo") == "tinh-a.zalo"
    finally:
        app.close()
