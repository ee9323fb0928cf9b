"""Text helpers shared by the core and adapters: Vietnamese without diacritics, SMS length."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

# The GSM 03.38 default alphabet; the extension table's characters count double.
_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€")


def strip_diacritics(text: str) -> str:
    """Vietnamese without accents: "Hồ sơ đã được tiếp nhận" → "Ho so da duoc tiep nhan"."""
    # Đ/đ are letters of their own, not D plus a mark; Ð/ð are often typed for them.
    for accented, plain in (("đ", "d"), ("Đ", "D"), ("ð", "d"), ("Ð", "D")):
        text = text.replace(accented, plain)
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize(
        "NFC", "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    )


def is_gsm7(text: str) -> bool:
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in text)


@dataclass(frozen=True)
class SmsLength:
    encoding: str  # "gsm7" or "ucs2"
    units: int  # septets for GSM-7, characters for UCS-2
    segments: int


def sms_length(text: str) -> SmsLength:
    """How many SMS segments ``text`` takes: GSM-7 160 (153 when split), UCS-2 70 (67)."""
    if is_gsm7(text):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in text)
        single, split, encoding = 160, 153, "gsm7"
    else:
        # UTF-16 code units: characters outside the BMP take two.
        units = len(text.encode("utf-16-le")) // 2
        single, split, encoding = 70, 67, "ucs2"
    segments = 1 if units <= single else math.ceil(units / split)
    return SmsLength(encoding, units, segments)
