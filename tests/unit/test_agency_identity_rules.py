"""Agency identity rules without services: dossier codes bound to their agency, the
registry of agencies, who a broker message is from, and the raw bytes ingest keeps."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from notifier.events import EventRejected, dossier_code_mismatch, parse_event
from notifier.ops.samples import sample_event
from notifier.pipeline.agencies import AgencyRegistry, AgencyRegistryError
from notifier.pipeline.bridge import submitter_of
from notifier.pipeline.received import ingest_arguments, raw_body
from notifier.store.publishers import SUBMITTER_HEADER, Submitter, SubmitterKind

AGENCY = "000.00.12.H29"


@pytest.mark.parametrize(
    "dossier_code",
    [
        "000.00.12.H29-231025-0001",  # the national form
        "000.00.12.H29-231025-000123",  # a longer sequence number
        "000.00.12.H29-X",  # the rest is not checked
    ],
)
def test_a_dossier_code_that_starts_with_its_agency_code_and_a_dash_is_accepted(
    dossier_code: str,
) -> None:
    assert dossier_code_mismatch(AGENCY, dossier_code) is None


@pytest.mark.parametrize(
    ("agency_code", "dossier_code"),
    [
        (AGENCY, "000.00.20.H56-231025-0001"),  # another agency's dossier
        ("000.00.12.H2", "000.00.12.H29-231025-0001"),  # a prefix of the code is not it
        (AGENCY, "000.00.12.H29"),  # the agency code alone
        (AGENCY, "000.00.12.H29-"),  # nothing after the dash
        (AGENCY, "000.00.12.H29.231025-0001"),  # no dash after the code
        (AGENCY, "000.00.12.h29-231025-0001"),  # codes are compared exactly
        (AGENCY, "X-000.00.12.H29-231025-0001"),
    ],
)
def test_a_dossier_code_of_another_agency_is_refused(agency_code: str, dossier_code: str) -> None:
    reason = dossier_code_mismatch(agency_code, dossier_code)
    assert reason is not None
    assert f"does not belong to agency {agency_code!r}" in reason


def test_parse_event_rejects_a_dossier_code_of_another_agency_with_the_reason() -> None:
    event = sample_event(0)
    event["dossier"]["code"] = "000.00.20.H56-261126-0001"
    with pytest.raises(EventRejected) as refused:
        parse_event(json.dumps(event), max_bytes=65536)
    assert refused.value.reason.startswith(
        "dossier code '000.00.20.H56-261126-0001' does not belong to agency '000.00.12.H29'"
    )
    assert refused.value.errors[0].startswith("dossier.code: ")


def test_the_registry_names_the_agency_in_the_citizens_language(tmp_path: Path) -> None:
    path = tmp_path / "agencies.toml"
    path.write_text(
        f'[agencies."{AGENCY}"]\nname = "UBND phường Điện Biên"\nname_en = "Dien Bien Ward"\n',
        encoding="utf-8",
    )
    registry = AgencyRegistry.load(path)
    document = sample_event(0)
    document["agency"]["name"] = "UBND B"
    event = parse_event(json.dumps(document), max_bytes=65536)
    assert registry.resolved(event).agency.name == "UBND phường Điện Biên"
    english = event.model_copy(
        update={"applicant": event.applicant.model_copy(update={"language": "en"})}
    )
    assert registry.resolved(english).agency.name == "Dien Bien Ward"
    assert registry.unknown(AGENCY) is None
    assert registry.unknown("000.00.20.H56") == (
        f"agency '000.00.20.H56' is not in the registry of agencies ({path})"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[agencies."A B"]\nname = "x"\n', "is not a valid agency code"),
        ('[agencies."A"]\n', "agencies.A.name: Field required"),
        ('[agencies."A"]\nname = "x"\nnickname = "y"\n', "Extra inputs are not permitted"),
        ('[agency."A"]\nname = "x"\n', 'expected only [agencies."<code>"] tables'),
        ("[agencies", "not valid TOML"),
    ],
)
def test_a_bad_registry_file_is_refused_with_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "agencies.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AgencyRegistryError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        AgencyRegistry.load(path)


def properties(**values: Any) -> Any:
    return SimpleNamespace(user_id=values.get("user_id"), headers=values.get("headers"))


def test_a_broker_message_is_from_its_validated_user_id() -> None:
    assert submitter_of(properties(user_id="motcua-a"), frozenset({"notifier"})) == Submitter(
        SubmitterKind.BROKER_USER, "motcua-a"
    )
    assert submitter_of(properties(), frozenset({"notifier"})).kind is SubmitterKind.UNIDENTIFIED
    ours = frozenset({"notifier", "notifier-api"})
    assert submitter_of(properties(user_id="notifier-api"), ours) == Submitter.service(
        "notifier-api"
    )


def test_only_notifiers_own_user_may_name_the_api_key_that_posted_an_event() -> None:
    key = Submitter(SubmitterKind.API_KEY, "motcua-a", "1234", ("000.00.12.H29",))
    header = {SUBMITTER_HEADER: json.dumps(key.as_json()).encode()}
    assert (
        submitter_of(properties(user_id="notifier", headers=header), frozenset({"notifier"})) == key
    )
    from_publisher = submitter_of(
        properties(user_id="motcua-b", headers=header), frozenset({"notifier"})
    )
    assert from_publisher == Submitter(SubmitterKind.BROKER_USER, "motcua-b")


def test_a_body_that_is_not_utf8_travels_to_ingest_with_its_bytes() -> None:
    body = b'{"name": "Nguy\xffn"}'
    text, meta = ingest_arguments(body, 65536)
    assert "\ufffd" in text
    assert base64.b64decode(meta["raw_b64"]) == body
    assert raw_body(text, meta) == body
    valid = '{"name": "Nguyễn"}'.encode()
    text, meta = ingest_arguments(valid, 65536)
    assert "raw_b64" not in meta
    assert raw_body(text, meta) == valid


def test_the_example_registry_shipped_in_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "agencies.example.toml"
    registry = AgencyRegistry.load(example)
    assert registry.unknown("000.00.12.H29") is None
