"""What a citizen's inbound text asks for: a dossier's status, stop, start, help.

Pure and total: any text (empty, huge, emoji, control characters) gives a
:class:`Command`, never an exception. Vietnamese with or without diacritics, any case,
any spacing and punctuation around the words; English aliases::

    <code>                       the dossier's status (a code alone)
    TRA CUU <code>, TRACUU <code>, TRA CỨU: <code>, CHECK <code>, STATUS <code>
    HUY, TU CHOI, TUCHOI, STOP   stop SMS (as before: the whole message only, since
                                 "Huy" is also a given name)
    DANG KY, DANGKY, START       opt back in
    HD, HUONG DAN, HELP          how to ask
    anything else                unrecognised: a polite answer saying how to ask

A dossier code follows the government office's circular (``<agency code>-<YYMMDD>-
<NNNN>``, e.g. ``000.00.12.H29-231025-0001``), but systems differ, so after a keyword
any code-like token is taken (letters, digits, ``. - _ /``, with a digit). A token
alone must look more like a code: a digit and a separator, or eight characters or more,
so that "HD1" or "1" is not looked up.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from notifier.store.optouts import STOP_WORDS
from notifier.text import strip_diacritics

# Texts longer than this are not commands (SMS concatenation tops out well below it):
# read only the start, so a huge body costs nothing.
MAX_COMMAND_CHARS = 500
MAX_CODE_CHARS = 64


class CommandKind(StrEnum):
    STATUS = "status"
    STOP = "stop"
    START = "start"
    HELP = "help"
    UNRECOGNISED = "unrecognised"


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    # The code as the citizen typed it (diacritics and spacing removed), for STATUS.
    dossier_code: str | None = None
    # The language the citizen wrote in, as far as the words tell (English aliases):
    # the reply's language unless the dossier says otherwise.
    language: str = "vi"


START_WORDS = frozenset({"DANG KY", "DANGKY", "START"})
HELP_WORDS = frozenset({"HD", "HUONG DAN", "HUONGDAN", "HELP"})
_ENGLISH = frozenset({"STOP", "START", "HELP", "CHECK", "STATUS"})
_LOOKUP_WORDS = ("TRA CUU", "TRACUU", "CHECK", "STATUS")

_CODE = rf"[A-Z0-9][A-Z0-9._/\-]{{0,{MAX_CODE_CHARS - 1}}}"
_LOOKUP = re.compile(rf"(?P<word>TRA ?CUU|CHECK|STATUS)\s*:?\s*(?P<code>{_CODE})")
_ALONE = re.compile(_CODE)
# Everything but letters, digits and the characters codes use becomes a space.
_NOT_CODE_CHARS = re.compile(r"[^A-Z0-9._/\-:]+")
_WORD_SEPARATORS = re.compile(r"[^A-Z0-9]+")


def _plain(text: str) -> str:
    """Upper case ASCII letters and digits, the code characters, single spaces."""
    text = text[:MAX_COMMAND_CHARS]
    # Lone surrogates (possible from a JSON body) cannot be normalised: drop them.
    text = text.encode("utf-8", errors="ignore").decode("utf-8")
    text = unicodedata.normalize("NFKC", text)
    text = strip_diacritics(text).upper()
    return " ".join(_NOT_CODE_CHARS.sub(" ", text).split()).strip(" ._/-:")


def _has_digit(token: str) -> bool:
    return any(ch.isdigit() for ch in token)


def _code(token: str) -> str | None:
    token = token.strip("._/-")
    if not token or len(token) > MAX_CODE_CHARS or not _has_digit(token):
        return None
    return token


def parse_command(text: str) -> Command:
    """The command ``text`` asks for (see the module's docstring). Never raises."""
    plain = _plain(text)
    words = " ".join(_WORD_SEPARATORS.sub(" ", plain).split())
    english = "en" if words.split(" ", 1)[0] in _ENGLISH else "vi"
    if words in STOP_WORDS:
        return Command(CommandKind.STOP, language=english)
    if words in START_WORDS:
        return Command(CommandKind.START, language=english)
    if words in HELP_WORDS:
        return Command(CommandKind.HELP, language=english)
    lookup = _LOOKUP.fullmatch(plain)
    if lookup is not None:
        code = _code(lookup["code"])
        if code is not None:
            return Command(CommandKind.STATUS, dossier_code=code, language=english)
    if _ALONE.fullmatch(plain):
        code = _code(plain)
        separated = code is not None and any(ch in code for ch in "._/-")
        if code is not None and (separated or len(code) >= 8):
            return Command(CommandKind.STATUS, dossier_code=code)
    if any(words.startswith(word) for word in _LOOKUP_WORDS):
        # TRA CUU without a usable code: tell them how to ask, in their words.
        return Command(CommandKind.HELP, language=english)
    return Command(CommandKind.UNRECOGNISED, language="vi")
