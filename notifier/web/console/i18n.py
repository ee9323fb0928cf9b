"""The console's words in Vietnamese (the default) and English, and local formatting.

The words are gettext catalogs managed with Babel, in ``locale/<lang>/LC_MESSAGES/``
(translators edit the .po files; see "Translating the console" in docs/development.md).
English is the source language: templates write ``_("Overview")``, and words chosen at
run time are marked here with ``N_``/``NP_``.

Times are shown in Vietnam's time zone (UTC+7), the zone of the agencies and of the
people who read the console; the JSON API and the CLI keep UTC ISO 8601.
"""

from __future__ import annotations

import functools
import gettext
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, NamedTuple

from notifier.events import Status
from notifier.ops.reports import zone
from notifier.store.deliveries.lifecycle import DeliveryStatus

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"
LOCAL_ZONE: tzinfo = zone(None)

_LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"


class Word(NamedTuple):
    """A console word chosen at run time (a status, a menu entry), in English, with the
    gettext context that tells apart two meanings of the same English word."""

    context: str | None
    message: str


def N_(message: str) -> Word:  # gettext's marker name, known to pybabel
    """Marks ``message`` for extraction; translated when shown."""
    return Word(None, message)


def NP_(context: str, message: str) -> Word:  # pgettext's marker (pybabel -k NP_:1c,2)
    return Word(context, message)


# Words the templates and pages look up by key (``t('nav_' ~ key)``, a status, a
# channel). Every other word is written in its template as ``_("...")``.
KEYED_WORDS: dict[str, Word] = {
    "nav_overview": N_("Overview"),
    "nav_search": NP_("nav_search", "Search"),
    "nav_dead_letters": N_("Dead letters"),
    "nav_rejects": N_("Rejected events"),
    "nav_inbound": N_("Citizens' messages"),
    "command_status": N_("Status lookup"),
    "command_stop": N_("Stop"),
    "command_start": N_("Start again"),
    "command_help": N_("Help"),
    "command_unrecognised": N_("Not understood"),
    "outcome_answered": N_("Answered"),
    "outcome_rate-limited": N_("Too many: told once"),
    "outcome_silenced": N_("Too many: not answered"),
    "outcome_ignored": N_("Sender cannot be answered"),
    "nav_providers": N_("Providers"),
    "nav_callbacks": N_("Callbacks"),
    "nav_reports": N_("Reports"),
    "bad_credentials": N_("Wrong username or password."),
    "too_many_attempts": N_("Too many failed sign-ins. Please try again in a few minutes."),
    "session_expired": N_("Your session has expired; please sign in again."),
    "role_viewer": N_("Viewer"),
    "role_admin": N_("Admin"),
    "window_hour": N_("Last hour"),
    "window_day": N_("Last 24 hours"),
    "window_month": N_("Last 30 days"),
    "over_time": N_("Deliveries over time"),
    "no_results": N_("Nothing matches."),
    "kind_exhausted": N_("Retries exhausted"),
    "kind_permanent": N_("All permanent failures"),
    "kind_temporary": N_("Temporary failures waiting"),
    "circuit_closed": N_("Closed"),
    "circuit_half-open": N_("Half-open"),
    "circuit_open": N_("Open"),
    "not_found": N_("Page not found."),
    "forbidden": N_("You may not do this."),
    "bad_request": N_("Bad request."),
}

STATUS_WORDS: dict[str, Word] = {
    DeliveryStatus.QUEUED: N_("Queued"),
    DeliveryStatus.SENDING: N_("Sending"),
    DeliveryStatus.SENT: NP_("status", "Sent"),
    DeliveryStatus.DELIVERED: NP_("status", "Delivered"),
    DeliveryStatus.TEMPORARY_FAILURE: N_("Temporary failure"),
    DeliveryStatus.PERMANENT_FAILURE: N_("Permanent failure"),
    DeliveryStatus.SUPPRESSED: N_("Suppressed"),
    DeliveryStatus.SCHEDULED: N_("Scheduled (held until due)"),
    DeliveryStatus.SUPERSEDED: N_("Superseded (a later status was sent)"),
    "replayed": NP_("status", "Replayed"),
    "replay-failed": N_("Replay failed"),
    "receipt:delivered": N_("Receipt: delivered"),
    "receipt:failed": N_("Receipt: failed"),
    DeliveryStatus.UNKNOWN: N_("Unknown (held)"),
    "resolved:resend": N_("Admin: resend"),
    "resolved:mark-sent": N_("Admin: marked sent"),
}

# "kind:reason" of a delivery held or suppressed (DeliveryLog.reason_counts).
REASON_KINDS: dict[str, Word] = {
    "suppressed": N_("Suppressed"),
    "scheduled": N_("Held now"),
    "held": N_("Held, then sent on"),
}
REASON_WORDS: dict[str, Word] = {
    "opted_out": N_("opted out"),
    "channel_off": N_("channel turned off by the citizen"),
    "frequency_cap": N_("frequency cap"),
    "duplicate_content": N_("same text sent just before"),
    "quiet_hours": N_("quiet hours"),
    "coalescing": N_("coalescing"),
    "unspecified": N_("no reason recorded"),
}

