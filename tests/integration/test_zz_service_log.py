"""After the integration tests (this file sorts last among them): everything the service
logged in this session holds no phone number, email, citizen id or secret in clear.

The log is written by the session fixture in tests/conftest.py through the service's
own masked pipeline (see tests/service_log.py), so this is what a production log of
the same traffic would hold. The scan is only meaningful if the traffic really carried
personal data into the log: the security tests log known contacts (masked) on
purpose, and this test checks that their masked forms are there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from notifier.logging import get_logger
from notifier.security import redact_url_secrets
from tests.service_log import find_personal_data

pytestmark = pytest.mark.integration

# Masked forms of contacts test_security.py sends through the service: the STOP reply
# from 84912345678 and the operator's opt-out of Lan.Nguyen@Example.org.
KNOWN_MASKED = ("********678", "L***@Example.org")


def _read(path: Path) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return path.read_text(encoding="utf-8")


def test_the_pipeline_writes_to_the_service_log(service_log: Path) -> None:
    # The file handler sees structlog and standard-library records alike, masked.
    get_logger("notifier.tests.log_scan").info("log scan probe", phone="0901888484")
    logging.getLogger("uvicorn.error").warning("probe from %s", "khai@example.vn")
    text = _read(service_log)
    probe = [json.loads(line) for line in text.splitlines() if "probe" in line]
    assert [p["event"] for p in probe] == ["log scan probe", "probe from k***@example.vn"]
    assert probe[0]["phone"] == "*******484"


def test_nothing_personal_was_logged_in_clear(service_log: Path) -> None:
    text = _read(service_log)
    lines = [line for line in text.splitlines() if line.strip()]
    if not any('"logger": "notifier.' in line for line in lines):
        pytest.skip("no service traffic logged in this session: run the integration tests")
    # Every line is the service's JSON, nothing printed around the pipeline.
    for line in lines:
        json.loads(line)
    findings = find_personal_data(text)
    assert not findings, f"{len(findings)} in clear in the service log:\n" + "\n".join(
        f"  {kind}: {line}" for kind, line in findings[:20]
    )
    if "opt-out recorded" in text:  # the security tests ran: their contacts were logged
        for masked in KNOWN_MASKED:
            assert masked in text, f"expected {masked!r} in the log (masked contacts)"


@pytest.mark.parametrize(
    "clear",
    [
        "0901888484",
        "0901 888 484",
        "090.188.8484",
        "+84 90 188 8484",
        "(+84) 901-888-484",
        "84901888484",
        "minh.khai@example.vn",
        "cccd 001203004567",
        "GET /v1/inbound-sms/esms?token=abcdef123456&Phone=1",
    ],
)
def test_the_scan_finds_personal_data_in_any_form(clear: str) -> None:
    line = json.dumps({"event": f"sending to {clear} now", "logger": "notifier.x"})
    [(_kind, shown)] = find_personal_data(line)
    assert clear not in shown  # the failure message does not repeat it either


def test_the_scan_passes_what_the_service_logs_safely() -> None:
    safe = [
        "*******484",
        "********484",
        "n***@example.vn",
        "000.00.12.H29-231025-0001",
        "09564760-3575-4899-980c-c6639243b5f8",
        "2026-11-26T13:14:59.174123Z",
        "127.0.0.1:39811",
        "elapsed 0.123456789",
        "125.000.000 đồng",
        "?token=[redacted]&SMSID=40842e23613d4c61aeb8bcc0ba6bc66a",
        redact_url_secrets("/v1/receipts/esms?token=abc123&SendStatus=5"),
    ]
    for value in safe:
        assert find_personal_data(json.dumps({"event": value})) == [], value
