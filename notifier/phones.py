"""Vietnamese mobile numbers: parse the forms citizens write, give each provider its form.

Accepted: ``0901888484``, ``+84 90 188 8484``, ``84901888484``, ``090.188.8484``,
``(090) 188-8484``. Landlines, short codes and malformed numbers raise
:class:`InvalidPhone`, which adapters turn into a permanent failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import PhoneNumberType

_SEPARATORS = re.compile(r"[\s.\-()]")

# Carrier by national prefix (after the leading 0), from the numbering plan as of
# 2024; used for reports only, never to decide delivery.
_CARRIERS: dict[str, str] = {}
for _prefixes, _carrier in (
    (("32", "33", "34", "35", "36", "37", "38", "39", "86", "96", "97", "98"), "viettel"),
    (("70", "76", "77", "78", "79", "89", "90", "93"), "mobifone"),
    (("81", "82", "83", "84", "85", "88", "91", "94"), "vinaphone"),
    (("52", "56", "58", "92"), "vietnamobile"),
    (("59", "99"), "gmobile"),
    (("55",), "reddi"),
    (("87",), "itel"),
):
    for _prefix in _prefixes:
        _CARRIERS[_prefix] = _carrier


class PhoneFormat(StrEnum):
    NATIONAL = "national"  # 0901888484
    INTERNATIONAL = "international"  # 84901888484 (Zalo, most gateways)
    E164 = "e164"  # +84901888484


class InvalidPhone(ValueError):
    pass


@dataclass(frozen=True)
class MobileNumber:
    national_number: str  # 9 digits, no leading 0

    @property
    def carrier(self) -> str:
        return _CARRIERS.get(self.national_number[:2], "unknown")

    def format(self, form: PhoneFormat) -> str:
        match form:
            case PhoneFormat.NATIONAL:
                return "0" + self.national_number
            case PhoneFormat.INTERNATIONAL:
                return "84" + self.national_number
            case PhoneFormat.E164:
                return "+84" + self.national_number


def parse_mobile(raw: str) -> MobileNumber:
    """Parse a Vietnamese mobile number or raise :class:`InvalidPhone` with the reason."""
    compact = _SEPARATORS.sub("", raw.strip())
    if not re.fullmatch(r"\+?\d{8,15}", compact):
        raise InvalidPhone("not a phone number (digits, spaces, dots, dashes and + only)")
    if compact.startswith("84") and len(compact) == 11:
        compact = "+" + compact  # 84xxxxxxxxx written without the plus
    try:
        number = phonenumbers.parse(compact, "VN")
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from None
    if number.country_code != 84:
        raise InvalidPhone("not a Vietnamese number (+84)")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid Vietnamese number")
    if phonenumbers.number_type(number) != PhoneNumberType.MOBILE:
        raise InvalidPhone("not a mobile number (landlines cannot receive SMS or Zalo ZNS)")
    return MobileNumber(str(number.national_number))
