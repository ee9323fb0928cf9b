"""``notifier adapters new NAME``: write a ready-to-install adapter package.

The files of the package are ``scaffold_templates/*.tmpl`` (package data, with
``$name`` placeholders); ``notifier.cli.adapters`` holds the command. The package
works as generated: an HTTP adapter (one signed-in JSON POST per message
through ``context.http_client``), its settings, templates for a new channel, a
README, and tests that run notifier's contract kit against a local stand-in for the
provider. A developer then adapts ``payload`` and ``_failure`` to the provider's API.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from string import Template

from notifier.adapter import RecipientKind
from notifier.events import Status

__all__ = ["AdapterSpec", "ScaffoldError", "default_directory", "generate", "plan"]

NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")
# The contact each well-known channel delivers to; other channels default to a phone.
_KNOWN_RECIPIENTS = {
    "email": RecipientKind.EMAIL,
    "sms": RecipientKind.PHONE,
    "zalo": RecipientKind.ZALO,
    "portal": RecipientKind.PORTAL_ACCOUNT,
    "app_push": RecipientKind.PORTAL_ACCOUNT,
}
_DEFAULT_PARTS = ("title", "body")
_TITLE_PARTS = {"title": 120, "subject": 200}


@dataclass(frozen=True)
class AdapterSpec:
    name: str  # the adapter's name: NOTIFIER_ADAPTERS__<NAME>__*, /v1/receipts/<name>
    channel: str
    recipient: RecipientKind
    parts: tuple[str, ...]
    # With the optional inbound capability (citizens' messages, docs/inbound.md).
    inbound: bool = False

    @property
    def distribution(self) -> str:
        return "notifier-" + self.name.replace("_", "-")

    @property
    def package(self) -> str:
        return f"notifier_{self.name}"

    @property
    def class_prefix(self) -> str:
        return "".join(word.capitalize() for word in self.name.split("_"))

    def template_parts_code(self) -> str:
        items = []
        for part in self.parts:
            options = ""
            if part == "html":
                options = ", html=True"
            elif part in _TITLE_PARTS:
                options = f", max_length={_TITLE_PARTS[part]}"
            items.append(f'TemplatePart("{part}"{options})')
        if len(items) == 1 and len(items[0]) < 40:
            return f"({items[0]},)"
        lines = "".join(f"\n        {item}," for item in items)
        return f"({lines}\n    )"


def existing_parts(channel: str, config_dir: Path) -> tuple[str, ...] | None:
    """The parts a channel's existing templates provide, to declare the same ones."""
    path = config_dir / "templates" / "vi" / f"{channel}.toml"
    if not path.is_file():
        return None
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError:
        return None
    for table in document.values():
        if isinstance(table, dict) and table:
            return tuple(str(key) for key in table)
    return None


def generate(spec: AdapterSpec, directory: Path, *, with_templates: bool) -> list[Path]:
    """Write the package into ``directory/<distribution>``; return the files written."""
    root = directory / spec.distribution
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    values = {
        "name": spec.name,
        "name_upper": spec.name.upper(),
        "channel": spec.channel,
        "channel_upper": spec.channel.upper(),
        "distribution": spec.distribution,
        "package": spec.package,
        "Prefix": spec.class_prefix,
        "recipient_kind": spec.recipient.name,
        "recipient_value": spec.recipient.value,
        "template_parts": spec.template_parts_code(),
        "templates_dir": (
            'Path(__file__).resolve().parents[1] / "templates"' if with_templates else "None"
        ),
        "parts_list": ", ".join(f"``{p}``" for p in spec.parts),
    }
    values.update(_inbound_values(spec))
    files = {
        "pyproject.toml": _template("pyproject.toml"),
        "README.md": _template("README.md"),
        f"{spec.package}/__init__.py": _template("__init__.py"),
        f"{spec.package}/settings.py": _template("settings.py"),
        f"{spec.package}/adapter.py": _template("adapter.py"),
        f"{spec.package}/py.typed": Template(""),
        "tests/test_contract.py": _template("test_contract.py"),
    }
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(values), "utf-8")
        written.append(path)
    if with_templates:
        for language in ("vi", "en"):
            path = root / "templates" / language / f"{spec.channel}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_channel_templates(spec, language), "utf-8")
            written.append(path)
    return written


