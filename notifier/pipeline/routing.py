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
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from notifier.events import Status, parse_status
from notifier.pipeline.choices import Choices, QuietHours, parse_cap, parse_quiet_hours
from notifier.settings import SettingsError

_CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")


@dataclass(frozen=True)
class Routing:
    default: dict[Status, tuple[str, ...]]
    agencies: dict[str, dict[Status, tuple[str, ...]]] = field(default_factory=dict)
    fallback: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Channels named by the rules but not enabled here: skipped, and logged at start-up.
    skipped_channels: frozenset[str] = frozenset()
    # Mandatory and urgent statuses, quiet hours and frequency caps.
    choices: Choices = field(default_factory=Choices)

    def channels_for(self, agency_code: str, status: Status) -> tuple[str, ...]:
        override = self.agencies.get(agency_code, {})
        if status in override:
            return override[status]
        return self.default.get(status, ())

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

        def statuses(table: object, where: str) -> dict[Status, tuple[str, ...]]:
            result: dict[Status, tuple[str, ...]] = {}
            if not isinstance(table, dict):
                problems.append(f"{path}: [{where}] must be a table of status = [channels]")
                return result
            for key, channels in table.items():
                try:
                    status = parse_status(key)
                except ValueError as exc:
                    problems.append(f"{path}: [{where}] {exc}")
                    continue
                result[status] = _channels(channels, f"[{where}] {key}")
            return result

        def _channels(value: object, where: str) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{path}: {where} must be a list of channel names")
                return ()
            malformed = [v for v in value if not _CHANNEL_NAME.fullmatch(v)]
            if malformed:
                problems.append(f"{path}: {where} has malformed channel names: {malformed}")
            skipped.update(v for v in value if v not in known_channels)
            return tuple(v for v in value if v in known_channels)

        default = statuses(document.get("statuses", {}), "statuses")
        missing = [s.value for s in Status if s not in default]
        if missing:
            problems.append(f"{path}: [statuses] has no rule for: {', '.join(missing)}")
        agencies: dict[str, dict[Status, tuple[str, ...]]] = {}
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
            agencies[code] = statuses(table.get("statuses", {}), f'agencies."{code}".statuses')
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
        extra = set(document) - {
            "statuses",
            "agencies",
            "fallback",
            "mandatory",
            "urgent",
            "quiet_hours",
            "frequency_caps",
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
        )
