"""Small helpers for adapter tests: run a coroutine, build a message, capture log lines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import re
import ssl
import threading
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import certifi
import httpx
import structlog

from notifier.adapter import Adapter, AdapterContext, OutboundMessage, RecipientKind, TemplatePart
from notifier.logging import configure_logging

__all__ = [
    "DEFAULT_RECIPIENTS",
    "LogCapture",
    "capture_logs",
    "make_context",
    "recipient_variants",
    "run",
    "sample_message",
    "sample_parts",
]

T = TypeVar("T")

# Sample contacts, one per kind (reserved/example values, never a real citizen's).
DEFAULT_RECIPIENTS: Mapping[RecipientKind, str] = {
    RecipientKind.EMAIL: "nguyen.van.an@example.vn",
    RecipientKind.PHONE: "+84901888484",
    RecipientKind.ZALO: "+84901888484",
    RecipientKind.PORTAL_ACCOUNT: "acc-contract-7731",
}

TRACKING_URL = "https://dichvucong.gov.vn/p/home/dvc-tra-cuu-ho-so.html"
DOSSIER_CODE = "000.00.12.H29-261126-0001"
AGENCY_CODE = "000.00.12.H29"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous test code, on a fresh event loop.

    Works from inside a running loop too (the coroutine then runs on its own thread).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="notifier-testing-run")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])


def _sample_text(part: TemplatePart) -> str:
    if part.html:
        text = (
            f"<p>Hồ sơ <b>{DOSSIER_CODE}</b> đã được tiếp nhận.</p>"
            "<p>Ngày hẹn trả kết quả: 03/12/2026.</p>"
        )
    elif part.name in ("subject", "title"):
        text = f"Hồ sơ {DOSSIER_CODE} đã được tiếp nhận"
    elif part.name in ("link", "url"):
        text = TRACKING_URL
    else:
        text = (
            f"Hồ sơ số {DOSSIER_CODE} (thủ tục: Cấp bản sao trích lục hộ tịch) của Ông/Bà đã "
            "được tiếp nhận. Ngày hẹn trả kết quả: 03/12/2026."
        )
    if part.max_length is not None:
        text = text[: part.max_length]
    return text


def sample_parts(template_parts: tuple[TemplatePart, ...]) -> dict[str, str]:
    """Vietnamese sample text for each declared part, within its ``max_length``."""
    return {part.name: _sample_text(part) for part in template_parts}


def sample_message(
    adapter_class: type[Adapter[Any]] | None = None,
    *,
    recipient: str | None = None,
    delivery_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    parts: Mapping[str, str] | None = None,
    channel: str | None = None,
    language: str = "vi",
    status: str = "received",
    dossier_code: str = DOSSIER_CODE,
    agency_code: str = AGENCY_CODE,
) -> OutboundMessage:
    """A realistic rendered message. With ``adapter_class``, the channel, the recipient
    and the parts follow what the adapter declares; anything given explicitly wins."""
    if adapter_class is not None:
        channel = channel or adapter_class.channel
        recipient = recipient or DEFAULT_RECIPIENTS[adapter_class.recipient_kind]
        if parts is None:
            parts = sample_parts(adapter_class.template_parts)
    return OutboundMessage(
        delivery_id=delivery_id or uuid.uuid4(),
        event_id=event_id or uuid.uuid4(),
        channel=channel or "test",
        recipient=recipient or DEFAULT_RECIPIENTS[RecipientKind.EMAIL],
        language=language,
        parts=dict(parts or {"text": "Hồ sơ đã được tiếp nhận."}),
        dossier_code=dossier_code,
        agency_code=agency_code,
        status=status,
    )


@functools.cache
def _default_tls() -> ssl.SSLContext:
    # What httpx builds for verify=True (certifi's CAs), built once: building it costs
    # ~30 ms of CPU per client, and the kit makes hundreds of short-lived clients.
    return ssl.create_default_context(cafile=certifi.where())


class _TestContext(AdapterContext):
    """The core's context, except that clients share one default TLS configuration."""

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("verify", _default_tls())
        return super().http_client(**kwargs)


def make_context(**overrides: Any) -> AdapterContext:
    """An :class:`AdapterContext` without the core's stores (most adapters use neither);
    pass ``inbox=``, ``tokens=`` or ``http_transport=`` for those that do."""
    values: dict[str, Any] = {"inbox": None, "tokens": None, "http_transport": None}
    values.update(overrides)
    return _TestContext(**values)


def recipient_variants(recipient: str) -> set[str]:
    """The forms in which a recipient could show up in a log line: as given, trimmed,
    lower-cased, and for phone numbers the usual normalisations (84..., 0..., digits)."""
    value = recipient.strip()
    variants = {recipient, value, value.lower()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 9 and "@" not in value:
        national = digits[-9:]
        variants |= {digits, national, "0" + national, "84" + national, "+84" + national}
    return {v for v in variants if len(v) >= 4}


@dataclass
class LogCapture:
    """Log output captured by :func:`capture_logs`: ``text`` (JSON lines as rendered by
    notifier's own pipeline, masking included) and ``lines``."""

    buffer: io.StringIO = field(default_factory=io.StringIO)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Each line parsed as JSON (lines that are not JSON are returned as ``event``)."""
        parsed: list[dict[str, Any]] = []
        for line in self.lines:
            try:
                document = json.loads(line)
            except ValueError:
                document = {"event": line}
            parsed.append(document if isinstance(document, dict) else {"event": line})
        return parsed

    def lines_containing(self, *needles: str) -> list[str]:
        return [line for line in self.lines if any(n in line for n in needles)]


@contextlib.contextmanager
def capture_logs(level: str = "DEBUG") -> Iterator[LogCapture]:
    """Send every log line (structlog and the standard library) through notifier's own
    masked JSON pipeline (:func:`notifier.logging.configure_logging`) into a buffer.

    What is in the buffer is exactly what a production log would hold. The previous
    logging set-up is restored afterwards.
    """
    capture = LogCapture()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    with contextlib.redirect_stderr(capture.buffer):
        configure_logging(level, "json")  # binds its handler to the buffer
    try:
        yield capture
    finally:
        for handler in root.handlers:
            handler.flush()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
