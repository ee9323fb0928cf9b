"""Monthly budgets per agency (``[costs.budgets]``): how much of it is spent, the alert
levels (80% and 100%), and what routing does at 100% (``[budget] at_limit``).

The planner asks :meth:`BudgetGuard.cheaper_only` for each event. The spend is read
from the delivery log at most once every ``recheck_every`` events of an agency (and
afresh each month), so an agency can overshoot its budget by at most that many
events' messages before ``cheaper_only`` routing applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.pipeline.routing import AtLimit, BudgetRule
from notifier.settings import SettingsError
from notifier.store.deliveries.costs import CostLog, month_start, next_month
from notifier.store.schema import utcnow

WARNING_SHARE = Decimal("0.8")
_VIETNAM = "Asia/Ho_Chi_Minh"


def cost_zone(name: str) -> tzinfo:
    """The zone months are counted in; Vietnam (UTC+7) if the system lacks zone data."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name == _VIETNAM:
            return timezone(timedelta(hours=7), "ICT")
        raise SettingsError([f"NOTIFIER_COSTS__TIMEZONE: unknown time zone {name!r}"]) from None


class BudgetLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"  # 80% or more spent
    EXHAUSTED = "exhausted"  # 100% or more spent


@dataclass(frozen=True)
class BudgetStatus:
    agency_code: str
    month: str
    budget_vnd: Decimal
    spent_vnd: Decimal

    @property
    def share(self) -> Decimal:
        return self.spent_vnd / self.budget_vnd

    @property
    def level(self) -> BudgetLevel:
        if self.spent_vnd >= self.budget_vnd:
            return BudgetLevel.EXHAUSTED
        if self.spent_vnd >= self.budget_vnd * WARNING_SHARE:
            return BudgetLevel.WARNING
        return BudgetLevel.OK


def budget_statuses(
    costs: CostLog, budgets: Mapping[str, Decimal], tz: tzinfo, now: datetime | None = None
) -> list[BudgetStatus]:
    """Every budgeted agency's spend in the current month (in ``tz``)."""
    if not budgets:
        return []
    now = now or utcnow()
    start = month_start(now, tz)
    end = next_month(start, tz)
    spent: dict[str, Decimal] = {}
    for (agency, _channel), cost in costs.spend(start, end, sorted(budgets)).items():
        spent[agency] = spent.get(agency, Decimal(0)) + cost
    month = start.astimezone(tz).strftime("%Y-%m")
    return [
        BudgetStatus(agency, month, budget, spent.get(agency, Decimal(0)))
        for agency, budget in sorted(budgets.items())
    ]


class BudgetGuard:
    """Whether an agency's events go to the cheaper channels only (budget spent and
    routing says ``cheaper_only``)."""

    def __init__(
        self,
        costs: CostLog,
        budgets: Mapping[str, Decimal],
        rule: BudgetRule,
        tz: tzinfo,
        *,
        recheck_every: int = 100,
    ) -> None:
        self.costs = costs
        self.budgets = dict(budgets)
        self.rule = rule
        self.tz = tz
        self.recheck_every = recheck_every
        # agency -> (month, events left before the next read, exhausted)
        self._known: dict[str, tuple[str, int, bool]] = {}

    @property
    def active(self) -> bool:
        return bool(self.budgets) and self.rule.at_limit is AtLimit.CHEAPER_ONLY

    def cheaper_only(self, agency_code: str) -> bool:
        if not self.active or agency_code not in self.budgets:
            return False
        now = utcnow()
        month = month_start(now, self.tz).astimezone(self.tz).strftime("%Y-%m")
        known = self._known.get(agency_code)
        if known is not None and known[0] == month and known[1] > 0:
            self._known[agency_code] = (month, known[1] - 1, known[2])
            return known[2]
        [status] = budget_statuses(
            self.costs, {agency_code: self.budgets[agency_code]}, self.tz, now
        )
        exhausted = status.level is BudgetLevel.EXHAUSTED
        self._known[agency_code] = (month, self.recheck_every - 1, exhausted)
        return exhausted
