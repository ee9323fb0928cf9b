"""The compose files, checked without Docker: valid against the Compose Specification's
JSON schema (the copy check-jsonschema vendors, what `check-jsonschema --builtin-schema
vendor.compose-spec FILE` uses), and production-safe: no guest, no trust, no secret
written in the file, one RabbitMQ user per role. The HA file also has the topology
docs/deployment.md describes."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import REPO

SINGLE = REPO / "docker-compose.yml"
HA = REPO / "deploy" / "compose.ha.yml"
PRODUCTION_FILES = [SINGLE, HA]


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _environments(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each service's environment, anchors and merge keys resolved (by the YAML loader)."""
    return {
        name: {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
        for name, service in compose["services"].items()
    }


def _compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


@pytest.mark.parametrize("path", PRODUCTION_FILES, ids=lambda p: p.name)
def test_the_compose_file_is_valid_against_the_compose_specification(path: Path) -> None:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_load(path))]
    assert problems == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    schema = _compose_schema()
    broken = _load(SINGLE)
    broken["services"]["worker"]["depends_onn"] = ["postgres"]
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


@pytest.mark.parametrize("path", PRODUCTION_FILES, ids=lambda p: p.name)
def test_no_guest_no_trust_and_no_secret_written_in_the_file(path: Path) -> None:
    compose = _load(path)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"amqps?://guest", text)
    assert "RABBITMQ_DEFAULT_USER" not in text
    for name, environment in _environments(compose).items():
        for key, value in environment.items():
            assert value.lower() != "trust", f"{name}: {key}"
            if re.search(r"PASSWORD|COOKIE|_KEY$", key):
                # Interpolated from .env, never a value in the file.
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), f"{name}: {key}"
            for url in re.findall(r"amqps?://[^,\s]+", value):
                user, _, rest = url.split("://", 1)[1].partition(":")
                assert user in {"notifier-worker", "notifier-api"}, f"{name}: {user}"
                assert rest.startswith("${"), f"{name}: a password written in the URL"
            if key == "NOTIFIER_DATABASE_URL":
                userinfo = value.split("://", 1)[1].split("@")[0]
                assert ":" not in userinfo, f"{name}: a password written in the URL"
                assert environment.get("PGPASSWORD", "").startswith("${")
        auth = environment.get("POSTGRES_HOST_AUTH_METHOD")
        if auth is not None:
            assert auth == "scram-sha-256"
            assert "--auth-local=scram-sha-256" in environment["POSTGRES_INITDB_ARGS"]


def test_the_worker_and_the_api_connect_as_users_of_their_own() -> None:
    for path in PRODUCTION_FILES:
        environments = _environments(_load(path))
        users = {
            name: {u.split("://")[1].split(":")[0] for u in env["NOTIFIER_BROKER_URL"].split(",")}
            for name, env in environments.items()
            if "NOTIFIER_BROKER_URL" in env
        }
        assert {frozenset(u) for n, u in users.items() if n.startswith("worker")} == {
            frozenset({"notifier-worker"})
        }
        assert {frozenset(u) for n, u in users.items() if n.startswith("api")} == {
            frozenset({"notifier-api"})
        }


def test_the_ha_file_has_three_broker_nodes_a_synchronous_standby_and_shared_limits() -> None:
    compose = _load(HA)
    services = compose["services"]
    assert {f"rabbitmq{n}" for n in (1, 2, 3)} <= set(services)
    primary = " ".join(services["pg-primary"]["command"])
    assert "synchronous_commit=on" in primary
    assert "synchronous_standby_names=FIRST 1 (standby1)" in primary
    assert "application_name=standby1" in (REPO / "deploy/postgres/standby.sh").read_text()
    workers = [s for name, s in services.items() if name.startswith("worker")]
    assert len(workers) >= 2
    for environment in (_environments(compose)[n] for n in services if n.startswith("worker")):
        url = environment["NOTIFIER_DATABASE_URL"]
        assert "pg-primary:5432,pg-standby:5432" in url
        assert "target_session_attrs=read-write" in url
        assert len(environment["NOTIFIER_BROKER_URL"].split(",")) == 3
        assert environment["NOTIFIER_BROKER_QUEUE_TYPE"] == "quorum"
        assert environment["NOTIFIER_LIMITS__STORAGE_URL"].startswith("redis://")


@pytest.mark.parametrize("path", PRODUCTION_FILES, ids=lambda p: p.name)
def test_every_file_a_compose_file_mounts_is_in_the_repository(path: Path) -> None:
    for config in _load(path).get("configs", {}).values():
        assert (path.parent / config["file"]).is_file(), config["file"]
