"""SMS length discipline (issue 19, item 4): SMS templates are measured at start-up
against each status's segment budget, as the gateway sends them (unaccented GSM-7 by
default), with free text as long as the event contract allows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from notifier.app import Notifier
from notifier.events import Status
from notifier.pipeline.segments import check_sms_segments, measure
from notifier.settings import SettingsError, SmsLengthSettings
from tests.support import REPO, make_settings

ADAPTERS = {
    "esms": {"api_key": "k", "secret_key": "s", "brandname": "CONG DVC"},
    "zalo": {"app_id": "a", "app_secret": "s"},
    "email": {"host": "127.0.0.1", "port": 2525},
}


def build(config: Path, tmp_path: Path, **sms_length: object) -> Notifier:
    return Notifier(
        make_settings(
            config_dir=config,
            database_url=f"sqlite:///{tmp_path}/t.db",
            channels={"sms": {"providers": ["esms"]}},
            adapters=ADAPTERS,
            sms_length=sms_length,
        )
    )


def test_a_vietnamese_text_is_measured_unaccented_unless_the_gateway_sends_unicode() -> None:
    text = "Hồ sơ 000.00.12.H29-261126-0001 của Ông/Bà đã được tiếp nhận." + " x" * 40
    assert measure(text, unicode=False) == 1  # 145 GSM-7 characters
    assert measure(text, unicode=True) == 3  # 145 UCS-2 characters: 67 a segment


def test_the_shipped_templates_fit_the_shipped_budgets(tmp_path: Path) -> None:
    app = build(REPO / "config", tmp_path)
    try:
        checks = check_sms_segments(app.templates, app.settings.sms_length)
        assert {(c.status, c.language) for c in checks} == {
            (s, lang) for s in Status for lang in ("vi", "en")
        }
        assert all(c.segments <= c.budget for c in checks)
        received = [c for c in checks if c.status is Status.RECEIVED]
        assert {c.budget for c in received} == {1}  # routine news: one segment
    finally:
        app.close()


def test_a_template_over_its_statuss_budget_stops_start_up_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    sms = config / "templates" / "vi" / "sms.toml"
    text = sms.read_text("utf-8")
    # A received message that spells out the agency in full: two segments.
    longer = text.replace(
        "Hồ sơ {{ dossier_code }} của Ông/Bà đã được tiếp nhận.",
        "Hồ sơ {{ dossier_code }} của Ông/Bà đã được {{ agency_name }} tiếp nhận.",
        1,
    )
    assert longer != text
    sms.write_text(longer, "utf-8")
    with pytest.raises(SettingsError) as caught:
        build(config, tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith("vi/sms.toml [received].text: up to ")
    assert "over the budget of 1" in problem
    assert "NOTIFIER_SMS_LENGTH__SEGMENTS__RECEIVED" in problem
    # A looser budget for that status lets it start.
    app = build(config, tmp_path, segments={"received": 3})
    app.close()


def test_segment_budgets_are_whole_numbers_from_one_to_ten() -> None:
    with pytest.raises(ValueError, match="segment budgets are 1 to 10"):
        SmsLengthSettings(segments={"received": 0})
