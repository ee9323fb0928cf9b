"""Spending (issue 19) without a database: the price table, reported amounts, budget
levels, and the routing rules for one-of groups, coalescing and budgets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from notifier.costs import Charge, CostSource, PriceTable, parse_vnd
from notifier.events import Status
from notifier.pipeline.budget import BudgetLevel, BudgetStatus
from notifier.pipeline.routing import AtLimit, Routing
from notifier.settings import CostSettings, ProviderPrice, SettingsError
from tests.unit.test_templates_and_routing import ALL_CHANNELS, routing_file, routing_problems

TABLE = PriceTable(
    {
        "esms": ProviderPrice(per_segment_vnd=Decimal(800), carriers={"Viettel": Decimal(860)}),
        "zalo": ProviderPrice(per_message_vnd=Decimal(300), per_uid_message_vnd=Decimal(200)),
        "email": ProviderPrice(per_message_vnd=Decimal(0)),
    }
)


def test_an_sms_costs_its_segments_at_its_carriers_price_else_the_gateways_own() -> None:
    assert TABLE.estimate("esms", {"segments": 2, "carrier": "viettel"}) == Charge(2, Decimal(1720))
    assert TABLE.estimate("esms", {"segments": 1, "carrier": "mobifone"}) == Charge(1, Decimal(800))


def test_a_zalo_message_to_a_user_id_costs_less_than_one_to_a_phone() -> None:
    assert TABLE.estimate("zalo", {"recipient": "uid"}) == Charge(None, Decimal(200))
    assert TABLE.estimate("zalo", {"recipient": "phone"}) == Charge(None, Decimal(300))
    assert TABLE.per_message("zalo", uid=True) == Decimal(200)
    assert TABLE.per_message("esms") == Decimal(860)  # the dearest segment


def test_a_charge_the_provider_reported_when_it_took_the_message_beats_the_estimate() -> None:
    reported = TABLE.estimate("esms", {"segments": 2, "carrier": "viettel", "charge_vnd": "500"})
    assert reported == Charge(2, Decimal(500), CostSource.REPORTED)
    assert TABLE.estimate("speedsms", {"segments": 1, "charge_vnd": "250"}).cost_vnd == 250
    # An unreadable figure is no figure: the estimate stands.
    garbled = TABLE.estimate("esms", {"segments": 1, "carrier": "viettel", "charge_vnd": "?"})
    assert garbled == Charge(1, Decimal(860), CostSource.ESTIMATE)


def test_a_provider_without_a_price_has_its_segments_but_no_cost() -> None:
    assert TABLE.estimate("speedsms", {"segments": 3}) == Charge(3, None)
    assert TABLE.estimate("email", None) == Charge(None, Decimal(0))


@pytest.mark.parametrize(
    ("text", "amount"),
    [("750.0000", Decimal(750)), ("1500", Decimal(1500)), ("", None), ("-5", None), ("NaN", None),
     ("abc", None), (None, None)],
)  # fmt: skip
def test_a_reported_amount_is_read_only_when_it_is_a_plain_non_negative_number(
    text: str | None, amount: Decimal | None
) -> None:
    assert parse_vnd(text) == amount


def test_prices_and_budgets_refuse_negative_or_empty_amounts() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ProviderPrice(carriers={"viettel": Decimal(-1)})
    with pytest.raises(ValueError, match="budgets must be positive"):
        CostSettings(budgets={"000.00.12.H29": Decimal(0)})


def test_a_budget_warns_at_80_percent_and_is_spent_at_100() -> None:
    def level(spent: int) -> BudgetLevel:
        return BudgetStatus("a", "2026-12", Decimal(1000), Decimal(spent)).level

    assert level(799) is BudgetLevel.OK
    assert level(800) is BudgetLevel.WARNING
    assert level(999) is BudgetLevel.WARNING
    assert level(1000) is BudgetLevel.EXHAUSTED


def test_a_one_of_entry_is_a_group_of_alternatives_in_order(tmp_path: Path) -> None:
    path = routing_file(
        tmp_path,
        '[agencies."x".statuses]\nresult_ready = ["portal", "zalo|sms"]\n',
    )
    routing = Routing.load(path, ALL_CHANNELS)
    assert routing.groups_for("x", Status.RESULT_READY) == (("portal",), ("zalo", "sms"))
    # Every channel named, for what reads routing as a flat list.
    assert routing.channels_for("x", Status.RESULT_READY) == ("portal", "zalo", "sms")
    # A channel not enabled drops out of its group.
    narrow = Routing.load(path, {"portal", "sms"})
    assert narrow.groups_for("x", Status.RESULT_READY) == (("portal",), ("sms",))


def test_coalescing_and_budget_rules_are_read_and_checked(tmp_path: Path) -> None:
    routing = Routing.load(routing_file(tmp_path), ALL_CHANNELS)
    assert routing.coalescing.window_for("sms") == 0  # off unless configured
    assert Status.RESULT_READY in routing.coalescing.always
    assert routing.budget.at_limit is AtLimit.CONTINUE
    base = routing_file(tmp_path).read_text("utf-8")
    base = base.replace("window_s = {}", "window_s = { sms = 120, zalo = -1 }")
    base = base.replace('at_limit = "continue"', 'at_limit = "cheapest"')
    base = base.replace('always = ["refused"', 'always = ["refusd"')
    problems = "\n".join(routing_problems(routing_file(tmp_path, base=base)))
    assert "window_s.zalo must be whole seconds" in problems
    assert "at_limit must be one of: continue, cheaper_only" in problems
    assert "refusd" in problems


def test_cheaper_only_needs_its_list_of_cheaper_channels(tmp_path: Path) -> None:
    base = routing_file(tmp_path).read_text("utf-8")
    base = base.replace('at_limit = "continue"', 'at_limit = "cheaper_only"')
    base = base.replace('cheaper = ["portal", "email", "zalo"]', "")
    with pytest.raises(SettingsError) as caught:
        Routing.load(routing_file(tmp_path, base=base), ALL_CHANNELS)
    assert any("needs a cheaper" in p for p in caught.value.problems)
