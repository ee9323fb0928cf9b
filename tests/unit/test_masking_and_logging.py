"""Personal data never reaches the logs in clear: scrub, masks, hashes, the log pipeline."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterator

import pytest
import structlog

from notifier.logging import configure_logging, get_logger, mask_personal_data
from notifier.masking import mask_recipient, recipient_hash, scrub

PHONE = "0901888484"
PHONE_INTL = "+84 90 188 8484"
EMAIL = "nguyen.van.an@gmail.com"
CITIZEN_ID = "001203004567"
PASSWORD = "hunter2-Pa55word"
TOKEN = "zalo-refresh-7f3a9c1b"
API_KEY = "ntf_live_4b8e2d6a9c"
EVENT_ID = "2c7e9b4f-8a1d-4f3c-9e6b-7d2a5c0f8e44"
DOSSIER_CODE = "000.00.12.H29-231025-0001"

CLEAR_VALUES = [PHONE, PHONE_INTL, "84901888484", "090.188.8484", EMAIL, CITIZEN_ID]
SECRETS = [PASSWORD, TOKEN, API_KEY]


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# --- scrub ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone", [PHONE, PHONE_INTL, "84901888484", "090.188.8484", "0901 888 484"]
)
@pytest.mark.parametrize(
    ("before", "after"),
    [("Gọi ", " để hỏi"), ("phone:", ";"), ("(", ")"), ("", "")],
)
def test_scrub_masks_vietnamese_phones_in_every_written_form(
    phone: str, before: str, after: str
) -> None:
    scrubbed = scrub(f"{before}{phone}{after}")
    assert scrubbed.startswith(before)
    assert scrubbed.endswith(after)
    masked = scrubbed[len(before) : len(scrubbed) - len(after)]
    assert "*" in masked
    assert _digits(masked) == "484"  # only the last three digits survive


def test_scrub_masks_several_phones_in_one_line() -> None:
    scrubbed = scrub(f"{PHONE},0912345678 và {PHONE_INTL}")
    assert _digits(scrubbed) == "484678484"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Email: {EMAIL}.", "Email: n***@gmail.com."),
        ("to=Tran.Thi.B+tthc@sotuphap.khanhhoa.gov.vn", "to=T***@sotuphap.khanhhoa.gov.vn"),
        ("<a@b.vn>", "<a***@b.vn>"),
    ],
)
def test_scrub_masks_emails_keeping_first_character_and_domain(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text", [f"CCCD {CITIZEN_ID}", f"citizen_id={CITIZEN_ID},", "CMND 123456789"]
)
def test_scrub_masks_citizen_ids(text: str) -> None:
    scrubbed = scrub(text)
    number = re.search(r"\d{9,12}", text)
    assert number is not None
    assert number.group(0) not in scrubbed
    assert _digits(scrubbed) == number.group(0)[-3:]


@pytest.mark.parametrize(
    "text",
    [
        DOSSIER_CODE,
        f"hồ sơ {DOSSIER_CODE} đã được tiếp nhận",
        "000.01.31.H26-261124-0032",
        "https://dichvucong.gov.vn/p/x?ma-ho-so=000.01.31.H26-261124-0032",
        "2026-11-26T02:30:00+00:00",
        "2026-11-26T09:30:00.123456+07:00",
        "2026-11-26T02:30:00Z",
        EVENT_ID,
        "00000000-0000-0000-0000-000000000000",
        "1.250.000 đồng",
        "50.000 đồng",
        "amount_due=1250000",
        "VND 1,250,000",
        "procedure 1.001234 attempt 3 of 8, 2000 ms",
    ],
)
def test_scrub_leaves_codes_timestamps_uuids_and_amounts_unchanged(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "clear", "kept"),
    [
        ("GET /v1/opt-outs?phone=%2B84987000111 HTTP/1.1", "84987000111", "111"),
        ("GET /v1/opt-outs?phone=%2b84987000111&x=1", "84987000111", "111"),
        ("/v1/deliveries?recipient=erin%40example.org", "erin", "e***@example.org"),
        ("/v1/deliveries?recipient=erin%2540example.org", "erin", "e***@example.org"),
        ("/v1/deliveries?recipient=%252B84987000111", "84987000111", "111"),
        ("/v1/opt-outs?phone=0987+000+111", "987", "111"),
        ("GET /v1/inbox/030192007788/notifications HTTP/1.1", "030192007788", "788"),
        ("GET /v1/inbox/030192007788 HTTP/1.1", "030192007788", "788"),
        ("/v1/inbox/vneid-030192007788/unread-count", "030192007788", "788"),
        ("/v1/inbox/%2B84987000111/stream", "84987000111", "111"),
    ],
)
def test_scrub_masks_contacts_in_urls_percent_encoded_and_in_paths(
    text: str, clear: str, kept: str
) -> None:
    scrubbed = scrub(text)
    assert clear not in scrubbed
    assert kept in scrubbed
    assert scrubbed.split("?")[0].split("/")[:3] == text.split("?")[0].split("/")[:3]


def test_scrub_keeps_the_rest_of_an_encoded_url_as_it_was() -> None:
    line = "GET /v1/deliveries?recipient=erin%40example.org&note=a%20b%0Ac HTTP/1.1"
    scrubbed = scrub(line)
    # Re-encoded where it was rewritten, so a decoded newline cannot forge a log line.
    assert "\n" not in scrubbed
    assert "e***@example.org" in scrubbed
    assert scrub("GET /v1/reports?from=2026-11-01&note=100%25 HTTP/1.1") == (
        "GET /v1/reports?from=2026-11-01&note=100%25 HTTP/1.1"
    )


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/deliveries/09564760-3575-4899-980c-123456789012 HTTP/1.1",
        "/v1/dossiers/000.00.12.H29-231025-0001/timeline",
        "/v1/dossiers/000.00.12.H29-231025-0001?lang=en%20",
        "/console/static/app.css?v=20261126",
    ],
)
def test_scrub_leaves_uuids_dossier_codes_and_dates_in_paths_unchanged(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_access_log_lines_never_show_contacts_in_any_encoding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", log_format="json")
    access = logging.getLogger("uvicorn.access")
    # uvicorn's own format and arguments: client, method, path with query, version, status.
    for path in (
        "/v1/opt-outs?phone=%2B84987000111",
        "/v1/deliveries/search?recipient=erin%40example.org",
        "/v1/inbox/030192007788/notifications",
    ):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    err = capsys.readouterr().err
    for clear in ("84987000111", "erin", "030192007788"):
        assert clear not in err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.strip()]
    assert events == [
        '127.0.0.1:5000 - "GET /v1/opt-outs?phone=********111 HTTP/1.1" 200',
        '127.0.0.1:5000 - "GET /v1/deliveries/search?recipient=e***@example.org HTTP/1.1" 200',
        '127.0.0.1:5000 - "GET /v1/inbox/*********788/notifications HTTP/1.1" 200',
    ]


@pytest.mark.parametrize("text", ["125.000.000 đồng", "phí 1.250.000.000 đồng"])
def test_scrub_leaves_large_formatted_amounts_unchanged(text: str) -> None:
    # BUG: an amount as rendering formats it ("125.000.000 đồng", 9+ digits grouped by
    # dots, e.g. a land-use fee) is taken for a phone/id and masked.
    assert scrub(text) == text


# --- mask_recipient and recipient_hash --------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("citizen@example.com", "c***@example.com"),
        (PHONE, "*******484"),
        (PHONE_INTL, "********484"),
        ("vneid-030192007788", "*********788"),
        ("zalo-user-abcdef", "zal***"),
        ("acc-1", "***"),
    ],
)
def test_mask_recipient_shapes(recipient: str, expected: str) -> None:
    assert mask_recipient(recipient) == expected


def test_recipient_hash_is_stable_across_case_spaces_and_normal_forms() -> None:
    key = "k" * 32
    reference = recipient_hash("citizen@example.com", key)
    assert recipient_hash("Citizen@Example.COM", key) == reference
    assert recipient_hash("  citizen@example.com\n", key) == reference
    name = "nguyễn@example.vn"
    assert recipient_hash(unicodedata.normalize("NFD", name), key) == recipient_hash(name, key)


def test_recipient_hash_depends_on_key_and_recipient_and_hides_it() -> None:
    first = recipient_hash(EMAIL, "key-one-0123456789")
    assert first != recipient_hash(EMAIL, "key-two-0123456789")
    assert first != recipient_hash("other@gmail.com", "key-one-0123456789")
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert "gmail" not in first


# --- the structlog processor ------------------------------------------------------------


def test_mask_personal_data_processor_masks_nested_values_and_redacts_secrets() -> None:
    event = mask_personal_data(
        None,
        "info",
        {
            "event": f"sent to {PHONE}",
            "Phone": PHONE,
            "recipient": "acc-123456789",
            "Authorization": "Bearer abc.def",
            "smtp": {"password": PASSWORD, "to": [EMAIL, PHONE], "host": "smtp.example.vn"},
            "attempt": 3,
            "dossier_code": DOSSIER_CODE,
        },
    )
    assert event["event"] == "sent to *******484"
    assert event["Phone"] == "*******484"
    assert event["recipient"] == "******789"
    assert event["Authorization"] == "[redacted]"
    assert event["smtp"] == {
        "password": "[redacted]",
        "to": ["n***@gmail.com", "*******484"],
        "host": "smtp.example.vn",
    }
    assert event["attempt"] == 3
    assert event["dossier_code"] == DOSSIER_CODE


# --- the configured pipeline: structlog and the standard library ------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pika_level = logging.getLogger("pika").level
    # Put back the set-up the session had (the service log's masked pipeline), not
    # structlog's defaults: those print to stdout, around every handler, and whatever
    # test ran next would log in clear outside the service log.
    structlog_config = structlog.get_config()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**structlog_config)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pika").setLevel(pika_level)


def _fail_with_personal_data(password: str = PASSWORD) -> None:
    # ``password`` is a local variable, as tracebacks that show locals would print it.
    raise RuntimeError(f"SMTP 550 for {EMAIL} / {PHONE} (cccd {CITIZEN_ID})")


def _log_everything() -> None:
    log = get_logger("notifier.tests.unit")
    log.info(
        f"sending to {PHONE} and {EMAIL}",
        phone=PHONE_INTL,
        email=EMAIL,
        citizen_id=CITIZEN_ID,
        detail=f"cccd {CITIZEN_ID}, zalo 84901888484, sms 090.188.8484",
        password=PASSWORD,
        token=TOKEN,
        api_key=API_KEY,
    )
    # Libraries log through the standard library, with %-style arguments.
    logging.getLogger("dramatiq.worker.WorkerThread").warning(
        "actor failed for %s (%s), cccd %s", PHONE, EMAIL, CITIZEN_ID
    )
    logging.getLogger("uvicorn.error").error("client %s sent %s", PHONE_INTL, EMAIL)
    try:
        _fail_with_personal_data()
    except RuntimeError:
        logging.getLogger("dramatiq.middleware.retries").exception("retrying %s", PHONE)
        log.exception("send failed", token=TOKEN)


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_never_show_personal_data_or_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", log_format="json")
    structlog.contextvars.bind_contextvars(event_id=EVENT_ID, dossier_code=DOSSIER_CODE)
    _log_everything()

    err = capsys.readouterr().err
    for value in CLEAR_VALUES + SECRETS:
        assert value not in err, value
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert [line["logger"] for line in lines] == [
        "notifier.tests.unit",
        "dramatiq.worker.WorkerThread",
        "uvicorn.error",
        "dramatiq.middleware.retries",
        "notifier.tests.unit",
    ]
    for line in lines:
        assert line["event_id"] == EVENT_ID
        assert line["dossier_code"] == DOSSIER_CODE
    first = lines[0]
    assert first["password"] == first["token"] == first["api_key"] == "[redacted]"
    assert first["phone"] == "********484"
    assert first["email"] == "n***@gmail.com"
    assert first["citizen_id"] == "*********567"
    assert first["event"] == "sending to *******484 and n***@gmail.com"
    assert lines[1]["event"] == "actor failed for *******484 (n***@gmail.com), cccd *********567"
    assert lines[1]["level"] == "warning"
    # Exceptions are rendered to text, then scrubbed.
    assert "RuntimeError: SMTP 550 for n***@gmail.com / *******484" in lines[3]["exception"]
    assert "RuntimeError" in lines[4]["exception"]
    assert lines[4]["token"] == "[redacted]"


@pytest.mark.usefixtures("restore_logging")
def test_console_logs_never_show_personal_data_in_exceptions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # BUG: in console format (what "auto" picks when stderr is a terminal) exceptions are
    # rendered by ConsoleRenderer's rich traceback after every masking processor ran, so
    # the exception text and the traceback's local variables are printed in clear.
    configure_logging("INFO", log_format="console")
    structlog.contextvars.bind_contextvars(event_id=EVENT_ID, dossier_code=DOSSIER_CODE)
    _log_everything()

    err = capsys.readouterr().err
    assert "RuntimeError" in err
    for value in CLEAR_VALUES + SECRETS:
        assert value not in err, value


@pytest.mark.usefixtures("restore_logging")
def test_console_logs_mask_fields_and_carry_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", log_format="console")
    structlog.contextvars.bind_contextvars(event_id=EVENT_ID, dossier_code=DOSSIER_CODE)
    get_logger("notifier.tests.unit").info("sent", phone=PHONE, password=PASSWORD)
    logging.getLogger("uvicorn.error").warning("from %s", EMAIL)

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        assert EVENT_ID in line
        assert DOSSIER_CODE in line
        assert PHONE not in line
        assert EMAIL not in line
        assert PASSWORD not in line
    assert "[redacted]" in lines[0]


@pytest.mark.usefixtures("restore_logging")
def test_log_level_filters_and_pika_is_quieted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", log_format="json")
    get_logger("notifier.tests.unit").info("hidden info")
    logging.getLogger("pika.adapters").info("frame narrated")
    get_logger("notifier.tests.unit").warning("shown warning")

    err = capsys.readouterr().err
    assert "hidden info" not in err
    assert "frame narrated" not in err
    assert "shown warning" in err
    assert logging.getLogger("pika").level == logging.WARNING


@pytest.mark.usefixtures("restore_logging")
def test_secrets_in_urls_are_redacted_by_the_pipeline_whatever_library_logs_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A worker never builds the HTTP API, so no logger filter is installed there: the
    # pipeline itself must redact a token in a URL that any library (httpx, a provider's
    # SDK) logs, as it masks contacts.
    configure_logging("INFO", log_format="json")
    url = f"http://127.0.0.1:9/v1/receipts/esms?token={TOKEN}&SendStatus=5"
    logging.getLogger("a.provider.sdk").info('HTTP Request: GET %s "HTTP/1.1 200 OK"', url)
    get_logger("notifier.tests.unit").info("callback", url=url)

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        assert TOKEN not in json.dumps(line)
    assert "?token=[redacted]&SendStatus=5" in lines[0]["event"]
    assert lines[1]["url"].endswith("?token=[redacted]&SendStatus=5")
