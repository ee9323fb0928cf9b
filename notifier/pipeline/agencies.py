"""The optional registry of agencies: code → official name(s), from a TOML file.

When configured (``NOTIFIER_AGENCIES_FILE``), an event for an agency code that is not
in it is rejected, and the name shown to citizens comes from the registry, never from
the event (an event cannot say "UBND B" for agency A).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from notifier.events import CODE_PATTERN, Agency, DossierStatusEvent


class AgencyRegistryError(Exception):
    """The registry file cannot be used; the message names the problem."""


_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _Name
    name_en: _Name | None = None


@dataclass(frozen=True)
class RegisteredAgency:
    code: str
    name: str
    name_en: str | None = None

    def name_in(self, language: str) -> str:
        return self.name_en if language == "en" and self.name_en else self.name


class AgencyRegistry:
    def __init__(self, agencies: dict[str, RegisteredAgency], source: str) -> None:
        self.agencies = agencies
        self.source = source

    @classmethod
    def load(cls, path: Path) -> AgencyRegistry:
        try:
            document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AgencyRegistryError(
                f"{path}: cannot read the registry of agencies: {exc}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise AgencyRegistryError(f"{path}: not valid TOML: {exc}") from None
        table = document.get("agencies")
        if not isinstance(table, dict) or set(document) != {"agencies"}:
            raise AgencyRegistryError(f'{path}: expected only [agencies."<code>"] tables')
        agencies = {}
        for code, entry in table.items():
            if not CODE_PATTERN.fullmatch(code):
                raise AgencyRegistryError(f"{path}: {code!r} is not a valid agency code")
            try:
                parsed = _Entry.model_validate(entry)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise AgencyRegistryError(
                    f"{path}: agencies.{code}.{'.'.join(map(str, first['loc']))}: {first['msg']}"
                ) from None
            agencies[code] = RegisteredAgency(code, parsed.name, parsed.name_en)
        return cls(agencies, str(path))

    def unknown(self, agency_code: str) -> str | None:
        """Why an event for ``agency_code`` is refused, or None if the agency is known."""
        if agency_code in self.agencies:
            return None
        return f"agency {agency_code!r} is not in the registry of agencies ({self.source})"

    def resolved(self, event: DossierStatusEvent) -> DossierStatusEvent:
        """The event with its agency's name from the registry, in the citizen's language."""
        found = self.agencies.get(event.agency.code)
        if found is None:
            return event
        agency = Agency(code=found.code, name=found.name_in(event.applicant.language))
        return event.model_copy(update={"agency": agency})
