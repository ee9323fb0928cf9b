"""The adapter contract, as a pytest base class every adapter package runs against itself.

::

    from notifier.testing import AdapterContract, LocalHttpServer

    class TestMyAdapter(AdapterContract):
        adapter_class = MyAdapter

        def provider(self):                      # a stand-in for the real provider
            return LocalHttpServer()

        def valid_settings(self, provider):
            return {"url": provider.url + "/send", "token": "t" * 32, "timeout_s": 0.5}

        def invalid_settings(self):              # each one merged over valid_settings
            return [{"url": "ftp://x"}, {"token": OMIT}]

        def cause_temporary_failure(self, provider):
            provider.fail_next(503)

        def cause_permanent_failure(self, provider):
            provider.fail_next(400)

        def sent_reference(self, provider):     # the reference the provider saw
            return provider.last_request.header("idempotency-key")

The kit then checks what the core relies on (see docs/adapters.md): well-formed
declarations, settings validation and secrets, sends that return a SendResult,
the delivery id passed through as the idempotency reference, failures classified
as TemporaryFailure/PermanentFailure and nothing else escaping, a request that got
no answer reported as ``maybe_sent``, no recipient in
clear in any log line or failure reason, a clean and repeatable close(), health,
receipts that parse while forged ones are refused, and (for ``accepts_inbound``)
citizens' messages read with their sender, text and provider id (``valid_inbound``)
while forged, stale or malformed inbound calls are refused (``forged_inbound``).

A scenario that cannot happen for an adapter is declared with a reason, which the
skip message shows: ``not_applicable = {"permanent_failure": "why"}``. A scenario
hook that is neither implemented nor declared not applicable fails its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import pytest
from pydantic import ValidationError

from notifier.adapter import (
    Adapter,
    AdapterContext,
    AdapterSettings,
    DeliveryFailure,
    Health,
    InboundMessage,
    InvalidReceipt,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
    UncertainSendPolicy,
)
from notifier.testing.helpers import (
    DEFAULT_RECIPIENTS,
    capture_logs,
    make_context,
    recipient_variants,
    run,
    sample_message,
)
from notifier.testing.http import LocalHttpServer, RecordedRequest, Reply

__all__ = ["OMIT", "SCENARIOS", "AdapterContract", "Outcome"]

T = TypeVar("T")

ENTRY_POINT_GROUP: Final = "notifier.adapters"
# Adapter and channel names end up in env variables, URLs and routing files.
NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")
PART_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Setting names that hold a secret, unless they merely name or locate one.
SECRET_WORDS: Final = ("password", "secret", "token", "key")
NOT_SECRET_SUFFIXES: Final = ("_name", "_id", "_url", "_header", "_field", "_path", "_file")

# Scenarios an adapter may declare not applicable (``not_applicable``), with a reason.
SCENARIOS: Final = frozenset(
    {
        "entry_point",
        "temporary_failure",
        "permanent_failure",
        "timeout",
        "no_answer",
        "unreachable",
        "idempotency",
        "close_connections",
        "max_length",
        # Inbound messages carry the provider's message id (refuses replayed calls).
        "inbound_id",
    }
)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()
"""In ``invalid_settings()``: leave this key out of the valid settings."""


@dataclass(frozen=True)
class Outcome:
    """What one send came to: ``sent``, ``temporary``, ``permanent``, ``escaped`` (an
    exception that is not a DeliveryFailure) or ``hung`` (still running at the kit's
    limit, ``send_timeout_s``)."""

    kind: str
    result: SendResult | None = None
    error: BaseException | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        if self.kind == "sent":
            return f"sent ({self.result!r})"
        if self.kind == "hung":
            return f"still running after {self.seconds:.1f}s"
        error = self.error
        return f"raised {type(error).__module__}.{type(error).__qualname__}: {error}"


class _HookMissing(Exception):
    pass


class AdapterContract:
    """Base class of an adapter's contract tests. Subclass it as ``Test<Something>``,
    set ``adapter_class`` and fill in the hooks your adapter can support."""

    adapter_class: ClassVar[type[Adapter[Any]]]
    # Scenario name (see SCENARIOS) -> why it does not apply to this adapter.
    not_applicable: ClassVar[Mapping[str, str]] = {}
    # Settings whose name looks secret (token_..., ..._key) but which are not.
    not_secret_fields: ClassVar[frozenset[str]] = frozenset()
    # If the adapter's receipts carry a timestamp window: older ones must be refused, or
    # acknowledged and ignored (no Receipt: a provider that retries until it gets a 200
    # may sign late retries correctly; see notifier_zalo.receipts).
    receipt_max_age_s: ClassVar[float | None] = None
    # The kit's own limit on one send; keep the adapter's timeouts in valid_settings lower.
    send_timeout_s: ClassVar[float] = 10.0
    # How long close() may take to release the provider's connections.
    close_timeout_s: ClassVar[float] = 3.0
    # Where this channel's templates are (<dir>/<lang>/<channel>.toml), to render them.
    templates_dir: ClassVar[Path | None] = None

    # -- hooks: what the adapter's test module fills in ---------------------------------

    def provider(self) -> AbstractContextManager[Any]:
        """A fresh stand-in for the provider per test (LocalHttpServer, SmtpCatcher, a
        database...), or None. Scenario hooks receive what it yields."""
        return contextlib.nullcontext(None)

    def valid_settings(self, provider: Any) -> dict[str, Any]:
        """Raw settings (as from NOTIFIER_ADAPTERS__...) that point at ``provider``."""
        return {}

    def invalid_settings(self) -> list[dict[str, Any]]:
        """Changes that must each be refused, merged over ``valid_settings`` (a value of
        ``OMIT`` removes the key). Unknown keys and missing required keys are added by
        the kit."""
        return []

    def make_context(self, provider: Any) -> AdapterContext:
        return make_context()

    def make_adapter(self, settings: AdapterSettings, context: AdapterContext) -> Adapter[Any]:
        return self.adapter_class(settings, context)

    def recipient(self) -> str:
        """A valid recipient of the adapter's recipient kind."""
        return DEFAULT_RECIPIENTS[self.adapter_class.recipient_kind]

    def message(self, **overrides: Any) -> OutboundMessage:
        overrides.setdefault("recipient", self.recipient())
        return sample_message(self.adapter_class, **overrides)

    def cause_temporary_failure(self, provider: Any) -> None:
        """Make the provider fail the *next* send in a way worth retrying (5xx, 4xx SMTP
        reply, database down...)."""
        raise _HookMissing("cause_temporary_failure(provider)")

    def cause_permanent_failure(self, provider: Any) -> None:
        """Make the provider refuse the *next* send for good (4xx, 5xx SMTP reply...)."""
        raise _HookMissing("cause_permanent_failure(provider)")

    def cause_timeout(self, provider: Any) -> None:
        """Make the provider answer the next send too late for the adapter's timeout."""
        raise _HookMissing("cause_timeout(provider)")

    def unreachable_settings(self, provider: Any) -> dict[str, Any]:
        """Valid settings pointing at an address where nothing listens."""
        raise _HookMissing("unreachable_settings(provider)")

    def no_answer_settings(self, provider: Any, url: str) -> dict[str, Any]:
        """Valid settings that send to ``url`` (``http://127.0.0.1:<port>``, no slash)
        instead of the provider, with a short timeout (well under ``send_timeout_s``):
        the kit serves an HTTP server there that reads the whole request and never
        answers."""
        raise _HookMissing("no_answer_settings(provider, url)")

    def recover(self, provider: Any) -> None:
        """Undo ``cause_temporary_failure`` if it was not a one-off."""

    def sent_reference(self, provider: Any) -> str | None:
        """The idempotency/tracking reference the provider saw with the last message."""
        raise _HookMissing("sent_reference(provider)")

    def expected_reference(self, delivery_id: uuid.UUID) -> str:
        """What ``sent_reference`` must contain for a delivery (default: the id itself)."""
        return str(delivery_id)

    def open_connections(self, provider: Any) -> int | None:
        """The provider's open client connections, or None if it cannot tell."""
        value = getattr(provider, "active_connections", None)
        return value if isinstance(value, int) else None

    def valid_receipt(self, settings: Any, delivery_id: uuid.UUID) -> ReceiptRequest:
        """A genuine delivery report for ``delivery_id``, as the provider would send it."""
        raise _HookMissing("valid_receipt(settings, delivery_id)")

    def forged_receipts(self, settings: Any, delivery_id: uuid.UUID) -> list[ReceiptRequest]:
        """Receipts that must be refused; by default the genuine one stripped of every
        header, query parameter and path token (its credentials). Extend with your own."""
        genuine = self.valid_receipt(settings, delivery_id)
        return [
            replace(
                genuine,
                headers={k: v for k, v in genuine.headers.items() if k == "content-type"},
                query={},
                token=None,
            )
        ]

    # If the adapter's inbound calls carry a timestamp window, as receipt_max_age_s.
    inbound_max_age_s: ClassVar[float | None] = None

    def valid_inbound(self, settings: Any, sender: str, text: str) -> ReceiptRequest:
        """A genuine call of the provider carrying one citizen's message ``text`` from
        ``sender`` (a phone number for phone channels), as the provider would send it."""
        raise _HookMissing("valid_inbound(settings, sender, text)")

    def forged_inbound(self, settings: Any, sender: str, text: str) -> list[ReceiptRequest]:
        """Inbound calls that must be refused; by default the genuine one stripped of its
        credentials (headers, query, path token), as :meth:`forged_receipts`."""
        genuine = self.valid_inbound(settings, sender, text)
        return [
            replace(
                genuine,
                headers={k: v for k, v in genuine.headers.items() if k == "content-type"},
                query={},
                token=None,
            )
        ]

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def kit_provider(self) -> Iterator[Any]:
        with self.provider() as provider:
            yield provider

    @pytest.fixture
    def kit_settings(self, kit_provider: Any) -> AdapterSettings:
        return self._validated(self.valid_settings(kit_provider), "valid_settings(provider)")

    # -- the contract -----------------------------------------------------------------------

    def test_declarations_are_well_formed(self) -> None:
        from notifier.plugins.registry import describe_adapter

        cls = self.adapter_class
        problems: list[str] = []
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            pytest.fail(f"adapter_class {cls!r} is not a notifier.adapter.Adapter subclass")
        if inspect.isabstract(cls):
            problems.append("the class is abstract: implement `async def send(self, message)`")
        for attribute in ("name", "channel"):
            value = getattr(cls, attribute, None)
            if not isinstance(value, str) or not NAME.fullmatch(value):
                problems.append(
                    f"{attribute} = {value!r}: must match {NAME.pattern} (it is used in "
                    "NOTIFIER_* variables, URLs and config/routing.toml)"
                )
        if not isinstance(cls.description, str) or not cls.description.strip():
            problems.append("description: say in one line what the adapter sends through")
        if not isinstance(getattr(cls, "recipient_kind", None), RecipientKind):
            problems.append("recipient_kind must be a notifier.adapter.RecipientKind")
        problems.extend(_template_part_problems(getattr(cls, "template_parts", None)))
        model = cls.settings_model
        if not (isinstance(model, type) and issubclass(model, AdapterSettings)):
            problems.append("settings_model must subclass notifier.adapter.AdapterSettings")
        elif model.model_config.get("extra") != "forbid":
            problems.append(
                "settings_model must refuse unknown keys (model_config extra='forbid', "
                "inherited from AdapterSettings): a typo in a setting must stop start-up"
            )
        for method in ("send", "close", "health"):
            if not inspect.iscoroutinefunction(getattr(cls, method, None)):
                problems.append(f"{method} must be `async def`")
        if cls.accepts_receipts and _inherited(cls, "parse_receipt"):
            problems.append("accepts_receipts is True but parse_receipt is not implemented")
        if cls.accepts_inbound and _inherited(cls, "parse_inbound"):
            problems.append("accepts_inbound is True but parse_inbound is not implemented")
        if "parse_inbound" in vars(cls) and not isinstance(
            vars(cls)["parse_inbound"], classmethod | staticmethod
        ):
            problems.append("parse_inbound must be a classmethod (the API has no instance)")
        if "parse_receipt" in vars(cls) and not isinstance(
            vars(cls)["parse_receipt"], classmethod | staticmethod
        ):
            problems.append("parse_receipt must be a classmethod (the API has no instance)")
        policy = getattr(cls, "uncertain_send_policy", None)
        if not isinstance(policy, UncertainSendPolicy):
            problems.append("uncertain_send_policy must be a notifier.adapter.UncertainSendPolicy")
        elif policy is UncertainSendPolicy.VERIFY and not cls.has_lookup():
            problems.append("uncertain_send_policy is VERIFY but lookup is not implemented")
        for scenario, reason in self.not_applicable.items():
            if scenario not in SCENARIOS:
                problems.append(
                    f"not_applicable names unknown scenario {scenario!r} "
                    f"(known: {', '.join(sorted(SCENARIOS))})"
                )
            if not isinstance(reason, str) or not reason.strip():
                problems.append(f"not_applicable[{scenario!r}] needs a reason")
        if not problems:
            described = describe_adapter(cls)
            if described["name"] != cls.name or described["channel"] != cls.channel:
                problems.append(f"`notifier adapters` describes it wrongly: {described}")
        _report("the adapter's declarations are not well-formed", problems)

    def test_is_registered_under_the_entry_point(self) -> None:
        self._applies("entry_point")
        cls = self.adapter_class
        target = f"{cls.__module__}:{cls.__qualname__}"
        group = entry_points(group=ENTRY_POINT_GROUP)
        found = [e for e in group if e.module == cls.__module__ and e.load() is cls]
        if not found:
            pytest.fail(
                f"no entry point in group {ENTRY_POINT_GROUP!r} loads {target}: add\n"
                f'    [project.entry-points."{ENTRY_POINT_GROUP}"]\n'
                f'    {cls.name} = "{target}"\n'
                "to pyproject.toml and install the package (pip install -e .)"
            )

    def test_valid_settings_are_accepted(self, kit_settings: AdapterSettings) -> None:
        if not isinstance(kit_settings, self.adapter_class.settings_model):
            pytest.fail(f"settings are a {type(kit_settings)!r}, not the adapter's settings_model")

    def test_invalid_settings_are_refused(self, kit_provider: Any) -> None:
        valid = self.valid_settings(kit_provider)
        model = self.adapter_class.settings_model
        cases: list[tuple[str, dict[str, Any]]] = [
            ("an unknown key", {**valid, "no_such_setting": "typo"})
        ]
        for name, info in model.model_fields.items():
            if info.is_required():
                cases.append((f"without required {name!r}", _without(valid, name)))
        for change in self.invalid_settings():
            merged = {**valid, **change}
            cases.append((repr(change), {k: v for k, v in merged.items() if v is not OMIT}))
        accepted = []
        for label, raw in cases:
            try:
                model.model_validate(raw)
            except ValidationError:
                continue
            accepted.append(label)
        _report("settings that must be refused were accepted", accepted)

    def test_secret_settings_are_secret(self, kit_provider: Any) -> None:
        from notifier.plugins.registry import describe_adapter

        model = self.adapter_class.settings_model
        raw = self.valid_settings(kit_provider)
        settings = self._validated(raw, "valid_settings(provider)")
        described = {s["name"]: s for s in describe_adapter(self.adapter_class)["settings"]}
        shown = " ".join(
            [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
        )
        problems = []
        for name, info in model.model_fields.items():
            if not _looks_secret(name) or name in self.not_secret_fields:
                continue
            if "Secret" not in str(info.annotation):
                problems.append(
                    f"{name!r} holds a secret but is typed {info.annotation!r}: use "
                    "pydantic.SecretStr (or list it in not_secret_fields if it is not secret)"
                )
            elif not described.get(name, {}).get("secret"):
                problems.append(f"`notifier adapters` does not mark {name!r} as secret")
            for value in _strings(raw.get(name)):
                if len(value) >= 4 and value in shown:
                    problems.append(
                        f"the value of {name!r} shows in repr/str/model_dump_json of the settings"
                    )
        _report("secrets are not kept secret", problems)

    def test_a_send_returns_a_send_result(self, kit_provider: Any) -> None:
        outcome = self._send_once(kit_provider, self.message())
        if outcome.kind != "sent":
            pytest.fail(f"a plain send to a working provider {outcome.describe()}")
        result = outcome.result
        if not isinstance(result, SendResult):
            pytest.fail(f"send returned {result!r}, not a notifier.adapter.SendResult")
        problems = []
        if result.provider_message_id is not None and (
            not isinstance(result.provider_message_id, str) or not result.provider_message_id
        ):
            problems.append(
                f"provider_message_id {result.provider_message_id!r}: a non-empty str or None"
            )
        if not isinstance(result.delivered, bool):
            problems.append("delivered must be a bool")
        try:
            details = json.dumps(dict(result.details), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"details are stored as JSON but are not serialisable: {exc}")
        else:
            if _shows_recipient(details, self.recipient()):
                problems.append("details (stored in the delivery log) hold the recipient")
        _report("the send result is malformed", problems)

    def test_parts_at_their_declared_maximum_are_accepted(self, kit_provider: Any) -> None:
        self._applies("max_length")
        parts = self.adapter_class.template_parts
        if not any(p.max_length for p in parts):
            pytest.skip("no template part declares a max_length")
        message = self.message()
        longest = dict(message.parts)
        for part in parts:
            if part.max_length:
                longest[part.name] = _text_of_length(longest.get(part.name, ""), part.max_length)
        outcome = self._send_once(kit_provider, replace(message, parts=longest))
        if outcome.kind != "sent":
            pytest.fail(
                "a message whose parts are exactly at their declared max_length "
                f"{outcome.describe()}: the templates are checked against max_length at "
                "start-up, so the adapter must accept anything within it"
            )

    def test_the_delivery_id_reaches_the_provider(self, kit_provider: Any) -> None:
        self._applies("idempotency")
        first = self.message()
        other = self.message()
        seen: list[str | None] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            for message in (first, first, other):  # a delivery, its retry, another one
                outcome = await self._attempt(adapter, message)
                if outcome.kind != "sent":
                    pytest.fail(f"a send to a working provider {outcome.describe()}")
                seen.append(self._hook(lambda: self.sent_reference(kit_provider), "idempotency"))

        self._exercise(kit_provider, scenario)
        expected_first = self.expected_reference(first.delivery_id)
        expected_other = self.expected_reference(other.delivery_id)
        problems = []
        if seen[0] is None or expected_first not in seen[0]:
            problems.append(
                f"the provider saw reference {seen[0]!r}, which does not hold the delivery "
                f"id {expected_first!r}: pass message.delivery_id as the provider's "
                "idempotency key / tracking reference"
            )
        if seen[1] != seen[0]:
            problems.append(
                f"a retry of the same delivery went out with reference {seen[1]!r} instead "
                f"of {seen[0]!r}: the reference must depend on the delivery id only"
            )
        if seen[2] is None or expected_other not in seen[2] or seen[2] == seen[0]:
            problems.append(f"another delivery went out with reference {seen[2]!r}")
        _report("the delivery id is not passed through as the idempotency reference", problems)

    def test_a_temporary_failure_is_reported_as_temporary(self, kit_provider: Any) -> None:
        self._applies("temporary_failure")
        outcomes: list[Outcome] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            self._hook(lambda: self.cause_temporary_failure(kit_provider), "temporary_failure")
            outcomes.append(await self._attempt(adapter, self.message()))
            self.recover(kit_provider)
            outcomes.append(await self._attempt(adapter, self.message()))

        self._exercise(kit_provider, scenario)
        failed, again = outcomes
        self._expect(failed, "temporary", "a provider failure worth retrying")
        if again.kind != "sent":
            pytest.fail(
                f"after a temporary failure (and recover()), the next send {again.describe()}:"
                " the adapter must not stay broken (e.g. keep a dead connection)"
            )

    def test_a_permanent_failure_is_reported_as_permanent(self, kit_provider: Any) -> None:
        self._applies("permanent_failure")
        outcomes: list[Outcome] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            self._hook(lambda: self.cause_permanent_failure(kit_provider), "permanent_failure")
            outcomes.append(await self._attempt(adapter, self.message()))

        self._exercise(kit_provider, scenario)
        self._expect(outcomes[0], "permanent", "a refusal that retrying cannot fix")

    def test_a_slow_provider_is_a_temporary_failure(self, kit_provider: Any) -> None:
        self._applies("timeout")
        outcomes: list[Outcome] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            self._hook(lambda: self.cause_timeout(kit_provider), "timeout")
            outcomes.append(await self._attempt(adapter, self.message()))

        self._exercise(kit_provider, scenario)
        if outcomes[0].kind == "hung":
            return  # the worker's own send timeout cuts it off and counts it temporary
        self._expect(outcomes[0], "temporary", "a provider that answers too late")

    def test_no_answer_after_the_request_went_out_is_maybe_sent(self, kit_provider: Any) -> None:
        """A real local server takes the whole request and never answers: the provider
        may have taken the message, and the core must know (it then neither fails over
        to another provider nor resends blindly)."""
        self._applies("no_answer")
        received = threading.Event()

        def take_and_hold(request: RecordedRequest) -> Reply | None:
            received.set()
            return None  # then the default reply, held back until the server stops

        silent = LocalHttpServer(
            check=take_and_hold, default=Reply(200, {"ok": True}, delay_s=3600.0)
        )
        outcomes: list[Outcome] = []
        with silent:
            raw = self._hook(lambda: self.no_answer_settings(kit_provider, silent.url), "no_answer")
            settings = self._validated(raw, "no_answer_settings(provider, url)")

            async def scenario(adapter: Adapter[Any]) -> None:
                outcomes.append(await self._attempt(adapter, self.message()))

            self._exercise(kit_provider, scenario, settings=settings)
        outcome = outcomes[0]
        if not received.is_set():
            pytest.fail(
                f"the send never reached the server at no_answer_settings' url (it "
                f"{outcome.describe()}): point the adapter's URL setting at it"
            )
        if outcome.kind == "hung":
            pytest.fail(
                f"the send was {outcome.describe()}: give the adapter a short timeout in "
                "no_answer_settings, so it reports the silence itself"
            )
        situation = "a provider that took the request and never answered"
        self._expect(outcome, "temporary", situation)
        error = outcome.error
        assert isinstance(error, TemporaryFailure)
        if error.maybe_sent is not True:
            pytest.fail(
                f"{situation}: send raised TemporaryFailure({error.reason!r}) without "
                "maybe_sent=True: the provider may have taken the message. Send through "
                "notifier.adapter_http.request (or AdapterHttp), which reports it, or "
                "raise TemporaryFailure(..., maybe_sent=True) on a read timeout"
            )

    def test_an_unreachable_provider_is_a_temporary_failure(self, kit_provider: Any) -> None:
        self._applies("unreachable")
        raw = self._hook(lambda: self.unreachable_settings(kit_provider), "unreachable")
        settings = self._validated(raw, "unreachable_settings(provider)")
        outcomes: list[Outcome] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            outcomes.append(await self._attempt(adapter, self.message()))

        self._exercise(kit_provider, scenario, settings=settings)
        self._expect(outcomes[0], "temporary", "a provider nobody answers for")

    def test_logs_never_show_the_recipient(self, kit_provider: Any) -> None:
        """Every log line of every scenario, as production would write it."""
        recipient = self.recipient()
        with capture_logs("DEBUG") as logs:
            self._log_scenarios(kit_provider)
        leaks = [
            line.replace(recipient, "«RECIPIENT»")
            for line in logs.lines
            if _shows_recipient(line, recipient)
        ]
        _report(
            "the recipient appears in clear in log lines (log masked values, or "
            "notifier.masking.mask_recipient(...), never message.recipient itself)",
            leaks,
        )

    def test_close_is_clean_and_repeatable(self, kit_provider: Any) -> None:
        settings = self._validated(self.valid_settings(kit_provider), "valid_settings(provider)")
        used = self.make_adapter(settings, self.make_context(kit_provider))
        unused = self.make_adapter(settings, self.make_context(kit_provider))
        errors: list[str] = []

        async def scenario() -> None:
            outcome = await self._attempt(used, self.message())
            if outcome.kind != "sent":
                pytest.fail(f"a send to a working provider {outcome.describe()}")
            for adapter, label in ((used, "after a send"), (unused, "without any send")):
                for attempt in ("first", "second"):
                    try:
                        await asyncio.wait_for(adapter.close(), self.close_timeout_s)
                    except Exception as exc:
                        errors.append(
                            f"the {attempt} close() {label} raised {type(exc).__qualname__}: {exc}"
                        )

        run(scenario())
        _report("close() must release everything and be safe to call again", errors)
        if "close_connections" in self.not_applicable:
            return
        deadline = time.monotonic() + self.close_timeout_s
        open_now = self.open_connections(kit_provider)
        while open_now and time.monotonic() < deadline:
            time.sleep(0.02)
            open_now = self.open_connections(kit_provider)
        if open_now:
            pytest.fail(
                f"{open_now} connection(s) to the provider still open after close(): close "
                "pooled clients there (e.g. `await self._client.aclose()`)"
            )

    def test_health_answers(self, kit_provider: Any) -> None:
        settings_list = [self._validated(self.valid_settings(kit_provider), "valid_settings")]
        if "unreachable" not in self.not_applicable:
            with contextlib.suppress(_HookMissing):
                settings_list.append(
                    self._validated(self.unreachable_settings(kit_provider), "unreachable")
                )
        problems = []
        for settings in settings_list:
            adapter = self.make_adapter(settings, self.make_context(kit_provider))

            async def check(adapter: Adapter[Any] = adapter) -> Health | BaseException:
                try:
                    return await asyncio.wait_for(adapter.health(), self.send_timeout_s)
                except Exception as exc:
                    return exc
                finally:
                    with contextlib.suppress(Exception):
                        await adapter.close()

            health = run(check())
            if not isinstance(health, Health):
                problems.append(f"health() gave {health!r} instead of a Health (never raise)")
        _report("health() must answer a Health", problems)

    def test_receipts_are_parsed(self, kit_settings: AdapterSettings) -> None:
        self._receipts_apply()
        delivery_id = uuid.uuid4()
        request = self._hook(
            lambda: self.valid_receipt(kit_settings, delivery_id),
            "needed because accepts_receipts is True",
        )
        try:
            receipts = self.adapter_class.parse_receipt(kit_settings, request)
        except InvalidReceipt as exc:
            pytest.fail(f"a genuine receipt was refused: {exc}")
        if not isinstance(receipts, list) or not all(isinstance(r, Receipt) for r in receipts):
            pytest.fail(f"parse_receipt returned {receipts!r}, not a list of Receipt")
        if not receipts:
            pytest.fail("a genuine receipt for one delivery gave no Receipt")
        problems = []
        for receipt in receipts:
            if receipt.delivery_id is None and not receipt.provider_message_id:
                problems.append(f"{receipt!r} identifies no delivery")
            if receipt.delivery_id is not None and receipt.delivery_id != delivery_id:
                problems.append(f"{receipt!r} is for another delivery than {delivery_id}")
            if not isinstance(receipt.delivered, bool):
                problems.append(f"{receipt!r}: delivered must be a bool")
        _report("receipts are read wrongly", problems)

    def test_forged_receipts_are_refused(self, kit_settings: AdapterSettings) -> None:
        self._receipts_apply()
        delivery_id = uuid.uuid4()
        genuine = self._hook(
            lambda: self.valid_receipt(kit_settings, delivery_id),
            "needed because accepts_receipts is True",
        )
        forged = self.forged_receipts(kit_settings, delivery_id)
        problems = _refusal_problems(
            lambda request: self.adapter_class.parse_receipt(kit_settings, request),
            genuine,
            forged,
            self.receipt_max_age_s,
            method="parse_receipt",
            kind="receipt",
        )
        _report("forged or malformed receipts are not refused", problems)

    def test_inbound_messages_are_read(self, kit_settings: AdapterSettings) -> None:
        """A genuine inbound call gives the citizen's message: the sender a reply can
        reach, the text as written, and the provider's id (so a replay is refused)."""
        self._inbound_applies()
        sender = self.recipient()
        text = "Tra cứu 000.00.12.H29-231025-0001"
        request = self._hook(
            lambda: self.valid_inbound(kit_settings, sender, text),
            "needed because accepts_inbound is True",
        )
        try:
            messages = self.adapter_class.parse_inbound(kit_settings, request)
        except InvalidReceipt as exc:
            pytest.fail(f"a genuine inbound call was refused: {exc}")
        if not isinstance(messages, list) or not all(
            isinstance(m, InboundMessage) for m in messages
        ):
            pytest.fail(f"parse_inbound returned {messages!r}, not a list of InboundMessage")
        if len(messages) != 1:
            pytest.fail(f"one citizen's message gave {len(messages)} inbound messages")
        [message] = messages
        problems = []
        if message.text != text:
            problems.append(f"the text was read as {message.text!r}, not {text!r}")
        if _digits_or_text(message.sender) != _digits_or_text(sender):
            problems.append("the sender is not the one who wrote (a reply would go astray)")
        if message.sent_at is not None and message.sent_at.tzinfo is None:
            problems.append("sent_at must be time-zone aware")
        if not message.provider_message_id and "inbound_id" not in self.not_applicable:
            problems.append(
                "no provider_message_id: a replayed call would be answered again "
                "(declare not_applicable = {'inbound_id': 'why'} if the provider has none)"
            )
        again = self.adapter_class.parse_inbound(kit_settings, request)
        if [m.provider_message_id for m in again] != [message.provider_message_id]:
            problems.append("the same call read twice gives another provider_message_id")
        _report("inbound messages are read wrongly", problems)

    def test_forged_inbound_calls_are_refused(self, kit_settings: AdapterSettings) -> None:
        self._inbound_applies()
        sender, text = self.recipient(), "HD"
        genuine = self._hook(
            lambda: self.valid_inbound(kit_settings, sender, text),
            "needed because accepts_inbound is True",
        )
        forged = self.forged_inbound(kit_settings, sender, text)
        problems = _refusal_problems(
            lambda request: self.adapter_class.parse_inbound(kit_settings, request),
            genuine,
            forged,
            self.inbound_max_age_s,
            method="parse_inbound",
            kind="inbound call",
        )
        _report("forged or malformed inbound calls are not refused", problems)

    def test_templates_render(self) -> None:
        if self.templates_dir is None:
            pytest.skip("templates_dir is not set")
        from notifier.pipeline.rendering import TemplateSet
        from notifier.settings import SettingsError

        cls = self.adapter_class
        try:
            TemplateSet(self.templates_dir, {cls.channel: cls.template_parts})
        except SettingsError as exc:
            pytest.fail(f"the {cls.channel!r} templates in {self.templates_dir} fail:\n{exc}")

    # -- machinery --------------------------------------------------------------------------

    def _applies(self, scenario: str) -> None:
        reason = self.not_applicable.get(scenario)
        if reason is not None:
            pytest.skip(f"not applicable to {self.adapter_class.__name__}: {reason}")

    def _inbound_applies(self) -> None:
        if not self.adapter_class.accepts_inbound:
            pytest.skip(f"{self.adapter_class.__name__} takes no inbound messages")

    def _receipts_apply(self) -> None:
        if not self.adapter_class.accepts_receipts:
            pytest.skip(f"{self.adapter_class.__name__} does not take delivery receipts")

    def _hook(self, call: Callable[[], T], scenario: str) -> T:
        try:
            return call()
        except _HookMissing as missing:
            if scenario not in SCENARIOS:
                pytest.fail(f"implement {missing} in {type(self).__name__} ({scenario})")
            pytest.fail(
                f"implement {missing} in {type(self).__name__}, or declare the scenario "
                f"not applicable: not_applicable = {{{scenario!r}: 'the reason'}}"
            )

    def _validated(self, raw: Mapping[str, Any], where: str) -> AdapterSettings:
        try:
            return self.adapter_class.settings_model.model_validate(dict(raw))
        except ValidationError as exc:
            model = self.adapter_class.settings_model.__name__
            pytest.fail(f"{where} were refused by {model}:\n{exc}")

    async def _attempt(self, adapter: Adapter[Any], message: OutboundMessage) -> Outcome:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(adapter.send(message), self.send_timeout_s)
        except TemporaryFailure as exc:
            return Outcome("temporary", error=exc, seconds=time.perf_counter() - started)
        except PermanentFailure as exc:
            return Outcome("permanent", error=exc, seconds=time.perf_counter() - started)
        except TimeoutError as exc:
            seconds = time.perf_counter() - started
            if seconds >= self.send_timeout_s * 0.95:
                return Outcome("hung", error=exc, seconds=seconds)
            return Outcome("escaped", error=exc, seconds=seconds)
        except Exception as exc:
            return Outcome("escaped", error=exc, seconds=time.perf_counter() - started)
        return Outcome("sent", result=result, seconds=time.perf_counter() - started)

    def _exercise(
        self,
        provider: Any,
        scenario: Callable[[Adapter[Any]], Awaitable[None]],
        *,
        settings: AdapterSettings | None = None,
    ) -> None:
        """Build the adapter outside any event loop (as the worker does), run the scenario
        on a fresh loop and close the adapter on that loop."""
        if settings is None:
            settings = self._validated(self.valid_settings(provider), "valid_settings(provider)")
        adapter = self.make_adapter(settings, self.make_context(provider))

        async def body() -> None:
            try:
                await scenario(adapter)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(adapter.close(), self.close_timeout_s)

        run(body())

    def _send_once(self, provider: Any, message: OutboundMessage) -> Outcome:
        outcomes: list[Outcome] = []

        async def scenario(adapter: Adapter[Any]) -> None:
            outcomes.append(await self._attempt(adapter, message))

        self._exercise(provider, scenario)
        return outcomes[0]

    def _expect(self, outcome: Outcome, kind: str, situation: str) -> None:
        wanted = "TemporaryFailure" if kind == "temporary" else "PermanentFailure"
        if outcome.kind == "escaped":
            pytest.fail(
                f"{situation}: send {outcome.describe()}; report it as {wanted} (the worker "
                "treats any other exception as a crash, not as a delivery outcome)"
            )
        if outcome.kind != kind:
            pytest.fail(f"{situation}: send {outcome.describe()}, expected {wanted}")
        error = outcome.error
        assert isinstance(error, DeliveryFailure)
        problems = []
        if not isinstance(error.reason, str) or not error.reason.strip():
            problems.append("the failure has no reason (it is what operators read)")
        elif _shows_recipient(f"{error.reason} {error}", self.recipient()):
            shown = error.reason.replace(self.recipient(), "«RECIPIENT»")
            problems.append(
                f"the failure's reason shows the recipient in clear: {shown!r} "
                "(reasons are stored in the delivery log and logged)"
            )
        if error.code is not None and not isinstance(error.code, str):
            problems.append(f"code {error.code!r} must be a str")
        retry_after = error.retry_after_s if isinstance(error, TemporaryFailure) else None
        if retry_after is not None and (
            not isinstance(retry_after, int | float) or retry_after < 0
        ):
            problems.append(f"retry_after_s {retry_after!r} must be seconds >= 0")
        if isinstance(error, TemporaryFailure) and not isinstance(error.maybe_sent, bool):
            problems.append("maybe_sent must be a bool")
        if isinstance(error, PermanentFailure) and not isinstance(error.operator_alert, bool):
            problems.append("operator_alert must be a bool")
        _report(f"{situation}: the {wanted} is malformed", problems)

    def _log_scenarios(self, provider: Any) -> None:
        """Success, then each failure the adapter supports, then receipts, logging all."""

        def available(scenario: str, call: Callable[[], object]) -> bool:
            if scenario in self.not_applicable:
                return False
            try:
                call()
            except _HookMissing:
                return False
            return True

        async def scenario(adapter: Adapter[Any]) -> None:
            await self._attempt(adapter, self.message())
            if available("temporary_failure", lambda: self.cause_temporary_failure(provider)):
                await self._attempt(adapter, self.message())
                self.recover(provider)
            if available("permanent_failure", lambda: self.cause_permanent_failure(provider)):
                await self._attempt(adapter, self.message())
            if available("timeout", lambda: self.cause_timeout(provider)):
                await self._attempt(adapter, self.message())

        self._exercise(provider, scenario)
        if "unreachable" not in self.not_applicable:
            with contextlib.suppress(_HookMissing):
                raw = self.unreachable_settings(provider)
                self._exercise(
                    provider,
                    lambda adapter: self._attempt_only(adapter),
                    settings=self._validated(raw, "unreachable_settings(provider)"),
                )
        if self.adapter_class.accepts_receipts:
            settings = self._validated(self.valid_settings(provider), "valid_settings(provider)")
            with contextlib.suppress(_HookMissing):
                delivery_id = uuid.uuid4()
                requests = [self.valid_receipt(settings, delivery_id)]
                requests += self.forged_receipts(settings, delivery_id)
                for request in requests:
                    with contextlib.suppress(Exception):
                        self.adapter_class.parse_receipt(settings, request)

    async def _attempt_only(self, adapter: Adapter[Any]) -> None:
        await self._attempt(adapter, self.message())


# -- checks ---------------------------------------------------------------------------------


def _refusal_problems(
    parse: Callable[[ReceiptRequest], Any],
    genuine: ReceiptRequest,
    forged: list[ReceiptRequest],
    max_age_s: float | None,
    *,
    method: str,
    kind: str,
) -> list[str]:
    """What is wrong with how ``parse`` (a provider's call in: a receipt or a citizen's
    message) treats calls it must refuse: forged ones, replays outside ``max_age_s`` (which
    may also be acknowledged and ignored, parsed to ``[]``), and bodies that are junk (only
    ``InvalidReceipt`` may escape: anything else is a 500 from the API)."""
    labelled = [(f"forged {kind} #{i + 1}", request) for i, request in enumerate(forged)]
    late_ones = []
    if max_age_s is not None:
        late = max_age_s + 60
        late_ones = [
            ("replayed too late", replace(genuine, received_at=genuine.received_at + late)),
            ("dated in the future", replace(genuine, received_at=genuine.received_at - late)),
        ]
    problems = []
    for label, request in labelled + late_ones:
        try:
            parsed = parse(request)
        except InvalidReceipt:
            continue
        except Exception as exc:
            problems.append(f"{label}: raised {type(exc).__qualname__}, not InvalidReceipt")
            continue
        if parsed == [] and (label, request) in late_ones:
            continue  # acknowledged and ignored: not applied
        problems.append(f"{label} was accepted: {parsed!r}")
    junk = [
        ("an empty body", replace(genuine, body=b"")),
        ("a body that is not text", replace(genuine, body=b"\xff\xfe\x00{[")),
        ("a JSON array body", replace(genuine, body=b"[1, 2, 3]")),
    ]
    for label, request in junk:
        try:
            parsed = parse(request)
        except InvalidReceipt:
            continue
        except Exception as exc:
            problems.append(
                f"{label}: raised {type(exc).__qualname__} (only InvalidReceipt may "
                f"escape {method}; anything else is a 500 from the API)"
            )
            continue
        if not isinstance(parsed, list):
            problems.append(f"{label}: returned {parsed!r}, not a list")
    return problems


def _report(title: str, problems: list[str]) -> None:
    if problems:
        pytest.fail(title + ":\n  - " + "\n  - ".join(problems), pytrace=False)


def _digits_or_text(value: str) -> str:
    """A sender compared as its last nine digits when it is a phone number (the
    provider may write 84..., 0... or +84...), else as written."""
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits[-9:] if len(digits) >= 9 and not any(ch.isalpha() for ch in value) else value


def _inherited(cls: type, name: str) -> bool:
    """Whether ``cls`` uses the base Adapter's own ``name`` (did not implement it)."""
    own = [k for k in cls.__mro__ if k is not Adapter and issubclass(k, Adapter)]
    return all(name not in vars(k) for k in own)


def _template_part_problems(parts: object) -> list[str]:
    if not isinstance(parts, tuple) or not parts:
        return ["template_parts must be a non-empty tuple of TemplatePart"]
    problems = []
    names = []
    for part in parts:
        if not isinstance(part, TemplatePart):
            problems.append(f"template_parts holds {part!r}, not a TemplatePart")
            continue
        names.append(part.name)
        if not PART_NAME.fullmatch(part.name):
            problems.append(f"template part name {part.name!r} must match {PART_NAME.pattern}")
        if part.max_length is not None and (
            not isinstance(part.max_length, int) or part.max_length <= 0
        ):
            problems.append(f"template part {part.name!r}: max_length must be a positive int")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"template parts declared twice: {duplicates}")
    return problems


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) and not lowered.endswith(
        NOT_SECRET_SUFFIXES
    )


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    get_secret = getattr(value, "get_secret_value", None)
    if callable(get_secret):
        return _strings(get_secret())
    return []


def _shows_recipient(text: str, recipient: str) -> bool:
    return any(variant in text for variant in recipient_variants(recipient))


def _without(values: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != key}


def _text_of_length(seed: str, length: int) -> str:
    filler = (seed or "Hồ sơ đã được tiếp nhận.") + " "
    return (filler * (length // len(filler) + 1))[:length]
