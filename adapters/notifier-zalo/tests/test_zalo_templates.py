"""config/templates/<lang>/zalo.toml: they compile, render for every status, and give
the adapter a numeric template id and a parameter object within ZNS limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from notifier_zalo import ZaloSettings, ZaloZnsAdapter
from notifier_zalo.params import template_data, template_id
from pydantic import ValidationError

from notifier.events import DossierStatusEvent, Status
from notifier.pipeline.rendering import LANGUAGES, TemplateSet, sample_event

TEMPLATES = Path(__file__).resolve().parents[3] / "config" / "templates"
SETTINGS = ZaloSettings(app_id="1", app_secret="s")


@pytest.fixture(scope="module")
def templates() -> TemplateSet:
    # Raises SettingsError, naming file, status and part, if anything is missing/broken.
    return TemplateSet(TEMPLATES, {"zalo": ZaloZnsAdapter.template_parts})


def sparse_event(status: Status) -> DossierStatusEvent:
    """The sample event with every dossier field the status allows to be absent left out."""
    document: dict[str, Any] = sample_event(status).model_dump()
    document["agency"].pop("name", None)
    for key in ("due_date", "new_due_date", "reason", "amount_due", "note", "tracking_url"):
        value = document["dossier"].pop(key, None)
        try:
            DossierStatusEvent.model_validate(document)
        except ValidationError:
            document["dossier"][key] = value  # required for this status
    return DossierStatusEvent.model_validate(document)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_status_renders_to_zns_parameters(templates: TemplateSet, language: str) -> None:
    ids = set()
    for status in Status:
        for event in (sample_event(status), sparse_event(status)):
            parts = templates.render(event, "zalo", language).parts
            ids.add(template_id(parts))  # digits only, or PermanentFailure
            data = template_data(parts, SETTINGS)
            assert data["customer_name"] == "Nguyễn Thị Minh Khai"
            assert data["dossier_code"] == event.dossier.code
            assert all(value != "" for value in data.values()), (status, data)
            assert len(str(data["status_name"])) <= 30, (status, data)
            assert not any(str(v).endswith("…") for v in data.values()), (status, data)
    assert len(ids) == len(Status)  # one template per status


def test_payment_amount_follows_the_language(templates: TemplateSet) -> None:
    event = sample_event(Status.PAYMENT_REQUIRED)
    vi = template_data(templates.render(event, "zalo", "vi").parts, SETTINGS)
    en = template_data(templates.render(event, "zalo", "en").parts, SETTINGS)
    assert vi["amount"] == "1.250.000 đồng"
    assert en["amount"] == "VND 1,250,000"