def _inbound_values(spec: AdapterSpec) -> dict[str, str]:
    """The pieces the inbound capability adds (empty without ``--inbound``)."""
    keys = (
        "inbound_stdlib",
        "inbound_api",
        "inbound_declaration",
        "inbound_methods",
        "inbound_settings",
        "inbound_test_stdlib",
        "inbound_test_constants",
        "inbound_test_api",
        "inbound_test_hooks",
        "inbound_test_setting",
    )
    if not spec.inbound:
        return dict.fromkeys(keys, "")
    prefix = {"Prefix": spec.class_prefix, "name": spec.name}
    return {
        "inbound_stdlib": (
            "import hashlib\nimport hmac\nimport json\nfrom datetime import UTC, datetime"
        ),
        "inbound_api": (
            "\nfrom notifier.adapter import (\n    InboundMessage,\n    InvalidReceipt,\n"
            "    MalformedReceipt,\n    ReceiptRequest,\n)"
        ),
        "inbound_declaration": "",
        "inbound_methods": _template("adapter_inbound.py").substitute(prefix),
        "inbound_settings": (
            "\n    # Signs the provider's inbound calls (citizens' messages); unset: refused."
            "\n    inbound_secret: SecretStr | None = None"
            "\n    inbound_max_age_s: float = Field(default=300.0, gt=0, le=86_400)"
        ),
        "inbound_test_stdlib": "\nimport hashlib\nimport hmac\nimport json\nimport time",
        "inbound_test_constants": ('\nINBOUND_SECRET = "test-inbound-secret-0123"'),
        "inbound_test_api": "from notifier.adapter import ReceiptRequest\n",
        "inbound_test_hooks": _template("test_contract_inbound.py").substitute(prefix),
        "inbound_test_setting": ', "inbound_secret": INBOUND_SECRET',
    }


def _template(name: str) -> Template:
    """A file of the generated package, with ``$name`` placeholders (string.Template)."""
    source = resources.files("notifier.plugins").joinpath("scaffold_templates", name + ".tmpl")
    return Template(source.read_text("utf-8"))


def _channel_templates(spec: AdapterSpec, language: str) -> str:
    """One table per status; a generic text each, to be written properly per status."""
    if language == "vi":
        head = f"# Mẫu thông báo kênh {spec.channel}, tiếng Việt: một bảng cho mỗi trạng thái."
        title = "Hồ sơ {{ dossier_code }}: {{ status_name }}"
        body = (
            "Hồ sơ {{ procedure_name }} của Ông/Bà tại {{ agency_name }}: {{ status_name }}."
            "{% if reason %} Lý do: {{ reason | trim('. ') }}.{% endif %}"
            "{% if due_date %} Ngày hẹn trả kết quả: {{ due_date | date }}.{% endif %}"
        )
    else:
        head = f"# {spec.channel} channel templates, English: one table per dossier status."
        title = "Application {{ dossier_code }}: {{ status_name }}"
        body = (
            "Your application ({{ procedure_name }}) at {{ agency_name }}: {{ status_name }}."
            "{% if reason %} Reason: {{ reason | trim('. ') }}.{% endif %}"
            "{% if due_date %} Result due on {{ due_date | date }}.{% endif %}"
        )
    lines = [
        head,
        "# Jinja2 (sandboxed, StrictUndefined); variables: notifier's docs/templates.md.",
        "# Copy to config/templates/<language>/ of the deployment. Every template is",
        "# test-rendered at start-up, also with optional values absent: guard them with",
        "# {% if %}.",
        "",
    ]
    for status in Status:
        lines.append(f"[{status.value}]")
        for part in spec.parts:
            if part in _TITLE_PARTS:
                text = title
            elif part in ("link", "url"):
                text = "{{ tracking_url }}"
            else:
                text = body
            lines.append(f"{part} = {_toml_string(text)}")
        lines.append("")
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_directory() -> Path:
    """Where ``notifier adapters new`` writes: ./adapters if it exists, else here."""
    adapters = Path("adapters")
    return adapters if adapters.is_dir() else Path(".")


class ScaffoldError(ValueError):
    """A name, channel or part list the scaffold refuses; ``option`` names the input."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def plan(
    name: str,
    *,
    channel: str | None = None,
    recipient: str | None = None,
    parts: str | None = None,
    config_dir: Path,
    inbound: bool = False,
) -> tuple[AdapterSpec, bool]:
    """The package to write for these choices, and whether it brings channel templates
    (only for a channel without templates in ``config_dir`` yet)."""
    channel = channel or name
    for label, value in (("NAME", name), ("--channel", channel)):
        if not NAME.fullmatch(value):
            raise ScaffoldError(
                f"{value!r}: lower-case letters, digits and _, starting with a letter "
                "(2-32 characters)",
                label,
            )
    installed = {e.name for e in entry_points(group="notifier.adapters")}
    if name in installed:
        raise ScaffoldError(f"an adapter named {name!r} is already installed")
    inferred = existing_parts(channel, config_dir)
    if parts:
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    else:
        chosen = inferred or _DEFAULT_PARTS
    bad = [p for p in chosen if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", p)]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise ScaffoldError(f"{parts!r}: distinct lower-case part names", "--parts")
    kind = RecipientKind(recipient) if recipient else _KNOWN_RECIPIENTS.get(channel)
    spec = AdapterSpec(name, channel, kind or RecipientKind.PHONE, chosen, inbound)
    return spec, inferred is None
