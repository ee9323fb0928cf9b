"""The adapter kit (issue 7) end to end:

(a) the contract kit passes a well-behaved adapter and fails deliberately broken ones,
    each on the check it breaks (run in a pytest subprocess, read from its JUnit report);
(b) `notifier adapters new` writes a package that installs, is discovered through its
    entry point and passes its own tests;
(c) the webhook package, installed in this environment, is found through its entry
    point and routed to by configuration alone, delivering correctly signed requests
    to a local app, whose signed receipt then marks the delivery delivered;
(d) routing and fallback rules are validated at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from notifier.app import Notifier
from notifier.cli.main import main
from notifier.events import Status
from notifier.ops.samples import sample_event
from notifier.pipeline.routing import Routing
from notifier.plugins.registry import Registry
from notifier.settings import SettingsError
from notifier.store.migrate import upgrade
from notifier.store.schema import deliveries
from notifier.testing import LocalHttpServer, RecordedRequest, Reply, run
from notifier.web.api import create_api
from tests.support import REPO, RunningWorker, make_settings, wait_until

# -- (a) the kit fails adapters that break the contract -------------------------------------

# A test module run in a subprocess: one adapter that honours the contract and variants
# that each break one rule, every one of them run through the kit.
SUBJECTS = """
from __future__ import annotations

import hmac
import socket
import uuid
from typing import Any, ClassVar

import httpx
from pydantic import ConfigDict, SecretStr

from notifier.adapter import (
    Adapter, AdapterSettings, InboundMessage, InvalidReceipt, OutboundMessage,
    PermanentFailure, Receipt, ReceiptRequest, RecipientKind, SendResult, TemplatePart,
    TemporaryFailure, UncertainSendPolicy,
)
from notifier.adapter_http import request
from notifier.logging import get_logger
from notifier.testing import AdapterContract, LocalHttpServer

log = get_logger("kit_subject")


