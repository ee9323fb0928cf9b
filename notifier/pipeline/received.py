"""A received event body as the ingest actor carries it (Dramatiq messages are JSON).

The body travels as text. Valid UTF-8 text encodes back to exactly the bytes
received; a body that is not valid UTF-8 also carries those bytes (base64, up to what
a reject keeps), so a reject stores what was received, never the text with U+FFFD
replacements, and a replay cannot become a different event.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from notifier.store.publishers import Submitter

# Rejected bodies are kept for operators and replay, but not without bound.
KEPT_REJECT_BYTES = 64 * 1024


def ingest_arguments(
    body: bytes,
    max_bytes: int,
    submitter: Submitter | None = None,
    published_at_ms: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The ingest actor's arguments for a raw body, bounded so huge bodies stay cheap.
    ``published_at_ms``: when its publisher published it (Unix ms), if it said so."""
    size = len(body)
    truncated = size > max_bytes
    kept = body[: max_bytes + 1] if truncated else body
    meta: dict[str, Any] = {"size": size, "truncated": truncated}
    try:
        text, meta["utf8"] = kept.decode("utf-8"), True
    except UnicodeDecodeError:
        text, meta["utf8"] = kept.decode("utf-8", errors="replace"), truncated
        meta["raw_b64"] = base64.b64encode(kept[:KEPT_REJECT_BYTES]).decode("ascii")
    if submitter is not None:
        meta["submitter"] = submitter.as_json()
    if published_at_ms is not None:
        meta["published_at_ms"] = published_at_ms
    return text, meta


def published_at(meta: Mapping[str, Any]) -> datetime | None:
    """When the event was published, as ``ingest_arguments`` carried it (None: unknown)."""
    value = meta.get("published_at_ms")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def raw_body(text: str, meta: Mapping[str, Any]) -> bytes:
    """The bytes received (up to :data:`KEPT_REJECT_BYTES`) for a body given as text."""
    carried = meta.get("raw_b64")
    if isinstance(carried, str):
        return base64.b64decode(carried)[:KEPT_REJECT_BYTES]
    # Text with no lone surrogates always encodes; a caller's odd text is kept as best we can.
    return text.encode("utf-8", errors="surrogatepass")[:KEPT_REJECT_BYTES]
