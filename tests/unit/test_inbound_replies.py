"""The reply templates (config/templates/<lang>/replies.toml): every reply fits one SMS
segment once diacritics are removed, and the "unknown" answer says nothing that depends
on the code asked about."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from notifier.adapter import InboundMessage, RecipientKind
from notifier.events import Status
from notifier.pipeline.inbound import InboundDispatcher, ReplyKind, ReplyTemplates
from notifier.pipeline.rendering import LANGUAGES, status_name
from notifier.settings import InboundSettings, SettingsError
from notifier.store import Database
from notifier.store.inbound import InboundStore
from notifier.store.migrate import upgrade
from notifier.store.optouts import OptOutStore
from notifier.store.schema import deliveries
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


def _with_shipped_zbs_example(tmp_path: Path) -> Path:
    """A copy of the shipped reply templates with the commented ZBS example switched on."""
    for language in LANGUAGES:
        source = (REPO / "config" / "templates" / language / "replies.toml").read_text("utf-8")
        lines, inside = [], False
        for line in source.splitlines():
            if line.startswith("# BEGIN example"):
                inside = True
            elif line.startswith("# END example"):
                inside = False
            elif inside:
                line = line.removeprefix("# ")
            lines.append(line)
        assert not inside, language
        assert "[status.zalo]" in lines, language
        target = tmp_path / language / "replies.toml"
        target.parent.mkdir(parents=True)
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_zalo_reply_carries_the_zbs_template_the_operator_configured_for_after_the_window(
    tmp_path: Path, language: str
) -> None:
    templates = ReplyTemplates(_with_shipped_zbs_example(tmp_path), ["sms", "zalo"])
    [context] = [c for c in _contexts(language) if c["status"] == "supplement_requested"]
    parts = templates.render_parts(ReplyKind.STATUS, "zalo", language, context)
    assert parts["template_id"] == ("245101" if language == "vi" else "246101")
    data = json.loads(parts["template_data"])
    assert data["dossier_code"] == CODE
    assert data["status_name"] == context["status_name"]
    assert data["due_date"] == "31/12/2026"
    # The consultation message's text is the kind's text, as without the template.
    assert parts["text"] == templates.render(ReplyKind.STATUS, "zalo", language, context)
    # Other channels, and kinds without a ZBS template, carry the text only.
    assert templates.render_parts(ReplyKind.STATUS, "sms", language, context).keys() == {"text"}
    help_parts = templates.render_parts(ReplyKind.HELP, "zalo", language, {"language": language})
    assert help_parts.keys() == {"text"}


def test_the_shipped_reply_templates_carry_no_zbs_template_so_late_zalo_replies_fail_clearly(
    templates: ReplyTemplates,
) -> None:
    # No placeholder template id goes to Zalo unless an operator configures one.
    for language in LANGUAGES:
        for context in _contexts(language):
            parts = templates.render_parts(ReplyKind.STATUS, "zalo", language, context)
            assert parts.keys() == {"text"}


def test_a_channel_part_named_like_the_reply_reference_is_refused_at_start_up(
    tmp_path: Path,
) -> None:
    root = _with_shipped_zbs_example(tmp_path)
    path = root / "en" / "replies.toml"
    text = path.read_text("utf-8").replace("[status.zalo]\n", '[status.zalo]\nin_reply_to = "x"\n')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        ReplyTemplates(root, ["zalo"])
    assert "[status.zalo].in_reply_to is a reserved name" in str(caught.value)


def test_a_broken_zbs_reply_template_stops_start_up(tmp_path: Path) -> None:
    root = _with_shipped_zbs_example(tmp_path)
    path = root / "vi" / "replies.toml"
    text = path.read_text("utf-8").replace("(due_date | date)", "(due_date | no_such_filter)")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        ReplyTemplates(root, ["zalo"])
    assert "[status.zalo].template_data" in str(caught.value)


def test_a_zalo_users_reply_delivery_carries_the_zbs_template_the_adapter_sends_late(
    tmp_path: Path,
) -> None:
    root = _with_shipped_zbs_example(tmp_path / "templates")
    # The example is for [status]; the same table on [help] is the cheapest to trigger.
    path = root / "vi" / "replies.toml"
    path.write_text(
        path.read_text("utf-8")
        + '\n[help.zalo]\ntemplate_id = "245102"\n'
        + 'template_data = """{{ {"hint": "TRA CUU"} | tojson }}"""\n',
        encoding="utf-8",
    )
    database = Database(f"sqlite:///{tmp_path}/t.db")
    upgrade(database)
    queued: list[tuple[UUID, str]] = []
    try:
        dispatcher = InboundDispatcher(
            store=InboundStore(database),
            opt_outs=OptOutStore(database, "k" * 32),
            templates=ReplyTemplates(root, ["zalo"]),
            settings=InboundSettings(),
            hash_key="k" * 32,
            recipient_kinds={"zalo": RecipientKind.ZALO},
            enqueue=queued.extend,
        )
        summary = dispatcher.handle(
            "zalo", "zalo", [InboundMessage(sender="4455667788990011", text="HD")]
        )
        assert summary.answered == 1
        [(delivery_id, channel)] = queued
        with database.engine.connect() as connection:
            content = connection.execute(
                sa.select(deliveries.c.content).where(deliveries.c.delivery_id == delivery_id)
            ).scalar_one()
    finally:
        database.dispose()
    assert channel == "zalo"
    assert content["template_id"] == "245102"
    assert json.loads(content["template_data"]) == {"hint": "TRA CUU"}
    assert "TRA CUU" in content["text"]  # the consultation message, within the window
    assert content["in_reply_received_at"]  # what the adapter measures the window from
