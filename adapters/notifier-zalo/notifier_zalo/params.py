"""The two rendered template parts turned into what ZNS takes: a template id and params.

``template_data`` renders to a JSON object (templates end with ``| tojson``). ZNS caps
each parameter's length (name 30, code 30, address 200, status 30, others about 100);
text over its limit is shortened with "…" at a letter boundary, never inside a
Vietnamese letter with its accents. Codes are not shortened: a cut dossier code would
point the citizen at a dossier that does not exist, so the send fails instead (for
the operator to fix the template or the limit) and the core falls back to SMS.

Failures here are our templates' fault, not the citizen's: they alert the operator.
Their messages name parameters, never values (which are personal data).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import NoReturn

from notifier.adapter import PermanentFailure

from .settings import ZaloSettings

__all__ = ["ParamValue", "limit_for", "shorten", "template_data", "template_id"]

ParamValue = str | int | float

_TEMPLATE_ID = re.compile(r"[0-9]{1,20}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_ELLIPSIS = "…"


def _template_fault(reason: str, code: str) -> PermanentFailure:
    return PermanentFailure(reason, code=code, operator_alert=True)


def template_id(parts: Mapping[str, str]) -> str:
    value = parts.get("template_id", "").strip()
    if not value:
        raise _template_fault("the zalo template gave an empty template_id", "template_id")
    if not _TEMPLATE_ID.fullmatch(value):
        raise _template_fault(
            "the zalo template's template_id is not a ZNS template id (digits only)",
            "template_id",
        )
    return value


def is_code_like(key: str) -> bool:
    return key == "code" or key.endswith("_code")


def limit_for(key: str, settings: ZaloSettings) -> int:
    if key in settings.param_limits:
        return settings.param_limits[key]
    if is_code_like(key):
        return settings.code_param_length
    return settings.max_param_length


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, ending with "…" when it was cut.

    Cuts between letters (a base letter and its combining accents stay together),
    at the last space when one is near the end, and never leaves trailing spaces.
    """
    if len(text) <= limit:
        return text
    cut = limit - len(_ELLIPSIS)
    # Back off to the start of a letter: never separate a letter from its accents.
    while cut > 0 and unicodedata.combining(text[cut]):
        cut -= 1
    head = text[:cut]
    space = head.rfind(" ")
    if space >= max(1, cut - 10):  # a word boundary close to the cut reads better
        head = head[:space]
    return head.rstrip(" ,.;:-–") + _ELLIPSIS


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a ZNS parameter value")


def template_data(parts: Mapping[str, str], settings: ZaloSettings) -> dict[str, ParamValue]:
    """Parse and check the rendered ``template_data`` part; shorten over-long text."""
    raw = parts.get("template_data", "")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        raise _template_fault(
            "the zalo template's template_data is not JSON (end it with `| tojson`)",
            "template_data",
        ) from None
    if not isinstance(value, dict):
        raise _template_fault(
            "the zalo template's template_data must be a JSON object of parameters",
            "template_data",
        )
    data: dict[str, ParamValue] = {}
    for key, item in value.items():
        if not _KEY.fullmatch(key):
            raise _template_fault(
                f"template_data has a parameter name ZNS cannot take: {key[:40]!r}",
                "template_data",
            )
        limit = limit_for(key, settings)
        if isinstance(item, str):
            text = _LINE_BREAKS.sub(" ", unicodedata.normalize("NFC", item)).strip()
            if len(text) > limit:
                if is_code_like(key):
                    raise _template_fault(
                        f"template_data[{key!r}] has {len(text)} characters, over the ZNS "
                        f"limit of {limit}; codes are not shortened",
                        "param_too_long",
                    )
                text = shorten(text, limit)
            data[key] = text
        elif isinstance(item, int | float) and not isinstance(item, bool):
            if isinstance(item, float) and not math.isfinite(item):
                raise _template_fault(f"template_data[{key!r}] is not finite", "template_data")
            if len(str(item)) > limit:
                raise _template_fault(
                    f"template_data[{key!r}] is a number longer than the ZNS limit of {limit}",
                    "param_too_long",
                )
            data[key] = item
        else:
            kind = "null" if item is None else type(item).__name__
            raise _template_fault(
                f"template_data[{key!r}] must be a string or a number, not {kind}",
                "template_data",
            )
    return data
