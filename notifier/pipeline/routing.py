"""Routing rules from ``config/routing.toml``: which channels each status goes to.

[statuses]                       # the default for every agency
received = ["email", "portal", "zalo"]
[agencies."000.00.12.H29".statuses]
received = ["portal"]            # an agency's override of one status
[fallback]
zalo = ["sms"]                   # when zalo fails permanently, try sms once

mandatory = ["refused"]          # sent by every routed channel whatever the citizen chose
urgent = []                      # never held by quiet hours
[quiet_hours]                    # Vietnam time; SMS and Zalo held to the window's end
start = "21:00"
end = "07:00"
channels = ["sms", "zalo"]
[frequency_caps.sms]             # per recipient: over the cap, "hold" or "suppress"
per_hour = 3
per_day = 8
over = "hold"
identical_within_minutes = 60

An agency's table may override ``statuses``, ``mandatory``, ``urgent`` and
``quiet_hours``. The citizen's side of these rules: :mod:`notifier.pipeline.choices`.

"One of": an entry "zalo|sms" sends the first of those channels the citizen can be
reached on (consented, with a contact), instead of all of them; see Routing.groups_for.

[coalescing]                     # status changes of one dossier within a window
window_s = { sms = 120, zalo = 120 }   # per channel (0 or absent: never held)
always = ["refused", "result_ready"]   # statuses never superseded

[budget]                         # when an agency has spent its monthly budget
at_limit = "continue"            # or "cheaper_only": only the channels below
cheaper = ["portal", "email", "zalo"]
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from notifier.events import Status, parse_status
from notifier.pipeline.choices import Choices, QuietHours, parse_cap, parse_quiet_hours
from notifier.settings import SettingsError

_CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")
# "zalo|sms": one of these channels, the first that reaches the citizen.
ONE_OF = "|"
# A coalescing window longer than this would hold news for too long (and past the
# sweeper's staleness horizon).
MAX_WINDOW_S = 3600

# A status's channels as groups: one channel each, or a one-of group's alternatives.
ChannelGroups = tuple[tuple[str, ...], ...]


class AtLimit(StrEnum):
    """What routing does once an agency has spent its monthly budget."""

    CONTINUE = "continue"  # send as usual (the alert still fires)
    CHEAPER_ONLY = "cheaper_only"  # only the budget's ``cheaper`` channels


@dataclass(frozen=True)
class Coalescing:
    """Per channel, the window (seconds) within which a dossier's status changes make
    one message (the latest status's); statuses in ``always`` are never superseded."""

    window_s: dict[str, int] = field(default_factory=dict)
    always: frozenset[Status] = frozenset()

    def window_for(self, channel: str) -> int:
        return self.window_s.get(channel, 0)


@dataclass(frozen=True)
class BudgetRule:
    at_limit: AtLimit = AtLimit.CONTINUE
    cheaper: tuple[str, ...] = ()


@dataclass(frozen=True)
class Routing:
    # Every channel a status goes to (a one-of group's alternatives included).
    default: dict[Status, tuple[str, ...]]
    agencies: dict[str, dict[Status, tuple[str, ...]]] = field(default_factory=dict)
    fallback: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Channels named by the rules but not enabled here: skipped, and logged at start-up.
    skipped_channels: frozenset[str] = frozenset()
    # Mandatory and urgent statuses, quiet hours and frequency caps.
    choices: Choices = field(default_factory=Choices)
    # The same rules as groups: one channel each, or a one-of group's alternatives.
    default_groups: dict[Status, ChannelGroups] = field(default_factory=dict)
    agency_groups: dict[str, dict[Status, ChannelGroups]] = field(default_factory=dict)
    coalescing: Coalescing = field(default_factory=Coalescing)
    budget: BudgetRule = field(default_factory=BudgetRule)

    def channels_for(self, agency_code: str, status: Status) -> tuple[str, ...]:
        override = self.agencies.get(agency_code, {})
        if status in override:
            return override[status]
        return self.default.get(status, ())

    def groups_for(self, agency_code: str, status: Status) -> ChannelGroups:
        """The status's channels as groups: ``("email",)`` is sent; ``("zalo", "sms")``
        sends only the first alternative that reaches the citizen."""
        override = self.agency_groups.get(agency_code, {})
        if status in override:
            return override[status]
        # An override given as plain channels (no groups known for it): one each.
        plain = self.agencies.get(agency_code, {})
        if status in plain:
            return tuple((c,) for c in plain[status])
        if status in self.default_groups:
            return self.default_groups[status]
        return tuple((c,) for c in self.channels_for(agency_code, status))

    def fallback_for(self, channel: str) -> tuple[str, ...]:
        return self.fallback.get(channel, ())

    @classmethod
    def load(cls, path: Path, known_channels: set[str]) -> Routing:
        if not path.is_file():
            raise SettingsError([f"routing rules not found: {path}"])
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError([f"{path}: {exc}"]) from None
        problems: list[str] = []
        skipped: set[str] = set()

        def statuses(
            table: object, where: str
        ) -> tuple[dict[Status, tuple[str, ...]], dict[Status, ChannelGroups]]:
            result: dict[Status, tuple[str, ...]] = {}
            groups_of: dict[Status, ChannelGroups] = {}
            if not isinstance(table, dict):
                problems.append(f"{path}: [{where}] must be a table of status = [channels]")
                return result, groups_of
            for key, channels in table.items():
                try:
                    status = parse_status(key)
                except ValueError as exc:
                    problems.append(f"{path}: [{where}] {exc}")
                    continue
                groups = _groups(channels, f"[{where}] {key}")
                groups_of[status] = groups
                result[status] = tuple(c for group in groups for c in group)
            return result, groups_of

        def _groups(value: object, where: str) -> ChannelGroups:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{path}: {where} must be a list of channel names")
                return ()
            groups = []
            for entry in value:
                group = _channels(entry.split(ONE_OF), where)
                if group:
                    groups.append(group)
            return tuple(groups)

        def _channels(value: object, where: str) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{path}: {where} must be a list of channel names")
                return ()
            malformed = [v for v in value if not _CHANNEL_NAME.fullmatch(v)]
            if malformed:
                problems.append(f"{path}: {where} has malformed channel names: {malformed}")
            skipped.update(v for v in value if v not in known_channels)
            return tuple(v for v in value if v in known_channels)

        default, default_groups = statuses(document.get("statuses", {}), "statuses")
        missing = [s.value for s in Status if s not in default]
        if missing:
            problems.append(f"{path}: [statuses] has no rule for: {', '.join(missing)}")
        agencies: dict[str, dict[Status, tuple[str, ...]]] = {}
        agency_groups: dict[str, dict[Status, ChannelGroups]] = {}
        agency_tables = document.get("agencies", {})
        if not isinstance(agency_tables, dict):
            problems.append(f"{path}: [agencies] must be a table of agency codes")
            agency_tables = {}

        def status_list(value: object, where: str) -> frozenset[str]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{path}: {where} must be a list of statuses")
                return frozenset()
            found = set()
            for item in value:
                try:
                    found.add(parse_status(item).value)
                except ValueError as exc:
                    problems.append(f"{path}: {where}: {exc}")
            return frozenset(found)

        def quiet(table: object, where: str, default: QuietHours) -> QuietHours:
            try:
                return parse_quiet_hours(table, where, default)
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
                return default

        mandatory = status_list(document.get("mandatory", []), "mandatory")
        urgent = status_list(document.get("urgent", []), "urgent")
        quiet_hours = (
            quiet(document["quiet_hours"], "quiet_hours", QuietHours())
            if "quiet_hours" in document
            else QuietHours()
        )
        caps = {}
        cap_tables = document.get("frequency_caps", {})
        if not isinstance(cap_tables, dict):
            problems.append(f"{path}: [frequency_caps] must be a table of channel tables")
            cap_tables = {}
        for channel, table in cap_tables.items():
            try:
                caps[channel] = parse_cap(table, f"frequency_caps.{channel}")
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
        agency_mandatory: dict[str, frozenset[str]] = {}
        agency_urgent: dict[str, frozenset[str]] = {}
        agency_quiet: dict[str, QuietHours] = {}
        for code, table in agency_tables.items():
            if not isinstance(table, dict):
                problems.append(
                    f'{path}: agencies."{code}" must be a table: '
                    f'[agencies."{code}".statuses] with status = [channels]'
                )
                continue
            extra_keys = set(table) - {"statuses", "mandatory", "urgent", "quiet_hours"}
            if extra_keys:
                problems.append(
                    f'{path}: agencies."{code}" has unknown keys: {", ".join(sorted(extra_keys))}'
                )
            agencies[code], agency_groups[code] = statuses(
                table.get("statuses", {}), f'agencies."{code}".statuses'
            )
            if "mandatory" in table:
                agency_mandatory[code] = status_list(
                    table["mandatory"], f'agencies."{code}".mandatory'
                )
            if "urgent" in table:
                agency_urgent[code] = status_list(table["urgent"], f'agencies."{code}".urgent')
            if "quiet_hours" in table:
                agency_quiet[code] = quiet(
                    table["quiet_hours"], f'agencies."{code}".quiet_hours', quiet_hours
                )
        fallback_table = document.get("fallback", {})
        if not isinstance(fallback_table, dict):
            problems.append(f"{path}: [fallback] must be a table of channel = [channels]")
            fallback_table = {}
        fallback = {
            channel: _channels(targets, f"[fallback] {channel}")
            for channel, targets in fallback_table.items()
        }
        coalescing = _coalescing(document.get("coalescing", {}), path, problems)
        budget = _budget(document.get("budget", {}), path, problems, _channels)
        extra = set(document) - {
            "statuses",
            "agencies",
            "fallback",
            "mandatory",
            "urgent",
            "quiet_hours",
            "frequency_caps",
            "coalescing",
            "budget",
        }
        if extra:
            problems.append(f"{path}: unknown sections: {', '.join(sorted(extra))}")
        if problems:
            raise SettingsError(problems)
        return cls(
            default=default,
            agencies=agencies,
            fallback=fallback,
            skipped_channels=frozenset(skipped),
            choices=Choices(
                mandatory=mandatory,
                urgent=urgent,
                quiet_hours=quiet_hours,
                caps=caps,
                agency_mandatory=agency_mandatory,
                agency_urgent=agency_urgent,
                agency_quiet_hours=agency_quiet,
            ),
            default_groups=default_groups,
            agency_groups=agency_groups,
            coalescing=coalescing,
            budget=budget,
        )


def _coalescing(table: object, path: Path, problems: list[str]) -> Coalescing:
    if not isinstance(table, dict):
        problems.append(f"{path}: [coalescing] must be a table")
        return Coalescing()
    unknown = set(table) - {"window_s", "always"}
    if unknown:
        problems.append(f"{path}: [coalescing] unknown keys: {', '.join(sorted(unknown))}")
    windows = table.get("window_s", {})
    window_s: dict[str, int] = {}
    if not isinstance(windows, dict):
        problems.append(f"{path}: [coalescing] window_s must be a table of channel = seconds")
        windows = {}
    for channel, seconds in windows.items():
        if (
            not isinstance(seconds, int)
            or isinstance(seconds, bool)
            or not 0 <= seconds <= MAX_WINDOW_S
        ):
            problems.append(
                f"{path}: [coalescing] window_s.{channel} must be whole seconds "
                f"from 0 to {MAX_WINDOW_S}"
            )
            continue
        window_s[channel] = seconds
    always_list = table.get("always", [])
    always: set[Status] = set()
    if not isinstance(always_list, list):
        problems.append(f"{path}: [coalescing] always must be a list of statuses")
        always_list = []
    for key in always_list:
        try:
            always.add(parse_status(key))
        except ValueError as exc:
            problems.append(f"{path}: [coalescing] always: {exc}")
    return Coalescing(window_s=window_s, always=frozenset(always))


def _budget(
    table: object,
    path: Path,
    problems: list[str],
    channels: Callable[[object, str], tuple[str, ...]],
) -> BudgetRule:
    if not isinstance(table, dict):
        problems.append(f"{path}: [budget] must be a table")
        return BudgetRule()
    unknown = set(table) - {"at_limit", "cheaper"}
    if unknown:
        problems.append(f"{path}: [budget] unknown keys: {', '.join(sorted(unknown))}")
    try:
        at_limit = AtLimit(table.get("at_limit", AtLimit.CONTINUE.value))
    except ValueError:
        problems.append(f"{path}: [budget] at_limit must be one of: continue, cheaper_only")
        at_limit = AtLimit.CONTINUE
    cheaper = channels(table.get("cheaper", []), "[budget] cheaper")
    if at_limit is AtLimit.CHEAPER_ONLY and "cheaper" not in table:
        problems.append(f"{path}: [budget] at_limit = cheaper_only needs a cheaper = [channels]")
    return BudgetRule(at_limit=at_limit, cheaper=cheaper)
