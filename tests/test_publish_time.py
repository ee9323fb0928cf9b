"""Where the latency histogram publish -> accepted starts (issue 21, item 6): our
publishers stamp a header, the bridge reads it (or the AMQP timestamp), the ingest keeps
it as ``events.published_at``; without one, ``received_at`` stands for it."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

from notifier.ops.samples import sample_event
from notifier.pipeline.bridge import published_at_ms_of
from notifier.pipeline.received import ingest_arguments
from notifier.publisher import PUBLISHED_AT_HEADER, _properties
from notifier.store.schema import events
from tests.test_pipeline import build_app


def test_our_publishers_stamp_the_publish_time_and_keep_other_headers() -> None:
    before = time.time_ns() // 1_000_000
    properties = _properties("e-1", None, {"x-submitter": "motcua"})
    stamped = properties.headers[PUBLISHED_AT_HEADER]
    assert before <= stamped <= time.time_ns() // 1_000_000
    assert properties.headers["x-submitter"] == "motcua"
    assert published_at_ms_of(properties) == stamped


def test_the_bridge_falls_back_to_the_amqp_timestamp_then_to_nothing() -> None:
    assert published_at_ms_of(SimpleNamespace(headers=None, timestamp=1_780_000_000)) == (
        1_780_000_000_000
    )
    assert published_at_ms_of(SimpleNamespace(headers={}, timestamp=None)) is None
    # A header that is not a positive whole number of ms is not trusted.
    odd = SimpleNamespace(headers={PUBLISHED_AT_HEADER: "yesterday"}, timestamp=None)
    assert published_at_ms_of(odd) is None


def test_the_ingest_keeps_the_publish_time_and_leaves_it_empty_when_unknown(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)
    try:
        published = sample_event(1, event_id=uuid.uuid4())
        unknown = sample_event(2, event_id=uuid.uuid4())
        stamp_ms = 1_780_000_000_123
        app.ingest.handle_batch(
            [
                ingest_arguments(json.dumps(published).encode(), 65536, None, stamp_ms),
                ingest_arguments(json.dumps(unknown).encode(), 65536),
            ],
            source="amqp",
        )
        with app.database.engine.connect() as connection:
            kept = dict(
                connection.execute(sa.select(events.c.event_id, events.c.published_at)).all()
            )
    finally:
        app.close()
    assert kept == {
        uuid.UUID(published["event_id"]): datetime.fromtimestamp(stamp_ms / 1000, UTC),
        uuid.UUID(unknown["event_id"]): None,
    }
