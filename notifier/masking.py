"""Masking of personal data for logs and display, and keyed hashes for search.

Rules: an email keeps its first character and domain (``n***@gmail.com``); a phone
keeps its last three digits (``*******567``); a citizen id keeps its last three.
Free text is scanned for anything that looks like an email, a Vietnamese phone
number or a 9-12 digit id, so a value that slips into a message is masked too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Digit runs of 9-15 (optionally +84/84, with spaces, dots, dashes or brackets inside)
# not glued to other digits or to dossier-code punctuation: in 000.00.12.H29-231025-0001
# every run follows a dot or dash, so dossier codes stay readable.
_DIGITS = re.compile(r"(?<![\w.\-/])(\+?\d[\d .()\-]{7,17}\d)(?![\w\-/]|\.\d)")


def mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    if not domain:
        return mask_digits(value)
    return f"{local[:1]}***@{domain}"


def mask_digits(value: str, keep: int = 3) -> str:
    digits = [ch for ch in value if ch.isdigit()]
    if len(digits) <= keep:
        return "*" * len(value)
    return "*" * (len(digits) - keep) + "".join(digits[-keep:])


def mask_recipient(value: str) -> str:
    """Mask a contact of any kind for display in the delivery log."""
    if "@" in value:
        return mask_email(value)
    if sum(ch.isdigit() for ch in value) >= 6:
        return mask_digits(value)
    # An account or user id: keep a short prefix so operators can tell them apart.
    return value[:3] + "***" if len(value) > 6 else "***"


# A money amount as rendering formats it ("125.000.000 đồng"): never a phone or an id.
_AMOUNT = re.compile(r"[1-9]\d{0,2}(?:\.\d{3})+")
_CURRENCY_AFTER = re.compile(r"\s?(?:đồng|đ|VNĐ|VND)\b", re.IGNORECASE)


def _mask_digit_run(match: re.Match[str]) -> str:
    run = match.group(1)
    if sum(ch.isdigit() for ch in run) < 9:
        return run
    if _AMOUNT.fullmatch(run) and _CURRENCY_AFTER.match(match.string, match.end()):
        return run
    return mask_digits(run)


def scrub(text: str) -> str:
    """Mask emails, phone numbers and citizen ids wherever they appear in ``text``."""
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    return _DIGITS.sub(_mask_digit_run, text)


def normalise_recipient(value: str) -> str:
    """The form a recipient is hashed in: NFC, trimmed, lower-cased for emails."""
    value = unicodedata.normalize("NFC", value.strip())
    return value.lower() if "@" in value else value


def recipient_hash(value: str, key: str) -> str:
    """A keyed hash, so the log can be searched by contact without storing it in clear."""
    normalised = normalise_recipient(value).encode()
    return hmac.new(key.encode(), normalised, hashlib.sha256).hexdigest()
