"""The reply templates (config/templates/<lang>/replies.toml): every reply fits one SMS
segment once diacritics are removed, and the "unknown" answer says nothing that depends
on the code asked about."""

from __future__ import annotations

from datetime import date

import pytest

from notifier.events import Status
from notifier.pipeline.inbound import ReplyKind, ReplyTemplates
from notifier.pipeline.rendering import LANGUAGES, status_name
from notifier.text import sms_length, strip_diacritics
from tests.support import REPO

LONG_AGENCY = "Ủy ban nhân dân phường Điện Biên, quận Ba Đình, thành phố Hà Nội"
CODE = "000.00.12.H29-261126-0001"


@pytest.fixture(scope="module")
def templates() -> ReplyTemplates:
    return ReplyTemplates(REPO / "config" / "templates", ["sms", "zalo"])


def _contexts(language: str) -> list[dict[str, object]]:
    return [
        {
            "dossier_code": CODE,
            "language": language,
            "status": status.value,
            "status_name": status_name(status, language),
            "agency_name": LONG_AGENCY,
            "due_date": date(2026, 12, 31),
        }
        for status in Status
    ]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_reply_fits_one_sms_segment_without_diacritics(
    templates: ReplyTemplates, language: str
) -> None:
    for kind in ReplyKind:
        contexts = (
            _contexts(language)
            if kind is ReplyKind.STATUS
            else [{"dossier_code": "", "language": language}]
        )
        for context in contexts:
            text = templates.render(kind, "sms", language, context)
            length = sms_length(strip_diacritics(text))
            assert length.segments == 1, (kind, context.get("status"), len(text), text)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_status_reply_says_the_status_the_agency_the_date_and_what_to_do(
    templates: ReplyTemplates, language: str
) -> None:
    [context] = [c for c in _contexts(language) if c["status"] == "supplement_requested"]
    text = templates.render(ReplyKind.STATUS, "zalo", language, context)
    assert CODE in text
    assert str(context["status_name"]) in text
    assert "31/12/2026" in text
    assert ("bổ sung giấy tờ." if language == "vi" else "add documents") in text


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_unknown_answer_is_the_same_whatever_the_code(
    templates: ReplyTemplates, language: str
) -> None:
    answers = {
        templates.render(ReplyKind.UNKNOWN, "sms", language, {**context, "channel": "sms"})
        for context in [{"dossier_code": "", "language": language}, *_contexts(language)]
    }
    assert len(answers) == 1
    assert CODE not in answers.pop()
