"""What the service logged during the test session, and a scan of it for personal data.

``capture_service_log`` (a session fixture in conftest) configures the service's own
masked JSON logging (:func:`notifier.logging.configure_logging`, as ``notifier
worker`` and ``notifier api`` do) and adds a handler with the very same formatter
writing every record to ``test-artifacts/service-log.jsonl`` (emptied at session
start; a second session running at the same time in the same checkout writes its own
``service-log.<pid>.jsonl``). Later calls of ``configure_logging`` (the CLI commands
tests invoke in-process) replace the root handlers; the file handler is put back after
each.

``find_personal_data`` looks through that file for a Vietnamese phone number
(0…, 84…, +84… with spaces, dots, dashes or brackets inside), an email address, a
12-digit citizen id, or a secret-looking query parameter, in clear: as written, as a
path segment (``/v1/inbox/030192007788/…``), and in each line once percent-decoded
(``%2B84987000111``, ``erin%40example.org``, twice encoded, ``+`` for a space).
``scan_service_log`` runs it over the whole file; the session fixture calls it after the
last test, so the scan sees everything whatever order the tests ran in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from notifier import logging as notifier_logging
from notifier.masking import scrub

SERVICE_LOG = Path(__file__).resolve().parent.parent / "test-artifacts" / "service-log.jsonl"

# Digits glued to letters, dots, dashes, colons or mask stars are parts of ids, dossier
# codes, times, addresses or masked values, not phone numbers. After a slash they are a
# path segment: an account id or a contact in a URL, looked at like any other.
_EDGE_BEFORE = r"(?<![\w.\-:*+])"
_SEP = r"[ .\-()]{0,2}"
# 0 + 9 digits, or 84 / +84 + 9 digits, separators allowed between digits.
PHONE = re.compile(_EDGE_BEFORE + r"(?:(?:\+84|84)" + _SEP + r"|0)(?:\d" + _SEP + r"){8}\d(?!\w)")
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Twelve digits in a row after a prefix too ("vneid-030192007788"), but not as the last
# group of a UUID.
CITIZEN_ID = re.compile(r"(?<![0-9A-Za-z.:*+])(?<![0-9a-fA-F]{4}-)\d{12}(?![\w])")
SECRET_PARAM = re.compile(
    r"[?&](?:token|secret|api_?key|key|password|access_token|refresh_token)=(?!\[redacted\])"
    r"[^&\s\"]+",
    re.IGNORECASE,
)
_PLUS_IN_DIGITS = re.compile(r"(?<=\d)\+(?=\d)")
# A gateway's callback token as the last path segment (/v1/receipts/esms/<token>).
SECRET_SEGMENT = re.compile(
    r"/v1/(?:receipts|inbound-sms)/[^/?#\s\"']+/(?!\[redacted\])[^/?#\s\"']+"
)
PATTERNS = {
    "phone": PHONE,
    "email": EMAIL,
    "citizen id": CITIZEN_ID,
    "secret": SECRET_PARAM,
    "secret path": SECRET_SEGMENT,
}

# Masked forms of contacts two security tests send through the service on purpose (the
# STOP reply from 84912345678, the operator's opt-out of Lan.Nguyen@Example.org): when
# such a test passed, its contact must be in the log, masked; else the scan proved
# nothing about it.
KNOWN_MASKED = {
    "test_an_opted_out_channel_is_suppressed_and_stop_replies_opt_out": "********678",
    "test_operators_record_opt_outs_from_the_cli": "L***@Example.org",
}


def scan_service_log(path: Path, passed: frozenset[str] = frozenset()) -> str | None:
    """What is wrong with the session's service log, or None: a line that is not the
    service's JSON, personal data in clear, or, for the tests named in ``passed``, their
    masked contact (``KNOWN_MASKED``) missing."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            return f"line {number} is not the service's JSON: {_masked_line(line)}"
    findings = find_personal_data(text)
    if findings:
        return f"{len(findings)} in clear in the service log:\n" + "\n".join(
            f"  {kind}: {line}" for kind, line in findings[:20]
        )
    for test, masked in KNOWN_MASKED.items():
        if test in passed and masked not in text:
            return f"expected {masked!r} in the log: {test} logs it (masked) on purpose"
    return None


def find_personal_data(text: str, safe: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(kind, the offending line with the finding masked) for each finding."""
    found = []
    for raw in text.splitlines():
        seen: set[tuple[str, str]] = set()
        for line in _readings(raw):
            for kind, pattern in PATTERNS.items():
                for match in pattern.finditer(line):
                    if match.group(0) in safe or (kind, match.group(0)) in seen:
                        continue
                    seen.add((kind, match.group(0)))
                    shown = line.replace(match.group(0), f"<{kind}: {scrub(match.group(0))}>")
                    found.append((kind, _masked_line(shown)))
    return found


def _readings(line: str) -> list[str]:
    """The line as written, percent-decoded (up to three times, for double encoding),
    and decoded with a "+" between digits read as a space (as in a query string)."""
    readings = [line]
    for spaced in (False, True):
        decoded = _PLUS_IN_DIGITS.sub(" ", line) if spaced else line
        for _ in range(3):
            once = unquote(decoded)
            if once == decoded:
                break
            decoded = once
        if decoded not in readings:
            readings.append(decoded)
    return readings


def _masked_line(line: str) -> str:
    # Never echo what was found, even in a failure message (CI logs are kept too).
    masked = scrub(line)
    masked = SECRET_PARAM.sub(lambda m: m.group(0).split("=", 1)[0] + "=[hidden]", masked)
    masked = SECRET_SEGMENT.sub(lambda m: m.group(0).rsplit("/", 1)[0] + "/[hidden]", masked)
    return masked[:400]


class _KeepHandler:
    """Wraps ``configure_logging`` so the file handler survives each call."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self.original = notifier_logging.configure_logging

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.original(*args, **kwargs)  # type: ignore[arg-type]
        root = logging.getLogger()
        if self.handler not in root.handlers:
            root.addHandler(self.handler)


@contextlib.contextmanager
def _session_file() -> Iterator[Path]:
    """``SERVICE_LOG``, held for this session; a test session already running in the
    same checkout keeps it, and this one writes ``service-log.<pid>.jsonl`` instead
    (removed at the end), so neither empties nor mixes into the other's."""
    SERVICE_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(SERVICE_LOG.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            own = SERVICE_LOG.with_name(f"service-log.{os.getpid()}.jsonl")
            try:
                yield own
            finally:
                own.unlink(missing_ok=True)
            return
        yield SERVICE_LOG


@contextlib.contextmanager
def capture_service_log(level: str = "INFO") -> Iterator[Path]:
    with _session_file() as path, _capture(path, level):
        yield path


@contextlib.contextmanager
def _capture(path: Path, level: str) -> Iterator[None]:
    path.write_text("", encoding="utf-8")  # this session's lines only
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    notifier_logging.configure_logging(level, "json")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(root.handlers[0].formatter)  # the service's masked JSON renderer
    root.addHandler(handler)
    keeper = _KeepHandler(handler)
    notifier_logging.configure_logging = keeper  # type: ignore[assignment]
    try:
        yield
    finally:
        notifier_logging.configure_logging = keeper.original  # type: ignore[assignment]
        handler.close()
        if handler in root.handlers:
            root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
