"""Message templates: ``config/templates/<language>/<channel>.toml``, Jinja2 in a sandbox.

Each file has one table per status, holding the parts the channel's adapter declares
(email: subject, text, html; portal: title, body, link; ...). Everything is compiled
and test-rendered against a sample event at start-up, so a missing or broken
template stops the service before it sends anything. Parts marked ``html`` are
autoescaped; ``config/templates/<language>/email-layout.html`` wraps them if present.
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from notifier.adapter import TemplatePart
from notifier.events import DossierStatusEvent, Status
from notifier.settings import SettingsError

LANGUAGES = ("vi", "en")
VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")

_STATUS_NAMES_EN: dict[Status, str] = {
    Status.SUBMITTED: "Submitted",
    Status.RECEIVED: "Received",
    Status.REFUSED: "Not accepted",
    Status.PROCESSING: "In processing",
    Status.SUPPLEMENT_REQUESTED: "More documents requested",
    Status.PAYMENT_REQUIRED: "Fees or taxes due",
    Status.WITHDRAWN: "Withdrawn at your request",
    Status.STOPPED: "Processing stopped",
    Status.RESULT_READY: "Result ready",
    Status.RESULT_RETURNED: "Result returned",
    Status.OVERDUE: "Overdue",
}


def status_name(status: Status, language: str) -> str:
    return status.vietnamese_name if language == "vi" else _STATUS_NAMES_EN[status]


def _format_date(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        with contextlib.suppress(OverflowError):  # hours from year 1 or 9999: own offset
            value = value.astimezone(VIETNAM)
        return value.strftime("%H:%M %d/%m/%Y")
    return value.strftime("%d/%m/%Y")


def _format_money(value: int | None, language: str = "vi") -> str:
    if value is None:
        return ""
    grouped = f"{value:,}"
    return grouped.replace(",", ".") + " đồng" if language == "vi" else f"VND {grouped}"


def template_context(event: DossierStatusEvent, language: str) -> dict[str, Any]:
    """The variables every template may use (documented in docs/templates.md)."""
    dossier = event.dossier
    return {
        "language": language,
        "applicant_name": event.applicant.name,
        "agency_code": event.agency.code,
        "agency_name": event.agency.name or event.agency.code,
        "dossier_code": dossier.code,
        "procedure_code": dossier.procedure.code,
        "procedure_name": dossier.procedure.name,
        "status": dossier.status.value,
        "status_code": dossier.status.code,
        "status_name": status_name(dossier.status, language),
        "occurred_at": event.occurred_at,
        "due_date": dossier.due_date,
        "new_due_date": dossier.new_due_date,
        "reason": dossier.reason or "",
        "amount_due": dossier.amount_due,
        "note": dossier.note or "",
        "tracking_url": dossier.tracking_url or "",
    }


def sandboxed_environment() -> ImmutableSandboxedEnvironment:
    """The Jinja2 sandbox every message template renders in, with notifier's filters."""
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    env.filters["date"] = _format_date
    env.filters["money"] = _format_money
    # tojson (used for JSON parts such as Zalo template data): readable Vietnamese.
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return env


@dataclass(frozen=True)
class RenderedMessage:
    template: str  # e.g. "vi/email/received", recorded with the delivery
    parts: dict[str, str]


