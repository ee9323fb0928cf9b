"""The seams issue 15 draws: the scaffold's files as package data, its checks without
click, and the stores' types as part of the adapter API (adapters import no store)."""

from __future__ import annotations

import ast
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from string import Template

import pytest

from notifier.adapter import (
    AdapterContext,
    NewNotification,
    RecipientKind,
    Token,
    TokenGrant,
    TokenStoreError,
)
from notifier.plugins.scaffold import AdapterSpec, ScaffoldError, generate, plan
from notifier.store import Database
from notifier.store.inbox import InboxStore
from notifier.store.tokens import TokenStore

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


def _templates() -> dict[str, str]:
    folder = resources.files("notifier.plugins").joinpath("scaffold_templates")
    return {
        entry.name: entry.read_text("utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".tmpl")
    }


def test_the_scaffold_writes_every_package_data_template_with_no_placeholder_left(
    tmp_path: Path,
) -> None:
    templates = _templates()
    assert set(templates) == {
        "pyproject.toml.tmpl",
        "README.md.tmpl",
        "__init__.py.tmpl",
        "settings.py.tmpl",
        "adapter.py.tmpl",
        "test_contract.py.tmpl",
        # Pieces of the two above, with --inbound.
        "adapter_inbound.py.tmpl",
        "test_contract_inbound.py.tmpl",
    }
    pieces = {"adapter_inbound.py.tmpl", "test_contract_inbound.py.tmpl"}
    for inbound in (False, True):
        spec = AdapterSpec(
            "acme_push", "app_push", RecipientKind.PORTAL_ACCOUNT, ("title", "body"), inbound
        )
        written = generate(spec, tmp_path / str(inbound), with_templates=False)

        by_name = {path.name: path.read_text("utf-8") for path in written}
        for template_name, text in templates.items():
            if template_name in pieces:
                continue
            generated = by_name[template_name.removesuffix(".tmpl")]
            for placeholder in Template(text).get_identifiers():
                assert f"${placeholder}" not in generated
                assert f"${{{placeholder}}}" not in generated
            assert "acme_push" in generated or "AcmePush" in generated
        for path in written:
            if path.suffix == ".py":
                ast.parse(path.read_text("utf-8"), filename=str(path))  # valid Python
        assert ("def parse_inbound" in by_name["adapter.py"]) is inbound
        assert ("def valid_inbound" in by_name["test_contract.py"]) is inbound


def test_the_scaffold_refuses_bad_choices_naming_the_option_at_fault(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError) as bad_name:
        plan("Bad-Name", config_dir=tmp_path)
    assert bad_name.value.option == "NAME"
    with pytest.raises(ScaffoldError) as bad_channel:
        plan("acme", channel="SMS!", config_dir=tmp_path)
    assert bad_channel.value.option == "--channel"
    with pytest.raises(ScaffoldError) as bad_parts:
        plan("acme", parts="title,title", config_dir=tmp_path)
    assert bad_parts.value.option == "--parts"
    with pytest.raises(ScaffoldError) as taken:
        plan("webhook", config_dir=tmp_path)  # installed from adapters/notifier-webhook
    assert taken.value.option is None

    spec, with_templates = plan("acme", channel="email", config_dir=tmp_path)
    assert (spec.recipient, spec.parts, with_templates) == (
        RecipientKind.EMAIL,
        ("title", "body"),
        True,
    )


def test_the_stores_hand_adapters_the_adapter_apis_own_types(
    sqlite_database: Database,
) -> None:
    tokens = TokenStore(sqlite_database, "k" * 32)
    stored = tokens.put("zalo", refresh_token="refresh-1")
    assert type(stored) is Token

    def refresher(current: Token) -> TokenGrant:
        return TokenGrant("access-2", "refresh-2", datetime.now(UTC) + timedelta(hours=1))

    refreshed = tokens.refresh("zalo", refresher, seen_version=stored.version)
    assert (refreshed.access_token, refreshed.version) == ("access-2", stored.version + 1)
    with pytest.raises(TokenStoreError):
        tokens.refresh("nobody", refresher, seen_version=1)

    context = AdapterContext(inbox=InboxStore(sqlite_database), tokens=tokens)
    delivery_id = uuid.uuid4()
    ids = context.inbox.add_many(
        [NewNotification(delivery_id, "acct-1", "SXD", "D-1", "received", "t", "b", None)]
    )
    assert list(ids) == [delivery_id]


@pytest.mark.parametrize("package", ["notifier_portal", "notifier_zalo"])
def test_adapters_import_no_store_module(package: str) -> None:
    folder = next(ADAPTERS.glob(f"*/{package}"))
    imported = set()
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    assert "notifier.adapter" in imported
    assert not {m for m in imported if m.startswith("notifier.store")}