def secret_of(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


class GoodSettings(AdapterSettings):
    url: str
    token: SecretStr
    timeout_s: float = 5.0


class Good(Adapter[GoodSettings]):
    name = "kit_good"
    channel = "kit_test"
    description = "an adapter that honours the contract"
    settings_model = GoodSettings
    recipient_kind = RecipientKind.PORTAL_ACCOUNT
    template_parts = (TemplatePart("title", max_length=80), TemplatePart("body"))
    accepts_receipts: ClassVar[bool] = True

    def __init__(self, settings: Any, context: Any) -> None:
        super().__init__(settings, context)
        self.client: httpx.AsyncClient | None = None

    def reference(self, message: OutboundMessage) -> str:
        return str(message.delivery_id)

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = self.context.http_client(timeout=self.settings.timeout_s)
        return self.client

    async def post(self, message: OutboundMessage) -> httpx.Response:
        return await self.exchange(
            json={"to": message.recipient, **message.parts},
            headers={"Idempotency-Key": self.reference(message)},
        )

    async def exchange(self, **kwargs: Any) -> httpx.Response:
        return await request(
            self.http(), "POST", self.settings.url, provider="the provider", **kwargs
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        return self.classify(await self.post(message))

    def classify(self, response: httpx.Response) -> SendResult:
        if response.status_code >= 500:
            raise TemporaryFailure("provider busy", code=str(response.status_code))
        if response.status_code >= 400:
            raise PermanentFailure("refused", code=str(response.status_code))
        return SendResult(provider_message_id="m-1")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    @classmethod
    def parse_receipt(cls, settings: Any, request: ReceiptRequest) -> list[Receipt]:
        token = request.headers.get("x-token", "")
        if not hmac.compare_digest(token, secret_of(settings.token)):
            raise InvalidReceipt("bad token")
        return cls.read(request)

    @classmethod
    def read(cls, request: ReceiptRequest) -> list[Receipt]:
        try:
            return [Receipt(delivered=True, delivery_id=uuid.UUID(request.body.decode()))]
        except (ValueError, UnicodeDecodeError):
            raise InvalidReceipt("not a delivery id") from None


class LeaksHttpxErrors(Good):
    async def exchange(self, **kwargs: Any) -> httpx.Response:
        return await self.http().post(self.settings.url, **kwargs)  # timeouts, refusals escape


class ForgetsMaybeSent(LeaksHttpxErrors):
    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            response = await self.post(message)
        except httpx.HTTPError as exc:  # a read timeout too: the provider may have it
            raise TemporaryFailure(f"unreachable: {type(exc).__name__}") from exc
        return self.classify(response)


class LogsRecipient(Good):
    async def post(self, message: OutboundMessage) -> httpx.Response:
        log.info("pushing notification", account=message.recipient)
        return await super().post(message)


class IgnoresDeliveryId(Good):
    def reference(self, message: OutboundMessage) -> str:
        return str(uuid.uuid4())


class PlainSettings(AdapterSettings):
    url: str
    token: str  # a secret as a plain str
    timeout_s: float = 5.0


class PlainSecret(Good):
    settings_model = PlainSettings


class CloseTwiceRaises(Good):
    closed = False

    async def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True
        await super().close()


class LeavesConnectionsOpen(Good):
    async def close(self) -> None:
        pass  # keeps its pooled connection open


class EverythingTemporary(Good):
    def classify(self, response: httpx.Response) -> SendResult:
        if response.status_code >= 400:
            raise TemporaryFailure("failed", code=str(response.status_code))
        return SendResult()


class AcceptsForgedReceipts(Good):
    @classmethod
    def parse_receipt(cls, settings: Any, request: ReceiptRequest) -> list[Receipt]:
        return cls.read(request)


# Also reads citizens' messages: "<id>|<sender>|<text>", the token in a header.
class GoodInbound(Good):
    accepts_inbound: ClassVar[bool] = True

    @classmethod
    def parse_inbound(cls, settings: Any, request: ReceiptRequest) -> list[InboundMessage]:
        token = request.headers.get("x-token", "")
        if not hmac.compare_digest(token, secret_of(settings.token)):
            raise InvalidReceipt("bad token")
        return cls.read_inbound(request)

    @classmethod
    def read_inbound(cls, request: ReceiptRequest) -> list[InboundMessage]:
        try:
            ident, sender, text = request.body.decode().split("|", 2)
        except (ValueError, UnicodeDecodeError):
            raise InvalidReceipt("not a message") from None
        return [InboundMessage(sender=sender, text=text, provider_message_id=ident)]


class AcceptsForgedInbound(GoodInbound):
    @classmethod
    def parse_inbound(cls, settings: Any, request: ReceiptRequest) -> list[InboundMessage]:
        return cls.read_inbound(request)


class TypoTolerantSettings(GoodSettings):
    model_config = ConfigDict(extra="ignore")


class TypoTolerant(Good):
    settings_model = TypoTolerantSettings


class VerifyWithoutLookup(Good):
    uncertain_send_policy = UncertainSendPolicy.VERIFY


class AllBroken(LeaksHttpxErrors, LogsRecipient, IgnoresDeliveryId, CloseTwiceRaises):
    settings_model = PlainSettings


class Hooks(AdapterContract):
    not_applicable = {"entry_point": "defined in a test module, not installed"}
    close_timeout_s = 1.0

    def provider(self) -> LocalHttpServer:
        return LocalHttpServer()

    def valid_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        return {"url": provider.url + "/send", "token": "s3cret-token-value", "timeout_s": 0.4}

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [{"timeout_s": "soon"}]

    def cause_temporary_failure(self, provider: LocalHttpServer) -> None:
        provider.fail_next(503)

    def cause_permanent_failure(self, provider: LocalHttpServer) -> None:
        provider.fail_next(400)

    def cause_timeout(self, provider: LocalHttpServer) -> None:
        provider.hang_next(seconds=3)

    def unreachable_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return {**self.valid_settings(provider), "url": f"http://127.0.0.1:{port}/send"}

    def no_answer_settings(self, provider: LocalHttpServer, url: str) -> dict[str, Any]:
        return {**self.valid_settings(provider), "url": url + "/send"}

    def sent_reference(self, provider: LocalHttpServer) -> str | None:
        request = provider.last_request
        return None if request is None else request.header("idempotency-key")

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        return ReceiptRequest(
            "POST", {"x-token": secret_of(settings.token)}, {}, str(delivery_id).encode(), 0
        )

    def valid_inbound(self, settings: Any, sender: str, text: str) -> ReceiptRequest:
        body = f"mo-1|{sender}|{text}".encode()
        return ReceiptRequest("POST", {"x-token": secret_of(settings.token)}, {}, body, 0)
"""

KIT_TESTS = [
    "test_declarations_are_well_formed",
    "test_is_registered_under_the_entry_point",
    "test_valid_settings_are_accepted",
    "test_invalid_settings_are_refused",
    "test_secret_settings_are_secret",
    "test_a_send_returns_a_send_result",
    "test_parts_at_their_declared_maximum_are_accepted",
    "test_the_delivery_id_reaches_the_provider",
    "test_a_temporary_failure_is_reported_as_temporary",
    "test_a_permanent_failure_is_reported_as_permanent",
    "test_a_slow_provider_is_a_temporary_failure",
    "test_no_answer_after_the_request_went_out_is_maybe_sent",
    "test_an_unreachable_provider_is_a_temporary_failure",
    "test_logs_never_show_the_recipient",
    "test_close_is_clean_and_repeatable",
    "test_health_answers",
    "test_receipts_are_parsed",
    "test_forged_receipts_are_refused",
    "test_inbound_messages_are_read",
    "test_forged_inbound_calls_are_refused",
    "test_templates_render",
]

# A subject whose test class leaves a hook out without declaring the scenario
# not applicable, and declares another one not applicable.
LAZY = """

class TestLazy(Hooks):
    adapter_class = Good
    cause_permanent_failure = AdapterContract.cause_permanent_failure
    not_applicable = {"entry_point": "a test module", "timeout": "no timeouts here"}
"""


def _docs_example() -> str:
    """The minimal adapter of docs/adapters.md, exactly as printed there."""
    text = (REPO / "docs" / "adapters.md").read_text("utf-8")
    start = text.index("```python\n# ott.py: a complete adapter") + len("```python\n")
    return "\n\n" + text[start : text.index("```", start)]


# Subjects whose adapter class has another name than the subject.
ADAPTER_OF = {"DocsExample": "OttAdapter"}

# Each subject and the kit checks it must fail: exactly these, no more.
EXPECTED_FAILURES: dict[str, set[str]] = {
    "Good": set(),
    "DocsExample": set(),
    "LeaksHttpxErrors": {
        "test_a_slow_provider_is_a_temporary_failure",
        "test_no_answer_after_the_request_went_out_is_maybe_sent",
        "test_an_unreachable_provider_is_a_temporary_failure",
    },
    "ForgetsMaybeSent": {"test_no_answer_after_the_request_went_out_is_maybe_sent"},
    "LogsRecipient": {"test_logs_never_show_the_recipient"},
    "IgnoresDeliveryId": {"test_the_delivery_id_reaches_the_provider"},
    "PlainSecret": {"test_secret_settings_are_secret"},
    "CloseTwiceRaises": {"test_close_is_clean_and_repeatable"},
    "LeavesConnectionsOpen": {"test_close_is_clean_and_repeatable"},
    "EverythingTemporary": {"test_a_permanent_failure_is_reported_as_permanent"},
    "AcceptsForgedReceipts": {"test_forged_receipts_are_refused"},
    "GoodInbound": set(),
    "AcceptsForgedInbound": {"test_forged_inbound_calls_are_refused"},
    "TypoTolerant": {"test_declarations_are_well_formed", "test_invalid_settings_are_refused"},
    "VerifyWithoutLookup": {"test_declarations_are_well_formed"},
    "AllBroken": {
        "test_a_slow_provider_is_a_temporary_failure",
        "test_no_answer_after_the_request_went_out_is_maybe_sent",
        "test_an_unreachable_provider_is_a_temporary_failure",
        "test_logs_never_show_the_recipient",
        "test_the_delivery_id_reaches_the_provider",
        "test_secret_settings_are_secret",
        "test_close_is_clean_and_repeatable",
    },
}

# Words the kit's failure message must use, so a developer knows what to fix.
EXPECTED_MESSAGES = {
    "LeaksHttpxErrors": ["httpx.ConnectError", "report it as TemporaryFailure"],
    "ForgetsMaybeSent": ["without maybe_sent=True", "notifier.adapter_http.request"],
    "LogsRecipient": ["the recipient appears in clear in log lines", "«RECIPIENT»"],
    "IgnoresDeliveryId": ["does not hold the delivery id"],
    "PlainSecret": ["'token' holds a secret but is typed"],
    "CloseTwiceRaises": ["the second close() after a send raised RuntimeError"],
    "LeavesConnectionsOpen": ["still open after close()"],
    "EverythingTemporary": ["expected PermanentFailure"],
    "AcceptsForgedReceipts": ["forged receipt #1 was accepted"],
    "AcceptsForgedInbound": ["forged inbound call #1 was accepted"],
    "TypoTolerant": ["extra='forbid'", "an unknown key"],
    "VerifyWithoutLookup": ["VERIFY but lookup is not implemented"],
}


def _subprocess_env(*extra_paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p) for p in extra_paths] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _read_report(report: Path, outcomes: dict[str, dict[str, str]]) -> None:
    for case in ET.parse(report).getroot().iter("testcase"):
        subject = case.attrib["classname"].rsplit(".", 1)[-1].removeprefix("Test")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            outcome = "failed: " + failure.attrib.get("message", "") + (failure.text or "")
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes.setdefault(subject, {})[case.attrib["name"]] = outcome


@pytest.fixture(scope="module")
def kit_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Run the kit on every subject once; {class: {test: "passed"|"failed: msg"|"skipped"}}.

    The kit mostly waits (timeouts, sockets), so the subjects run in three pytest
    processes at once."""
    folder = tmp_path_factory.mktemp("kit")
    names = list(EXPECTED_FAILURES)
    runs = []
    for group in range(3):
        module = folder / f"test_subjects_{group}.py"
        classes = "".join(
            f"\n\nclass Test{name}(Hooks):\n    adapter_class = {ADAPTER_OF.get(name, name)}\n"
            for name in names[group::3]
        )
        extra = LAZY if group == 0 else ""
        module.write_text(SUBJECTS + _docs_example() + classes + extra, "utf-8")
        report = folder / f"report_{group}.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
            f"--junitxml={report}", module.name,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=folder, env=_subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        runs.append((process, report))
    outcomes: dict[str, dict[str, str]] = {}
    for process, report in runs:
        output, _ = process.communicate(timeout=120)
        assert report.is_file(), output
        _read_report(report, outcomes)
    return outcomes


@pytest.mark.parametrize("subject", list(EXPECTED_FAILURES))
def test_the_kit_fails_exactly_what_each_adapter_breaks(
    kit_report: dict[str, dict[str, str]], subject: str
) -> None:
    outcomes = kit_report[subject]
    assert set(outcomes) == set(KIT_TESTS)  # the whole kit ran on it
    failed = {test for test, outcome in outcomes.items() if outcome.startswith("failed")}
    assert failed == EXPECTED_FAILURES[subject], {t: outcomes[t][:300] for t in failed}
    for words in EXPECTED_MESSAGES.get(subject, []):
        assert any(words in outcomes[t] for t in failed), (words, [outcomes[t] for t in failed])
    # Nothing relevant is silently skipped: only the declared scenario, the templates
    # check (no templates_dir) and, for an adapter without receipts, the receipt checks.
    skipped = {test for test, outcome in outcomes.items() if outcome == "skipped"}
    expected = {"test_is_registered_under_the_entry_point", "test_templates_render"}
    if subject not in ("GoodInbound", "AcceptsForgedInbound"):
        # The inbound capability is optional: checked only where it is declared.
        expected |= {"test_inbound_messages_are_read", "test_forged_inbound_calls_are_refused"}
    if subject == "DocsExample":
        expected |= {"test_receipts_are_parsed", "test_forged_receipts_are_refused"}
    assert skipped == expected


def test_a_hook_neither_implemented_nor_declared_fails_with_guidance(
    kit_report: dict[str, dict[str, str]],
) -> None:
    outcomes = kit_report["Lazy"]
    permanent = outcomes["test_a_permanent_failure_is_reported_as_permanent"]
    assert permanent.startswith("failed")
    assert "implement cause_permanent_failure(provider) in TestLazy" in permanent
    assert "not_applicable = {'permanent_failure': 'the reason'}" in permanent
    assert outcomes["test_a_slow_provider_is_a_temporary_failure"] == "skipped"
    failed = {test for test, outcome in outcomes.items() if outcome.startswith("failed")}
    assert failed == {"test_a_permanent_failure_is_reported_as_permanent"}


# -- (b) the scaffold -----------------------------------------------------------------------


def _can_build_without_isolation() -> bool:
    """Whether this environment's setuptools can build a wheel offline: with the wheel
    package, or from 70.1 on (bdist_wheel built in). Else pip fetches a build backend."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        major, minor = (int(n) for n in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def test_the_scaffold_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "adapters",
            "new",
            "kitdemo",
            "--channel",
            "kit_push",
            "--inbound",  # the optional capability too: the kit checks it below
            "--dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    package = tmp_path / "notifier-kitdemo"
    for relative in (
        "pyproject.toml",
        "README.md",
        "notifier_kitdemo/__init__.py",
        "notifier_kitdemo/adapter.py",
        "notifier_kitdemo/settings.py",
        "notifier_kitdemo/py.typed",
        "tests/test_contract.py",
        "templates/vi/kit_push.toml",
        "templates/en/kit_push.toml",
    ):
        assert (package / relative).is_file(), relative
    pyproject = (package / "pyproject.toml").read_text("utf-8")
    assert '[project.entry-points."notifier.adapters"]' in pyproject
    assert 'kitdemo = "notifier_kitdemo.adapter:KitdemoAdapter"' in pyproject
    assert "AdapterContract" in (package / "tests/test_contract.py").read_text("utf-8")
    assert "def parse_inbound" in (package / "notifier_kitdemo/adapter.py").read_text("utf-8")

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    if _can_build_without_isolation():
        install += ["--no-build-isolation", "--no-index"]
    installed = subprocess.run(
        [*install, str(package)], capture_output=True, text=True, timeout=180
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    env = _subprocess_env(site)
    tests = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--junitxml=report.xml"],
        cwd=package, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    probe = textwrap.dedent(
        """
        import json
        from importlib.metadata import PackageNotFoundError, entry_points, version
        from notifier.plugins.registry import describe_adapter
        [entry] = [e for e in entry_points(group="notifier.adapters") if e.name == "kitdemo"]
        print(json.dumps(describe_adapter(entry.load())))
        """
    )
    described = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    output, _ = tests.communicate(timeout=120)
    assert tests.returncode == 0, output
    suite = ET.parse(package / "report.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.attrib["failures"]) == int(suite.attrib["errors"]) == 0
    ran = int(suite.attrib["tests"]) - int(suite.attrib["skipped"])
    assert ran >= 15  # the kit's checks plus its own example test, not an empty run
    assert described.returncode == 0, described.stderr
    description = json.loads(described.stdout)
    assert description["name"] == "kitdemo"
    assert description["channel"] == "kit_push"
    assert description["module"] == "notifier_kitdemo.adapter"
    settings = {s["name"]: s for s in description["settings"]}
    assert settings["token"]["secret"]
    assert settings["url"]["required"]
    # ...and it is not installed in this test environment itself.
    assert "kitdemo" not in {e.name for e in entry_points(group="notifier.adapters")}


def test_the_scaffold_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["adapters", "new", "Bad-Name", "--dir", str(tmp_path)])
    assert bad.exit_code != 0
    assert "lower-case" in bad.output
    taken = runner.invoke(main, ["adapters", "new", "webhook", "--dir", str(tmp_path)])
    assert taken.exit_code != 0
    assert "already installed" in taken.output
    assert runner.invoke(main, ["adapters", "new", "twice", "--dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(main, ["adapters", "new", "twice", "--dir", str(tmp_path)])
    assert again.exit_code != 0
    assert "already exists" in again.output


def test_the_scaffold_reuses_an_existing_channels_template_parts(tmp_path: Path) -> None:
    # A new SMS gateway must declare the parts config/templates/*/sms.toml provide.
    result = CliRunner().invoke(
        main,
        ["adapters", "new", "sms_acme", "--channel", "sms", "--dir", str(tmp_path)],
        env={"NOTIFIER_CONFIG_DIR": str(REPO / "config")},
    )
    assert result.exit_code == 0, result.output
    adapter = (tmp_path / "notifier-sms-acme/notifier_sms_acme/adapter.py").read_text("utf-8")
    assert '(TemplatePart("text"),)' in adapter
    assert "RecipientKind.PHONE" in adapter
    assert not (tmp_path / "notifier-sms-acme/templates").exists()


# -- (c) the webhook package, through its entry point, routed by configuration ---------------

SECRET = "province-app-shared-secret-0123456789abcdef"
AGENCY = "000.00.12.H29"  # sample_event(0)'s agency


def _signature_ok(request: RecordedRequest) -> bool:
    stamp = request.header("x-notifier-timestamp") or ""
    given = (request.header("x-notifier-signature") or "").removeprefix("sha256=")
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + request.body, hashlib.sha256)
    return stamp.isdigit() and hmac.compare_digest(given, expected.hexdigest())


@pytest.fixture
def province_app() -> Iterator[LocalHttpServer]:
    """The province's app: accepts only correctly signed requests."""
    with LocalHttpServer(
        check=lambda r: None if _signature_ok(r) else Reply(401, {"error": "bad signature"}),
        default=Reply(202, {"message_id": "push-1"}),
    ) as server:
        yield server


def _config_routing_app_push(tmp_path: Path) -> Path:
    """The shipped config, plus one agency override routing `received` to app_push."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "config" / "templates", config / "templates")
    routing = (REPO / "config" / "routing.toml").read_text("utf-8")
    override = f'\n[agencies."{AGENCY}".statuses]\nreceived = ["app_push"]\n'
    (config / "routing.toml").write_text(routing + override, "utf-8")
    return config


def _deliveries(app: Notifier) -> list[dict[str, Any]]:
    with app.database.engine.connect() as connection:
        rows = connection.execute(sa.select(deliveries).order_by(deliveries.c.created_at))
        return [dict(row._mapping) for row in rows]


async def _post_receipts(
    app: Notifier, body: str, *headers: dict[str, str]
) -> list[httpx.Response]:
    """POST a receipt to the app's API (in process) once per set of headers."""
    transport = httpx.ASGITransport(app=create_api(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        return [
            await client.post("/v1/receipts/webhook", content=body, headers=extra)
            for extra in headers
        ]


def test_the_webhook_package_is_routed_to_by_configuration_alone(
    tmp_path: Path, province_app: LocalHttpServer
) -> None:
    found = {e.name: e for e in entry_points(group="notifier.adapters")}
    assert found["webhook"].value == "notifier_webhook.adapter:WebhookAdapter"

    settings = make_settings(
        config_dir=_config_routing_app_push(tmp_path),
        database_url=f"sqlite:///{tmp_path}/notifier.db",
        adapters={"webhook": {"url": province_app.url + "/notify", "secret": SECRET}},
        worker={"min_backoff_ms": 10, "max_backoff_ms": 100, "send_timeout_s": 5},
    )
    app = Notifier(settings)  # no custom registry: real entry-point discovery
    upgrade(app.database)
    [provider] = app.registry.providers("app_push")
    assert provider.adapter_class.__module__ == "notifier_webhook.adapter"
    assert app.routing.channels_for(AGENCY, Status.RECEIVED) == ("app_push",)

    pushed = sample_event(0, status=Status.RECEIVED, event_id=uuid.uuid4())
    assert pushed["agency"]["code"] == AGENCY
    elsewhere = sample_event(
        1, status=Status.RECEIVED, event_id=uuid.uuid4(), contacts={"portal_account_id": "acc-9"}
    )
    with RunningWorker(app):
        for event in (pushed, elsewhere):
            app.submit(json.dumps(event, ensure_ascii=False).encode(), source="test")
        wait_until(
            lambda: (
                {r["channel"]: r["status"] for r in _deliveries(app)}
                == {"app_push": "sent", "portal": "delivered"}
            )
        )
        rows = _deliveries(app)
        [push] = [r for r in rows if r["channel"] == "app_push"]
        receipt = json.dumps({"delivery_id": str(push["delivery_id"]), "delivered": True})
        stamp = str(int(time.time()))
        digest = hmac.new(SECRET.encode(), f"{stamp}.{receipt}".encode(), hashlib.sha256)
        forged, genuine = run(
            _post_receipts(
                app,
                receipt,
                {"x-notifier-timestamp": stamp, "x-notifier-signature": "sha256=" + "0" * 64},
                {
                    "x-notifier-timestamp": stamp,
                    "x-notifier-signature": f"sha256={digest.hexdigest()}",
                },
            )
        )
        final = _deliveries(app)

    # Only the overriding agency's event went to the app, the other one to the default.
    assert {(r["channel"], r["agency_code"]) for r in rows} == {
        ("app_push", AGENCY),
        ("portal", elsewhere["agency"]["code"]),
    }
    [request] = province_app.requests
    assert request.status == 202  # the app verified the signature
    assert _signature_ok(request)
    assert request.header("idempotency-key") == str(push["delivery_id"])
    document = request.json()
    assert document["delivery_id"] == str(push["delivery_id"])
    assert document["account_id"] == "acc-0"
    assert document["dossier_code"] == pushed["dossier"]["code"]
    assert document["title"] == f"Hồ sơ {pushed['dossier']['code']} đã được tiếp nhận"
    assert document["link"] == pushed["dossier"]["tracking_url"]
    assert push["provider"] == "webhook"
    assert push["provider_message_id"] == "push-1"
    # Receipts: the forged one is refused, the signed one marks the delivery delivered.
    assert forged.status_code == 403
    assert genuine.status_code == 200
    assert genuine.json() == {
        "received": 1,
        "applied": 1,
        "duplicates": 0,
        "inbound": 0,
        "opted_out": 0,
    }
    [after] = [r for r in final if r["channel"] == "app_push"]
    assert after["status"] == "delivered"


# -- (d) routing and fallback are validated at start-up --------------------------------------

STATUSES = "\n".join(f'{s.value} = ["portal"]' for s in Status)


def _routing(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.toml"
    path.write_text(text, "utf-8")
    return path


def test_routing_per_agency_and_fallback_order(tmp_path: Path) -> None:
    path = _routing(
        tmp_path,
        f"[statuses]\n{STATUSES}\n"
        f'[agencies."{AGENCY}".statuses]\nreceived = ["app_push", "portal"]\n'
        '[fallback]\napp_push = ["zalo", "sms"]\n',
    )
    routing = Routing.load(path, {"portal", "app_push", "zalo", "sms"})
    assert routing.channels_for(AGENCY, Status.RECEIVED) == ("app_push", "portal")
    assert routing.channels_for(AGENCY, Status.REFUSED) == ("portal",)  # not overridden
    assert routing.channels_for("000.00.20.H56", Status.RECEIVED) == ("portal",)
    assert routing.fallback_for("app_push") == ("zalo", "sms")  # in this order
    # Channels that are not enabled in a deployment are skipped, and reported.
    narrow = Routing.load(path, {"portal", "sms"})
    assert narrow.channels_for(AGENCY, Status.RECEIVED) == ("portal",)
    assert narrow.fallback_for("app_push") == ("sms",)
    assert narrow.skipped_channels == {"app_push", "zalo"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[statuses\nreceived = [", "routing.toml"),
        (f"[statuses]\n{STATUSES}\nbogus_status = [\"portal\"]\n", "bogus_status"),
        (f"[statuses]\n{STATUSES}\n[fallback]\napp_push = \"sms\"\n", "list of channel names"),
        (f'[statuses]\n{STATUSES}\n[agencies."X".statuses]\nreceived = ["App Push"]\n',
         "malformed channel names"),
        ('[statuses]\nreceived = ["portal"]\n', "no rule for"),
        (f"[statuses]\n{STATUSES}\n[fallbacks]\nzalo = [\"sms\"]\n", "unknown sections"),
    ],
)  # fmt: skip
def test_malformed_routing_stops_start_up(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "config"
    config.mkdir()
    _routing(config, text)
    settings = make_settings(config_dir=config, database_url=f"sqlite:///{tmp_path}/n.db")
    with pytest.raises(SettingsError) as refused:
        Notifier(settings, registry=Registry({}))
    assert problem in str(refused.value)


def test_a_providers_published_rate_limit_reaches_the_guard_unless_configured(
    tmp_path: Path,
) -> None:
    # SpeedSMS publishes 60 requests a minute (notifier_sms.speedsms); the worker's
    # guard takes it as the default, and the deployment's own setting wins.
    speedsms = {"brandname": "UBND.HN", "access_token": "t0ken-for-the-test"}
    published = make_settings(
        database_url=f"sqlite:///{tmp_path}/published.db",
        adapters={"speedsms": speedsms},
        channels={"sms": {"providers": ["speedsms"]}},
    )
    policy = Notifier(published).guard.policies["speedsms"]
    assert (policy.rate_per_s, policy.burst) == (1.0, 10)

    configured = make_settings(
        database_url=f"sqlite:///{tmp_path}/configured.db",
        adapters={"speedsms": speedsms},
        channels={"sms": {"providers": ["speedsms"]}},
        providers={"speedsms": {"rate_per_s": 0.2, "burst": 2}},
    )
    policy = Notifier(configured).guard.policies["speedsms"]
    assert (policy.rate_per_s, policy.burst) == (0.2, 2)
