"""Routing rules from ``config/routing.toml``: which channels each status goes to.

[statuses]                       # the default for every agency
received = ["email", "portal", "zalo"]
[agencies."000.00.12.H29".statuses]
received = ["portal"]            # an agency's override of one status
[fallback]
zalo = ["sms"]                   # when zalo fails permanently, try sms once
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from notifier.events import Status, parse_status
from notifier.settings import SettingsError

_CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")


@dataclass(frozen=True)
class Routing:
    default: dict[Status, tuple[str, ...]]
    agencies: dict[str, dict[Status, tuple[str, ...]]] = field(default_factory=dict)
    fallback: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Channels named by the rules but not enabled here: skipped, and logged at start-up.
    skipped_channels: frozenset[str] = frozenset()

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
        for code, table in agency_tables.items():
            if not isinstance(table, dict):
                problems.append(
                    f'{path}: agencies."{code}" must be a table: '
                    f'[agencies."{code}".statuses] with status = [channels]'
                )
                continue
            agencies[code] = statuses(table.get("statuses", {}), f'agencies."{code}".statuses')
        fallback_table = document.get("fallback", {})
        if not isinstance(fallback_table, dict):
            problems.append(f"{path}: [fallback] must be a table of channel = [channels]")
            fallback_table = {}
        fallback = {
            channel: _channels(targets, f"[fallback] {channel}")
            for channel, targets in fallback_table.items()
        }
        extra = set(document) - {"statuses", "agencies", "fallback"}
        if extra:
            problems.append(f"{path}: unknown sections: {', '.join(sorted(extra))}")
        if problems:
            raise SettingsError(problems)
        return cls(
            default=default,
            agencies=agencies,
            fallback=fallback,
            skipped_channels=frozenset(skipped),
        )
