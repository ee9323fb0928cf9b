"""The scan of the service log for personal data, and the capture it reads.

Everything the service logs in a test session goes through its own masked pipeline
into test-artifacts/service-log.jsonl (the session fixture in tests/conftest.py, see
tests/service_log.py), and that fixture scans the whole file after the last test, in
whatever order the tests ran: a phone number, email, citizen id or secret in clear
fails the session. These tests check the capture and the scan itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from notifier.app import Notifier
from notifier.logging import get_logger
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.web.api import create_api
from notifier.web.security import redact_url_secrets
from tests.service_log import KNOWN_MASKED, find_personal_data, scan_service_log
from tests.support import ServedApi, make_settings

pytestmark = pytest.mark.integration


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


# Contacts as callers put them in URLs: percent-encoded in a query, and a citizen id as
# the portal account in a path. uvicorn's access log writes each request line.
URL_CONTACTS = (
    "/v1/opt-outs?phone=%2B84987000111",
    "/v1/deliveries/search?recipient=erin%40example.org",
    "/v1/inbox/030192007788/notifications",
    "/v1/inbox/vneid-030192007788/unread-count",
)


def test_contacts_in_request_urls_reach_the_access_log_masked(
    service_log: Path, pg_url: str, pg_database: Database
) -> None:
    key = ApiKeys(pg_database).create("portal-log-scan", ["inbox"], [])
    app = Notifier(make_settings(database_url=pg_url))
    try:
        with ServedApi(create_api(app)) as api:
            for path in URL_CONTACTS:
                httpx.get(api.base_url + path, headers={"Authorization": f"Bearer {key}"})
    finally:
        app.close()
    access = [
        json.loads(line)["event"]
        for line in _read(service_log).splitlines()
        if '"logger": "uvicorn.access"' in line and "/v1/" in line
    ]
    shown = [line for line in access if any(p in line for p in ("opt-outs?", "search?", "inbox/"))]
    assert len(shown) >= len(URL_CONTACTS), access  # the traffic was logged
    assert find_personal_data("\n".join(shown)) == []
    assert any("/v1/inbox/*********788/notifications" in line for line in shown), shown
    assert any("recipient=e***@example.org" in line for line in shown), shown


def _service_line(event: str, **fields: str) -> str:
    return json.dumps({"event": event, "logger": "notifier.pipeline.sending", **fields}) + "\n"


def test_the_session_scan_fails_on_a_phone_logged_in_clear(tmp_path: Path) -> None:
    log = tmp_path / "service-log.jsonl"
    log.write_text(_service_line("sent", provider="esms") + _service_line("to 0901888484"))
    problem = scan_service_log(log)
    assert problem is not None
    assert problem.startswith("1 in clear")
    assert "0901888484" not in problem  # the failure message does not repeat it


def test_the_session_scan_fails_on_a_line_printed_around_the_pipeline(tmp_path: Path) -> None:
    log = tmp_path / "service-log.jsonl"
    log.write_text(_service_line("sent") + "Traceback (most recent call last):\n")
    problem = scan_service_log(log)
    assert problem is not None
    assert "line 2 is not the service's JSON" in problem


def test_the_session_scan_passes_a_masked_log(tmp_path: Path) -> None:
    log = tmp_path / "service-log.jsonl"
    log.write_text(
        _service_line("opt-out recorded", recipient="********678")
        + _service_line("opt-out recorded", recipient="L***@Example.org")
    )
    assert scan_service_log(log, frozenset(KNOWN_MASKED)) is None


def test_the_session_scan_fails_when_a_security_tests_masked_contact_is_missing(
    tmp_path: Path,
) -> None:
    # The security test passed, yet its contact is not in the log: the scan saw nothing.
    log = tmp_path / "service-log.jsonl"
    log.write_text(_service_line("sent"))
    test = "test_operators_record_opt_outs_from_the_cli"
    problem = scan_service_log(log, frozenset({test}))
    assert problem is not None
    assert "L***@Example.org" in problem
    assert scan_service_log(log) is None  # the test did not run: nothing expected


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
        "GET /v1/opt-outs?phone=%2B84987000111 HTTP/1.1",
        "GET /v1/deliveries?recipient=erin%40example.org HTTP/1.1",
        "GET /v1/deliveries?recipient=erin%2540example.org HTTP/1.1",
        "GET /v1/opt-outs?phone=0987+000+111 HTTP/1.1",
        "GET /v1/inbox/030192007788/notifications HTTP/1.1",
        "GET /v1/inbox/vneid-030192007788/unread-count HTTP/1.1",
        "GET /v1/inbox/0987000111/stream HTTP/1.1",
        "GET /v1/receipts/esms/abcdef123456?SMSID=1&SendStatus=5",
        "POST /v1/inbound-sms/speedsms/abcdef123456",
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
        "GET /v1/deliveries/09564760-3575-4899-980c-123456789012 HTTP/1.1",
        "GET /v1/dossiers/000.00.12.H29-231025-0001?lang=en%20 HTTP/1.1",
        "GET /v1/inbox/*********788/notifications HTTP/1.1",
        "GET /v1/opt-outs?phone=********111&note=100%25 HTTP/1.1",
        "GET /v1/reports?from=2026-11-01T00%3A00%3A00%2B07%3A00 HTTP/1.1",
        redact_url_secrets('"GET /v1/receipts/esms/abc123?SMSID=1&SendStatus=5 HTTP/1.1" 200'),
        "/v1/receipts/zalo",
    ]
    for value in safe:
        assert find_personal_data(json.dumps({"event": value})) == [], value
