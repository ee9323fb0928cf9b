"""SMS length discipline: every SMS template must fit its status's segment budget
(``[sms_length]`` settings), checked at start-up, since each segment is billed.

The check renders each status's SMS text in every language for a dossier whose free
text is as long as the contract allows (templates truncate it) and whose codes and
names are long but realistic, with every optional field present and absent; the text
is measured as the gateway sends it: without diacritics in GSM-7 (160 characters a
segment, 153 when split) unless ``unicode`` is set (UCS-2: 70, 67).
"""

from __future__ import annotations

from dataclasses import dataclass

from notifier.events import DossierStatusEvent, Status
from notifier.pipeline.rendering import LANGUAGES, TemplateSet, sample_event
from notifier.settings import SmsLengthSettings
from notifier.text import is_gsm7, sms_length, strip_diacritics

SMS = "sms"
# Free text as long as the event contract allows (the templates must truncate it).
_LONG_TEXT = ("Nội dung rất dài cần được rút gọn trong tin nhắn. " * 40)[:2000]
_LONG_NAME = ("Ủy ban nhân dân phường Điện Biên, quận Ba Đình, thành phố Hà Nội " * 5)[:300]


@dataclass(frozen=True)
class SegmentCheck:
    status: Status
    language: str
    segments: int
    budget: int


def worst_case_events(status: Status) -> list[DossierStatusEvent]:
    """The start-up sample with its free text at the contract's limits, and without."""
    full = sample_event(status)
    long = full.model_copy(
        update={
            "agency": full.agency.model_copy(update={"name": _LONG_NAME}),
            "dossier": full.dossier.model_copy(
                update={
                    "reason": _LONG_TEXT,
                    "note": _LONG_TEXT,
                    "procedure": full.dossier.procedure.model_copy(update={"name": _LONG_NAME}),
                }
            ),
            "applicant": full.applicant.model_copy(update={"name": _LONG_NAME[:60]}),
        }
    )
    return [long, full, sample_event(status, minimal=True)]


def measure(text: str, *, unicode: bool) -> int:
    """Segments ``text`` takes as an SMS gateway sends it."""
    if not unicode:
        text = strip_diacritics(text)
        text = "".join(ch if is_gsm7(ch) else "?" for ch in text)
    return sms_length(text).segments


def check_sms_segments(templates: TemplateSet, settings: SmsLengthSettings) -> list[SegmentCheck]:
    """The worst case of each status and language (segments against the budget)."""
    checks = []
    for status in Status:
        budget = settings.budget_for(status.value)
        for language in LANGUAGES:
            worst = 0
            for event in worst_case_events(status):
                text = templates.render(event, SMS, language).parts.get("text", "")
                worst = max(worst, measure(text, unicode=settings.unicode))
            checks.append(SegmentCheck(status, language, worst, budget))
    return checks


def segment_problems(templates: TemplateSet, settings: SmsLengthSettings) -> list[str]:
    """One line per SMS template over its budget (empty: all fit)."""
    encoding = "UCS-2" if settings.unicode else "GSM-7, unaccented"
    return [
        f"{check.language}/sms.toml [{check.status.value}].text: up to {check.segments} SMS "
        f"segments ({encoding}) with long free text, over the budget of {check.budget} "
        f"(NOTIFIER_SMS_LENGTH__SEGMENTS__{check.status.value.upper()}): shorten it or "
        "truncate its variables"
        for check in check_sms_segments(templates, settings)
        if check.segments > check.budget
    ]
