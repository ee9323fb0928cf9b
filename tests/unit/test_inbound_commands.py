"""The inbound command parser and the privacy rule: what a citizen's text asks, and
that a dossier's status is only ever answered to its applicant's own contacts."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.events import Status
from notifier.pipeline.commands import Command, CommandKind, parse_command
from notifier.pipeline.inbound import DossierFacts, ReplyKind, answer_for

CODE = "000.00.12.H29-231025-0001"
OWNER, STRANGER = "hash-of-the-applicants-phone", "hash-of-someone-else"


@pytest.mark.parametrize(
    "text",
    [
        f"TRA CUU {CODE}",
        f"tra cuu {CODE}",
        f"Tra cứu {CODE}",
        f"  TRA   CỨU:  {CODE}  ",
        f"tracuu {CODE}",
        f"TRACUU{CODE}",
        f"tra cuu {CODE.lower()}",
        f"check {CODE}",
        f"STATUS {CODE}.",
        CODE,
        f" {CODE.lower()} ",
    ],
)
def test_a_dossier_lookup_is_read_in_any_case_spacing_and_with_or_without_diacritics(
    text: str,
) -> None:
    command = parse_command(text)
    assert command.kind is CommandKind.STATUS
    assert command.dossier_code is not None
    assert command.dossier_code.upper() == CODE


@pytest.mark.parametrize(
    ("text", "kind", "language"),
    [
        ("HUY", CommandKind.STOP, "vi"),
        ("Hủy", CommandKind.STOP, "vi"),
        ("tu chối", CommandKind.STOP, "vi"),
        ("TUCHOI", CommandKind.STOP, "vi"),
        ("stop", CommandKind.STOP, "en"),
        ("Đăng ký", CommandKind.START, "vi"),
        ("dang  ky", CommandKind.START, "vi"),
        ("DANGKY", CommandKind.START, "vi"),
        ("Start", CommandKind.START, "en"),
        ("HD", CommandKind.HELP, "vi"),
        ("hướng dẫn", CommandKind.HELP, "vi"),
        ("help!", CommandKind.HELP, "en"),
        ("TRA CUU", CommandKind.HELP, "vi"),
        ("check", CommandKind.HELP, "en"),
        ("Xin chào, hồ sơ của tôi thế nào rồi?", CommandKind.UNRECOGNISED, "vi"),
        ("Huy Nguyen day", CommandKind.UNRECOGNISED, "vi"),
        ("HD1", CommandKind.UNRECOGNISED, "vi"),
        ("", CommandKind.UNRECOGNISED, "vi"),
        ("🙂🙂", CommandKind.UNRECOGNISED, "vi"),
    ],
)
def test_commands_and_their_english_aliases_are_recognised(
    text: str, kind: CommandKind, language: str
) -> None:
    command = parse_command(text)
    assert (command.kind, command.language) == (kind, language)


def test_a_huge_text_is_read_only_at_its_start_and_is_not_a_command() -> None:
    assert parse_command("TRA CUU " + "9" * 100_000).kind is CommandKind.HELP
    assert parse_command("x" * 1_000_000).kind is CommandKind.UNRECOGNISED


def _facts() -> DossierFacts:
    return DossierFacts(
        dossier_code=CODE,
        agency_code="000.00.12.H29",
        agency_name="UBND phường Điện Biên",
        status=Status.PROCESSING,
        due_date=date(2026, 12, 31),
        language="vi",
        owners=frozenset({OWNER}),
    )


def test_the_applicant_gets_the_status_and_anyone_else_the_answer_for_an_unknown_code() -> None:
    asked = parse_command(f"TRA CUU {CODE}")
    assert answer_for(asked, _facts(), OWNER) == (ReplyKind.STATUS, _facts())
    assert answer_for(asked, _facts(), STRANGER) == answer_for(asked, None, STRANGER)
    assert answer_for(asked, _facts(), STRANGER) == (ReplyKind.UNKNOWN, None)


# Texts built around the code (so lookups happen often) and texts of any characters.
_around_code = st.builds(
    lambda before, after, case: (before + CODE + after).lower() if case else before + CODE + after,
    st.sampled_from(["", "TRA CUU ", "tra cứu:", "CHECK ", "  ", "HUY ", "tracuu"]),
    st.sampled_from(["", " ", ".", "!", " xin cam on", "\n"]),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), _around_code))
def test_no_text_makes_the_parser_raise_or_shows_a_status_to_anyone_but_the_applicant(
    text: str,
) -> None:
    command = parse_command(text)
    assert isinstance(command, Command)
    assert command.language in ("vi", "en")
    kind, shown = answer_for(command, _facts(), STRANGER)
    assert kind is not ReplyKind.STATUS
    assert shown is None
    # And the owner is only ever shown the dossier they asked about.
    kind, shown = answer_for(command, _facts(), OWNER)
    assert (kind is ReplyKind.STATUS) == (command.kind is CommandKind.STATUS)
