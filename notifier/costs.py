"""What a delivery costs: the price table (VND per SMS segment, by carrier where the
gateway bills so; per Zalo message, by phone or by user id) applied to what the
adapter reported about the send (segments, carrier, recipient kind).

Cost is a property of a delivery (``deliveries.cost_vnd``, ``segments``,
``cost_source``): the estimate from this table when the send is recorded, replaced by
the provider's own figure when a receipt carries one (eSMS's ``TotalPrice``). Reports,
budgets and metrics read that one column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # adapters import this module (parse_vnd); they may not import settings
    from notifier.settings import CostSettings, ProviderPrice


class CostSource(StrEnum):
    """Where a delivery's cost comes from."""

    ESTIMATE = "estimate"  # our price table times what the adapter reported
    REPORTED = "reported"  # the provider's own charge, from a receipt


# Keys of SendResult.details the estimate reads (set by the adapters).
SEGMENTS = "segments"  # SMS: segments billed
CARRIER = "carrier"  # SMS: the recipient's carrier (notifier.phones)
ZALO_RECIPIENT = "recipient"  # Zalo: "uid" (ZBS by user id) or "phone" (ZNS)
# What the provider said it charged, in its send answer (VND, decimal text): recorded
# as the reported cost instead of an estimate (e.g. SpeedSMS's totalPrice).
CHARGE_VND = "charge_vnd"


@dataclass(frozen=True)
class Charge:
    """A delivery's segments (SMS only) and its cost in VND (None: not priced)."""

    segments: int | None
    cost_vnd: Decimal | None
    source: CostSource = CostSource.ESTIMATE


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class PriceTable:
    """Prices per provider name, from ``[costs.prices]``."""

    def __init__(self, prices: Mapping[str, ProviderPrice]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_settings(cls, costs: CostSettings) -> PriceTable:
        return cls(costs.prices)

    def estimate(self, provider: str, details: Mapping[str, Any] | None) -> Charge:
        """The charge for one accepted send by ``provider``, from its result's details."""
        details = details or {}
        segments = _int(details.get(SEGMENTS))
        reported = details.get(CHARGE_VND)
        charged = parse_vnd(reported) if isinstance(reported, str) else None
        if charged is not None:
            return Charge(segments, charged, CostSource.REPORTED)
        price = self.prices.get(provider)
        if price is None:
            return Charge(segments, None)
        if segments is not None:
            carrier = str(details.get(CARRIER) or "").lower()
            per_segment = price.carriers.get(carrier, price.per_segment_vnd)
            if per_segment is None:
                return Charge(segments, None)
            return Charge(segments, per_segment * segments)
        if details.get(ZALO_RECIPIENT) == "uid" and price.per_uid_message_vnd is not None:
            return Charge(None, price.per_uid_message_vnd)
        return Charge(None, price.per_message_vnd)

    def per_message(self, provider: str, *, uid: bool = False) -> Decimal | None:
        """The price of one plain message (one SMS segment at the highest carrier
        price), for comparing channels."""
        price = self.prices.get(provider)
        if price is None:
            return None
        if uid and price.per_uid_message_vnd is not None:
            return price.per_uid_message_vnd
        segment_prices = [p for p in (price.per_segment_vnd, *price.carriers.values()) if p]
        if segment_prices:
            return max(segment_prices)
        return price.per_message_vnd


def parse_vnd(text: str | None) -> Decimal | None:
    """An amount a provider reported ("750.0000", "1500"), or None if unreadable."""
    if text is None or not text.strip():
        return None
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        return None
    if not value.is_finite() or value < 0:
        return None
    return value
