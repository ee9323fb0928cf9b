"""Vietnamese mobile numbers: parse the forms citizens write, give each provider its form.

Accepted: ``0901888484``, ``+84 90 188 8484``, ``84901888484``, ``090.188.8484``,
``(090) 188-8484``, ``0084 90 188 8484``. Only what is certainly not a Vietnamese
mobile number raises :class:`InvalidPhone` (which adapters turn into a permanent
failure): not digits, a foreign country code, landlines (``02x``), short codes and any
number whose length is not 0 + 9 digits (the old 11-digit mobile numbers included).

Prefix blocks. A number in one of the mobile blocks of the published numbering plan
(:data:`MOBILE_BLOCKS`) is accepted as it is: libphonenumber's metadata lags and
refuses real numbers (in 2026 it accepted only 0896-0899 of MobiFone's 089 block,
refusing 0890-0895). A number outside those blocks is accepted only when
libphonenumber's current metadata knows it as a mobile number (e.g. 030x, which it
lists and the published plan does not): neither source saying "mobile" is the one case
we refuse for the block. Whatever we accept, the gateway judges last and its answer
is recorded (eSMS 108, SpeedSMS 105). See docs/adapters.md and shared/providers.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import PhoneNumberType

_SEPARATORS = re.compile(r"[\s.\-()]")
_COUNTRY = "84"
_NATIONAL_LENGTH = 9  # digits after the trunk 0 (or after +84)

# Mobile blocks (the two digits after the leading 0) by carrier, as commonly published
# for the national numbering plan (shared/providers.md): Viettel 032-039, 086,
# 096-098; MobiFone 070, 076-079, 089, 090, 093; Vinaphone 081-085, 088, 091, 094;
# Vietnamobile 052, 056, 058, 092; Gmobile 059, 099; Reddi 055; and iTel's 087, which
# libphonenumber lists too. Used to accept numbers and for reports, never to route.
_CARRIER_BLOCKS: dict[str, tuple[str, ...]] = {
    "viettel": ("32", "33", "34", "35", "36", "37", "38", "39", "86", "96", "97", "98"),
    "mobifone": ("70", "76", "77", "78", "79", "89", "90", "93"),
    "vinaphone": ("81", "82", "83", "84", "85", "88", "91", "94"),
    "vietnamobile": ("52", "56", "58", "92"),
    "gmobile": ("59", "99"),
    "reddi": ("55",),
    "itel": ("87",),
}
_CARRIERS: dict[str, str] = {
    block: carrier for carrier, blocks in _CARRIER_BLOCKS.items() for block in blocks
}
MOBILE_BLOCKS: frozenset[str] = frozenset(_CARRIERS)


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
    """Parse a Vietnamese mobile number or raise :class:`InvalidPhone` with the reason
    (never repeating the number)."""
    compact = _SEPARATORS.sub("", raw.strip())
    if not re.fullmatch(r"\+?\d{3,15}", compact):
        raise InvalidPhone("not a phone number (digits, spaces, dots, dashes and + only)")
    national = _national_digits(compact)
    if national.startswith("2"):
        raise InvalidPhone("not a mobile number (landlines cannot receive SMS or Zalo ZNS)")
    if national.startswith("1") and len(national) > _NATIONAL_LENGTH:
        raise InvalidPhone(
            "not a current mobile number: the 11-digit 01x numbers were converted to "
            "10 digits in 2018"
        )
    if len(national) != _NATIONAL_LENGTH:
        raise InvalidPhone(
            f"not a Vietnamese mobile number: wrong length (mobile numbers are 0 and "
            f"{_NATIONAL_LENGTH} digits)"
        )
    if national[:2] not in MOBILE_BLOCKS and not _listed_as_mobile(national):
        raise InvalidPhone(
            f"not a Vietnamese mobile number: 0{national[:2]} is not a mobile prefix block"
        )
    return MobileNumber(national)


def _national_digits(compact: str) -> str:
    """The digits after the country code or trunk 0: 0901888484, +84901888484,
    84901888484, 0084901888484 and +84 0901888484 all give 901888484."""
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]  # the international call prefix
    elif compact.startswith(_COUNTRY) and len(compact) == len(_COUNTRY) + _NATIONAL_LENGTH:
        digits = compact  # 84xxxxxxxxx written without the plus
    elif compact.startswith("0"):
        return compact[1:]
    else:
        return compact  # written without the trunk 0: 901888484
    if not digits.startswith(_COUNTRY):
        raise InvalidPhone("not a Vietnamese number (+84)")
    national = digits[len(_COUNTRY) :]
    # "+84 (0) 90 188 8484": the trunk 0 kept after the country code.
    if national.startswith("0") and len(national) == _NATIONAL_LENGTH + 1:
        national = national[1:]
    return national


def _listed_as_mobile(national: str) -> bool:
    """Whether libphonenumber's metadata knows this number as a Vietnamese mobile."""
    try:
        number = phonenumbers.parse("+" + _COUNTRY + national)
    except phonenumbers.NumberParseException:
        return False
    return bool(
        phonenumbers.is_valid_number(number)
        and phonenumbers.number_type(number)
        in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
    )