class TemplateSet:
    """All templates of all enabled channels, compiled and checked."""

    def __init__(self, templates_dir: Path, channel_parts: Mapping[str, tuple[TemplatePart, ...]]):
        self._env = sandboxed_environment()
        self._parts = dict(channel_parts)
        self._compiled: dict[tuple[str, str, Status, str], Any] = {}
        self._layouts: dict[str, Any] = {}
        problems: list[str] = []
        for language in LANGUAGES:
            layout = templates_dir / language / "email-layout.html"
            if layout.is_file():
                try:
                    self._layouts[language] = self._compile(layout.read_text("utf-8"), html=True)
                except TemplateError as exc:
                    problems.append(f"{layout}: {exc}")
            for channel, parts in self._parts.items():
                problems.extend(
                    self._load(
                        templates_dir / language / f"{channel}.toml", language, channel, parts
                    )
                )
        if not problems:
            problems.extend(self._test_render())
        if problems:
            raise SettingsError(problems)

    def _compile(self, source: str, *, html: bool) -> Any:
        # Autoescape is decided per part: HTML parts escape every variable.
        if html:
            source = "{% autoescape true %}" + source + "{% endautoescape %}"
        return self._env.from_string(source)

    def _load(
        self, path: Path, language: str, channel: str, parts: tuple[TemplatePart, ...]
    ) -> list[str]:
        if not path.is_file():
            return [f"missing template file {path} (channel {channel!r}, language {language!r})"]
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            return [f"{path}: {exc}"]
        problems = []
        for status in Status:
            table = document.get(status.value)
            if not isinstance(table, dict):
                problems.append(f"{path}: no [{status.value}] table")
                continue
            for part in parts:
                source = table.get(part.name)
                if not isinstance(source, str):
                    problems.append(f"{path}: [{status.value}] has no '{part.name}'")
                    continue
                try:
                    compiled = self._compile(source, html=part.html)
                except TemplateError as exc:
                    problems.append(f"{path}: [{status.value}].{part.name}: {exc}")
                    continue
                self._compiled[(language, channel, status, part.name)] = compiled
        return problems

    def _test_render(self) -> list[str]:
        problems: list[str] = []
        for status in Status:
            for event in (sample_event(status), sample_event(status, minimal=True)):
                for language in LANGUAGES:
                    context = template_context(event, language)
                    for channel, parts in self._parts.items():
                        where = f"{language}/{channel}.toml [{status.value}]"
                        failed = False
                        for part in parts:
                            template = self._compiled[(language, channel, status, part.name)]
                            try:
                                text = template.render(context).strip()
                            except Exception as exc:  # TemplateError, and
                                # errors raised outside Jinja (the sandbox's range limit)
                                problems.append(f"{where}.{part.name}: {exc}")
                                failed = True
                                continue
                            if part.max_length and len(text) > part.max_length:
                                problems.append(
                                    f"{where}.{part.name}: {len(text)} characters with sample "
                                    f"data, over {part.max_length}"
                                )
                        if failed:
                            continue
                        try:
                            self.render(event, channel, language)  # the parts, in the layout
                        except Exception as exc:  # as above
                            problems.append(f"{language}/email-layout.html [{status.value}]: {exc}")
        return list(dict.fromkeys(problems))  # the full and minimal samples often agree

    def render(self, event: DossierStatusEvent, channel: str, language: str) -> RenderedMessage:
        status = event.dossier.status
        context = template_context(event, language)
        parts: dict[str, str] = {}
        for part in self._parts[channel]:
            text = self._compiled[(language, channel, status, part.name)].render(context).strip()
            parts[part.name] = text
        if "html" in parts and language in self._layouts:
            parts["html"] = (
                self._layouts[language]
                .render(
                    {
                        **context,
                        "body_html": Markup(parts["html"]),  # noqa: S704 - escaped above
                        "subject": parts.get("subject", ""),
                    }
                )
                .strip()
            )
        return RenderedMessage(template=f"{language}/{channel}/{status.value}", parts=parts)


def sample_event(status: Status, *, minimal: bool = False) -> DossierStatusEvent:
    """An event used to test-render every template at start-up: full, or with every
    optional field absent (``minimal``) so a missing guard fails at start-up too."""
    event = DossierStatusEvent.model_validate_json(
        json.dumps(
            {
                "schema_version": "1",
                "event_id": str(UUID(int=0)),
                "occurred_at": "2026-11-26T02:30:00+00:00",
                "source_system": "motcua-mau",
                "agency": {"code": "000.00.12.H29", "name": "UBND phường Điện Biên"},
                "dossier": {
                    "code": "000.00.12.H29-261126-0001",
                    "procedure": {
                        "code": "1.001234",
                        "name": "Cấp bản sao trích lục hộ tịch",
                    },
                    "status": status.value,
                    "due_date": "2026-12-03",
                    "new_due_date": "2026-12-10",
                    "reason": "Thiếu bản sao giấy khai sinh có chứng thực",
                    "amount_due": 1_250_000,
                    "note": "Mang theo CCCD khi đến nhận kết quả",
                    "tracking_url": "https://dichvucong.gov.vn/p/home/dvc-tra-cuu-ho-so.html",
                },
                "applicant": {
                    "name": "Nguyễn Thị Minh Khai",
                    "language": "vi",
                    "contacts": {"email": "citizen@example.com", "portal_account_id": "acc-1"},
                },
            }
        )
    )
    if not minimal:
        return event
    keep = {"new_due_date": event.dossier.new_due_date} if status is Status.OVERDUE else {}
    bare_dossier = event.dossier.model_copy(
        update={
            "due_date": None,
            "new_due_date": None,
            "reason": None,
            "amount_due": None,
            "note": None,
            "tracking_url": None,
            **keep,
        }
    )
    return event.model_copy(
        update={
            "dossier": bare_dossier,
            "agency": event.agency.model_copy(update={"name": None}),
        }
    )
