"""The console's words: gettext catalogs (vi, en) managed with Babel. Every word a
template or page uses is translated in each catalog, the compiled .mo files match the
.po files translators edit, and the words read as before in both languages."""

from __future__ import annotations

import gettext
import io
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from notifier.web.console.i18n import DOMAIN, LANGUAGES, Translator

REPO = Path(__file__).resolve().parents[2]
LOCALE = REPO / "notifier" / "web" / "console" / "locale"
# The keywords of the extraction documented in docs/development.md.
KEYWORDS = {"_": None, "gettext": None, "pgettext": ((1, "c"), 2), "N_": None, "NP_": ((1, "c"), 2)}


def used_words() -> set[tuple[str | None, str]]:
    """(context, English) of every word the templates and i18n.py mark, as pybabel
    extract finds them with the repository's babel.cfg."""
    with open(REPO / "babel.cfg", encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    found = set()
    for _file, _line, message, _comments, context in extract_from_dir(
        str(REPO), method_map, options_map, keywords=KEYWORDS
    ):
        found.add((context, message))
    return found


def catalog_path(language: str, suffix: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / f"{DOMAIN}.{suffix}"


def test_extraction_finds_the_templates_words() -> None:
    words = used_words()
    assert len(words) > 100
    assert (None, "Overview") in words  # a template's _("...")
    assert ("status", "Sent") in words  # a word marked in i18n.py with NP_


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_word_the_console_uses_is_translated_in_each_catalog(language: str) -> None:
    with open(catalog_path(language, "po"), "rb") as po:
        catalog = read_po(po, locale=language)
    missing = []
    for context, message in sorted(used_words(), key=lambda w: (w[0] or "", w[1])):
        entry = catalog.get(message, context=context)
        if entry is None or not entry.string or entry.fuzzy:
            missing.append(f"{context or ''}|{message}")
    assert not missing, f"{language}: no translation for {missing} (see docs/development.md)"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_committed_mo_file_is_compiled_from_the_po_file(language: str) -> None:
    with open(catalog_path(language, "po"), "rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    expected = gettext.GNUTranslations(compiled)._catalog  # type: ignore[attr-defined]
    with open(catalog_path(language, "mo"), "rb") as mo:
        committed = gettext.GNUTranslations(mo)._catalog  # type: ignore[attr-defined]
    expected.pop("", None)
    committed.pop("", None)
    assert committed == expected, "run: pybabel compile -d notifier/web/console/locale"


def test_the_words_read_as_before_in_both_languages() -> None:
    vi, en = Translator("vi"), Translator("en")
    assert vi.gettext("Overview") == "Tổng quan"
    assert en.gettext("Overview") == "Overview"
    assert vi("nav_dead_letters") == "Gửi thất bại"
    assert vi.status("sent") == "Đã gửi"
    assert en.status("sent") == "Sent"
    assert vi.channel("portal") == "Cổng DVC"
    # One English word, several meanings: the context keeps them apart.
    assert vi.pgettext("sent_at", "Sent") == "Gửi lúc"
    assert vi.pgettext("sent_count", "Sent") == "Số đã gửi"
    assert vi("nav_search") == "Tra cứu"
    assert vi.pgettext("search", "Search") == "Tìm kiếm"
    assert Translator("fr").language == "vi"  # unknown languages get the default