CHANNEL_WORDS: dict[str, Word] = {
    "email": N_("Email"),
    "sms": N_("SMS"),
    "zalo": N_("Zalo"),
    "portal": N_("Portal inbox"),
}

# Statuses in the order the console lists and stacks them (good to bad).
STATUS_ORDER = (
    DeliveryStatus.DELIVERED,
    DeliveryStatus.SENT,
    DeliveryStatus.SENDING,
    DeliveryStatus.QUEUED,
    DeliveryStatus.SCHEDULED,
    DeliveryStatus.TEMPORARY_FAILURE,
    DeliveryStatus.PERMANENT_FAILURE,
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.SUPPRESSED,
    DeliveryStatus.SUPERSEDED,
)


def pick_language(query: str | None, cookie: str | None) -> str:
    for value in (query, cookie):
        if value in LANGUAGES:
            return value
    return DEFAULT_LANGUAGE


@functools.cache
def catalog(language: str) -> gettext.GNUTranslations:
    """The compiled catalog of ``language`` (``locale/<lang>/LC_MESSAGES/messages.mo``,
    built from the .po files with ``pybabel compile``; see docs/development.md)."""
    path = _LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with path.open("rb") as compiled:
        return gettext.GNUTranslations(compiled)


class Translator:
    """The per-request helpers templates use: ``_``/``gettext``, ``pgettext``, ``t`` for
    the words looked up by key, labels and local formats."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        self.catalog = catalog(self.language)

    def gettext(self, message: str, **variables: Any) -> str:
        text = self.catalog.gettext(message)
        return text % variables if variables else text

    def pgettext(self, context: str, message: str, **variables: Any) -> str:
        text = self.catalog.pgettext(context, message)
        return text % variables if variables else text

    def word(self, word: Word) -> str:
        if word.context is None:
            return self.catalog.gettext(word.message)
        return self.catalog.pgettext(word.context, word.message)

    def __call__(self, key: str) -> str:
        found = KEYED_WORDS.get(key)
        return self.word(found) if found is not None else key

    def status(self, value: str) -> str:
        found = STATUS_WORDS.get(value)
        return self.word(found) if found is not None else value

    def channel(self, value: str) -> str:
        found = CHANNEL_WORDS.get(value)
        return self.word(found) if found is not None else value

    def reason(self, value: str) -> str:
        """``kind:reason`` in words, e.g. "Suppressed: opted out"."""
        kind, _, reason = value.partition(":")
        kind_word, reason_word = REASON_KINDS.get(kind), REASON_WORDS.get(reason)
        return (
            f"{self.word(kind_word) if kind_word else kind}: "
            f"{self.word(reason_word) if reason_word else reason}"
        )

    def dossier_status(self, value: str) -> str:
        try:
            status = Status(value)
        except ValueError:
            return value
        if self.language == "vi":
            code = status.code
            return f"{status.vietnamese_name}" + (f" ({code})" if code else "")
        return value.replace("_", " ").capitalize()

    def when(self, value: datetime | None, *, seconds: bool = True) -> str:
        if value is None:
            return "–"
        local = value.astimezone(LOCAL_ZONE)
        if self.language == "vi":
            return local.strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")
        return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def number(self, value: float | int | None) -> str:
        if value is None:
            return "–"
        text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
        if self.language == "vi":  # 1.234.567,8
            text = text.replace(",", "\0").replace(".", ",").replace("\0", ".")
        return text

    def percent(self, value: float | None) -> str:
        if value is None:
            return "–"
        text = f"{value * 100:.1f} %"
        return text.replace(".", ",") if self.language == "vi" else text

    def duration(self, seconds: float | None) -> str:
        """A short human duration: 850 ms, 4,2 s, 3 min 05 s, 2 h 10 min."""
        if seconds is None:
            return "–"
        if seconds < 1:
            return f"{seconds * 1000:.0f} ms"
        if seconds < 60:
            text = f"{seconds:.1f} s"
            return text.replace(".", ",") if self.language == "vi" else text
        minutes, secs = divmod(round(seconds), 60)
        if minutes < 60:
            return f"{minutes} min {secs:02d} s"
        hours, minutes = divmod(minutes, 60)
        if hours < 48:
            return f"{hours} h {minutes:02d} min"
        days, hours = divmod(hours, 24)
        return f"{days} {'ngày' if self.language == 'vi' else 'd'} {hours} h"

    def helpers(self) -> dict[str, Any]:
        return {
            "_": self.gettext,
            "gettext": self.gettext,
            "pgettext": self.pgettext,
            "t": self,
            "lang": self.language,
            "status_label": self.status,
            "channel_label": self.channel,
            "reason_label": self.reason,
            "dossier_status": self.dossier_status,
            "when": self.when,
            "number": self.number,
            "percent": self.percent,
            "duration": self.duration,
        }
