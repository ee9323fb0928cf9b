"""Structured logging: JSON in production, readable in a terminal, personal data masked.

Every log line passes through :func:`mask_personal_data`, including lines from
libraries that log through the standard library (Dramatiq, uvicorn, alembic).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from notifier.masking import redact_url_secrets, scrub

# Keys whose values are contacts or identifiers: masked whatever they look like.
_ALWAYS_MASKED = {"phone", "email", "recipient", "citizen_id", "to", "address"}
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization")


def _mask_value(key: str, value: Any) -> Any:
    lowered = key.lower()
    if any(word in lowered for word in _SECRET_KEYS):
        return "[redacted]"
    if isinstance(value, str):
        if lowered in _ALWAYS_MASKED:
            from notifier.masking import mask_recipient

            return mask_recipient(value)
        return scrub(redact_url_secrets(value))
    if isinstance(value, dict):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, item) for item in value]
    return value


def mask_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask contacts and redact secrets in every field."""
    for key in list(event_dict):
        event_dict[key] = _mask_value(key, event_dict[key])
    return event_dict


def _scrub_rendered(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    # Exceptions are rendered to text late; scrub the final text fields too.
    for key in ("exception", "stack"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = scrub(event_dict[key])
    return event_dict


def configure_logging(
    level: str = "INFO", log_format: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Route structlog and the standard library through one masked pipeline."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_personal_data,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    # Exceptions become text here, in both formats, so the text can be scrubbed; a rich
    # traceback rendered by ConsoleRenderer would bypass the masking (and print locals).
    final: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        _scrub_rendered,
    ]
    structlog.configure(
        # Below the level, a call costs one check (no timestamps, masking or rendering).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[*final, renderer]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika narrates every frame at INFO; keep its warnings only.
    logging.getLogger("pika").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
