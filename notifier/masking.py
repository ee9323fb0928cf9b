"""Masking of personal data for logs and display, and keyed hashes for search.

Rules: an email keeps its first character and domain (``n***@gmail.com``); a phone
keeps its last three digits (``*******567``); a citizen id keeps its last three.
Free text is scanned for anything that looks like an email, a Vietnamese phone
number or a 9-12 digit id, so a value that slips into a message is masked too: in
any encoding a URL gives it (``%2B84987000111``, ``erin%40example.org``, a ``+`` for a
space) and as a path segment (``/v1/inbox/030192007788/notifications``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from urllib.parse import quote, unquote

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Digit runs of 9-15 (optionally +84/84, with spaces, dots, dashes or brackets inside)
# not glued to other digits or to dossier-code punctuation: in 000.00.12.H29-231025-0001
# every run follows a dot or dash, so dossier codes stay readable. A run between
# slashes is a path segment (an account id in /v1/inbox/<id>/...): masked too.
_DIGITS = re.compile(r"(?<![\w.\-])(\+?\d[\d .()\-]{7,17}\d)(?![\w\-]|\.\d)")
# Twelve digits in a row are a citizen id even glued to a prefix ("vneid-030192007788"),
# except as the last group of a UUID (whose fourth group is four hex digits and a dash).
_CITIZEN_ID = re.compile(r"(?<![0-9A-Za-z])(?<![0-9a-fA-F]{4}-)\d{12}(?!\d)")
# A token carrying URL encoding (%XX), or a query value with a "+" (a space) in digits.
_ENCODED_TOKEN = re.compile(r"[^\s\"'<>]*(?:%[0-9A-Fa-f]{2}|=[^\s\"'<>&]*\d\+\d)[^\s\"'<>]*")
# Kept as they are when a decoded token is written back (everything else is %-encoded,
# so a decoded control character cannot forge a log line).
_URL_SAFE = "!#$&'()*+,/:;=?@[]~"


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


def _scrub_plain(text: str) -> str:
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = _DIGITS.sub(_mask_digit_run, text)
    return _CITIZEN_ID.sub(lambda m: mask_digits(m.group(0)), text)


def _decoded(token: str) -> str:
    for _ in range(3):  # twice encoded too: %252B → %2B → +
        once = unquote(token)
        if once == token:
            break
        token = once
    return token


def _scrub_encoded(match: re.Match[str]) -> str:
    """A URL-encoded token, decoded and scrubbed; written back encoded only where it
    held something personal, else left exactly as it was."""
    token = match.group(0)
    decoded = _decoded(token)
    scrubbed = _scrub_plain(decoded)
    if scrubbed == decoded and "=" in token and "+" in token:
        # In a query string a literal "+" is a space: "0901+888+484" is a phone.
        spaced = _decoded(token.replace("+", " "))
        if _scrub_plain(spaced) != spaced:
            decoded, scrubbed = spaced, _scrub_plain(spaced)
    if scrubbed == decoded:
        return token
    return quote(scrubbed, safe=_URL_SAFE)


def scrub(text: str) -> str:
    """Mask emails, phone numbers and citizen ids wherever they appear in ``text``,
    URL-encoded or not."""
    if "%" in text or "+" in text:
        text = _ENCODED_TOKEN.sub(_scrub_encoded, text)
    return _scrub_plain(text)


def normalise_recipient(value: str) -> str:
    """The form a recipient is hashed in: NFC, trimmed, lower-cased for emails."""
    value = unicodedata.normalize("NFC", value.strip())
    return value.lower() if "@" in value else value


def recipient_hash(value: str, key: str) -> str:
    """A keyed hash, so the log can be searched by contact without storing it in clear."""
    normalised = normalise_recipient(value).encode()
    return hmac.new(key.encode(), normalised, hashlib.sha256).hexdigest()


_SECRET_PARAM = re.compile(
    r"(?P<name>[?&](?:token|secret|api_?key|key|password|access_token|refresh_token|signature)=)"
    r"[^&\s\"']+",
    re.IGNORECASE,
)
# Callback URLs whose last path segment is the gateway's shared token.
_SECRET_SEGMENT = re.compile(r"(?P<route>/v1/(?:receipts|inbound-sms)/[^/?#\s\"']+/)[^/?#\s\"']+")


def redact_url_secrets(text: str) -> str:
    """Secrets in URLs made unreadable: ``?token=abc`` → ``?token=[redacted]`` (and the
    other secret-looking parameters), ``/v1/receipts/esms/abc`` →
    ``/v1/receipts/esms/[redacted]`` (the callback token as a path segment)."""
    if "/v1/" in text:
        text = _SECRET_SEGMENT.sub(r"\g<route>[redacted]", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\g<name>[redacted]", text)
    return text
