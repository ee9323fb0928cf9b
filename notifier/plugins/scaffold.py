"""``notifier adapters new NAME``: write a ready-to-install adapter package.

The package works as generated: an HTTP adapter (one signed-in JSON POST per message
through ``context.http_client``), its settings, templates for a new channel, a
README, and tests that run notifier's contract kit against a local stand-in for the
provider. A developer then adapts ``payload`` and ``_failure`` to the provider's API.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from string import Template

import click

from notifier.adapter import RecipientKind
from notifier.events import Status

__all__ = ["AdapterSpec", "generate", "new_adapter"]

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
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{spec.package}/__init__.py": _INIT,
        f"{spec.package}/settings.py": _SETTINGS,
        f"{spec.package}/adapter.py": _ADAPTER,
        f"{spec.package}/py.typed": Template(""),
        "tests/test_contract.py": _TESTS,
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


def _default_directory() -> Path:
    adapters = Path("adapters")
    return adapters if adapters.is_dir() else Path(".")


@click.command("new")
@click.argument("name")
@click.option("--channel", help="The channel it serves (default: NAME), e.g. sms or app_push.")
@click.option(
    "--recipient",
    type=click.Choice([kind.value for kind in RecipientKind]),
    help="The contact it delivers to (default: by channel, else phone).",
)
@click.option(
    "--parts",
    help="Comma-separated template parts (default: those of the channel's existing "
    "templates in config/templates, else title,body).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to create notifier-NAME/ (default: ./adapters if it exists, else .).",
)
def new_adapter(
    name: str,
    channel: str | None,
    recipient: str | None,
    parts: str | None,
    directory: Path | None,
) -> None:
    """Create a ready adapter package NAME: pyproject with the entry point, adapter,
    settings, contract tests and README. It installs and passes its own tests as is."""
    channel = channel or name
    for label, value in (("NAME", name), ("--channel", channel)):
        if not NAME.fullmatch(value):
            raise click.BadParameter(
                f"{value!r}: lower-case letters, digits and _, starting with a letter "
                "(2-32 characters)",
                param_hint=label,
            )
    installed = {e.name for e in entry_points(group="notifier.adapters")}
    if name in installed:
        raise click.ClickException(f"an adapter named {name!r} is already installed")
    config_dir = Path(os.environ.get("NOTIFIER_CONFIG_DIR", "config"))
    inferred = existing_parts(channel, config_dir)
    if parts:
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    else:
        chosen = inferred or _DEFAULT_PARTS
    bad = [p for p in chosen if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", p)]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise click.BadParameter(f"{parts!r}: distinct lower-case part names", param_hint="--parts")
    kind = RecipientKind(recipient) if recipient else _KNOWN_RECIPIENTS.get(channel)
    spec = AdapterSpec(name, channel, kind or RecipientKind.PHONE, chosen)
    target = directory or _default_directory()
    try:
        written = generate(spec, target, with_templates=inferred is None)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    root = target / spec.distribution
    click.echo(f"created {root}/")
    for path in written:
        click.echo(f"  {path.relative_to(root)}")
    click.echo(
        "\nnext:\n"
        f"  pip install -e {root}\n"
        f"  pytest {root}\n"
        f"  then read {root / 'README.md'} (settings, routing, templates)"
    )


_PYPROJECT = Template("""\
[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "notifier channel adapter: $channel notifications through $name."
readme = "README.md"
requires-python = ">=3.11"
dependencies = [
    "notifier",
    "httpx>=0.27,<1",
]

[project.optional-dependencies]
test = ["pytest>=8"]

# notifier finds adapters only through this entry-point group. Settings refer to the
# adapter by its ``name`` ClassVar: NOTIFIER_ADAPTERS__${name_upper}__*.
[project.entry-points."notifier.adapters"]
$name = "$package.adapter:${Prefix}Adapter"

[tool.setuptools]
packages = ["$package"]

[tool.setuptools.package-data]
$package = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra -p no:cacheprovider"

[tool.mypy]
strict = true
plugins = ["pydantic.mypy"]

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM", "RUF", "PT"]
""")

_INIT = Template('''\
"""$distribution: the $channel channel through $name, an adapter for notifier.

Installed, it registers :class:`${Prefix}Adapter` as ``$name`` in the
``notifier.adapters`` entry-point group; configure it with
``NOTIFIER_ADAPTERS__${name_upper}__*`` (see :class:`${Prefix}Settings`).
"""

from .adapter import ${Prefix}Adapter, payload
from .settings import ${Prefix}Settings

__all__ = ["${Prefix}Adapter", "${Prefix}Settings", "payload"]
''')

_SETTINGS = Template('''\
"""Settings of the $name adapter: NOTIFIER_ADAPTERS__${name_upper}__<FIELD>.

Unknown keys are errors (AdapterSettings forbids them), so a typo stops start-up.
Secrets are SecretStr: never shown in logs, errors or ``notifier adapters``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from notifier.adapter import AdapterSettings
from pydantic import Field, SecretStr, field_validator


class ${Prefix}Settings(AdapterSettings):
    """Where the provider's API is and how to authenticate to it."""

    url: str = Field(description="The provider's send endpoint.")
    token: SecretStr = Field(min_length=8, description="API token, sent as a Bearer token.")
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=10, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value.strip()
''')

_ADAPTER = Template('''\
"""The $name adapter: $channel notifications through a provider's HTTP API.

Registered as ``$name`` in the ``notifier.adapters`` entry-point group (pyproject.toml).
As generated it POSTs one JSON document per message (:func:`payload`) with a Bearer
token and the delivery id as ``Idempotency-Key``, through the adapter kit's HTTP
layer (:mod:`notifier.adapter_http`), which already turns timeouts, refused
connections, 429 and 5xx into TemporaryFailure (``maybe_sent`` when the request went
out). Adapt ``payload`` and ``_failure`` to the real API, and keep notifier's rules
(docs/adapters.md):

* report failures only as TemporaryFailure (retry later) or PermanentFailure (never
  retry; ``operator_alert=True`` when it is our configuration, not the citizen);
* pass ``message.delivery_id`` to the provider as its idempotency/tracking reference;
* never log or put in a failure reason ``message.recipient`` or the message text.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from notifier.adapter import (
    Adapter,
    AdapterContext,
    DeliveryFailure,
    Health,
    OutboundMessage,
    RecipientKind,
    SendResult,
    TemplatePart,
)
from notifier.adapter_http import AdapterHttp, status_failure
from notifier.logging import get_logger

from .settings import ${Prefix}Settings

__all__ = ["${Prefix}Adapter", "payload"]

log = get_logger(__name__)


def payload(message: OutboundMessage) -> dict[str, Any]:
    """What the provider receives for one message."""
    return {
        "reference": str(message.delivery_id),  # the same on every retry: dedupe on it
        "to": message.recipient,
        "language": message.language,
        "dossier_code": message.dossier_code,
        "status": message.status,
        "content": dict(message.parts),  # $parts_list, rendered from the templates
    }


def _failure(response: httpx.Response) -> DeliveryFailure:
    """Map an error answer (not 429/5xx: the HTTP layer raised those) onto notifier's
    retry model. 401/403 (our token) and 3xx/404 (our URL) are operator alerts and the
    worker fails over to the next provider; read the provider's own error codes here
    before falling back on the HTTP status."""
    return status_failure(response, "the provider", refusal_is_ours=False)


class ${Prefix}Adapter(Adapter[${Prefix}Settings]):
    """Sends each message as one JSON POST to the provider."""

    name: ClassVar[str] = "$name"
    channel: ClassVar[str] = "$channel"
    description: ClassVar[str] = "$channel notifications through the $name HTTP API"
    settings_model = ${Prefix}Settings
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.$recipient_kind
    template_parts: ClassVar[tuple[TemplatePart, ...]] = $template_parts

    def __init__(self, settings: ${Prefix}Settings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        # The pooled client, made on first use on the event loop that runs the sends.
        self._http = AdapterHttp(
            context,
            "the provider",
            timeout_s=settings.timeout_s,
            max_connections=settings.max_connections,
            follow_redirects=False,
        )

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

    async def send(self, message: OutboundMessage) -> SendResult:
        headers = {
            "Authorization": f"Bearer {self.settings.token.get_secret_value()}",
            "Idempotency-Key": str(message.delivery_id),
        }
        # Timeouts, refused connections, 429 and 5xx come out as TemporaryFailure.
        response = await self._http.request(
            "POST", self.settings.url, json=payload(message), headers=headers
        )
        if not response.is_success:
            raise _failure(response)
        log.debug("provider accepted the message", status=response.status_code)
        provider_id: str | None = None
        try:
            document = response.json()
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("id"), str | int):
            provider_id = str(document["id"])
        return SendResult(provider_message_id=provider_id or None)

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> Health:
        try:
            response = await self._http.client().head(self.settings.url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"unreachable: {type(exc).__name__}")
        return Health(ok=response.status_code < 500, detail=f"HTTP {response.status_code}")
''')

_TESTS = Template('''\
"""The $name adapter against notifier's adapter contract kit (notifier.testing), over
real HTTP to a local stand-in for the provider that checks the token.

Run: pip install -e . && pytest
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from notifier.testing import (
    OMIT,
    AdapterContract,
    LocalHttpServer,
    RecordedRequest,
    Reply,
    make_context,
    run,
    sample_message,
)

from $package import ${Prefix}Adapter, ${Prefix}Settings

TOKEN = "test-token-0123456789"


def provider_stand_in() -> LocalHttpServer:
    """Answers 200 {"id": ...} to requests with the right token, 401 to others."""

    def check(request: RecordedRequest) -> Reply | None:
        if request.header("authorization") != f"Bearer {TOKEN}":
            return Reply(401, {"error": "bad token"})
        return None

    return LocalHttpServer(check=check, default=Reply(200, {"id": "msg-1"}))


class Test${Prefix}Contract(AdapterContract):
    adapter_class = ${Prefix}Adapter
    templates_dir = $templates_dir

    def provider(self) -> LocalHttpServer:
        return provider_stand_in()

    def valid_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        return {"url": provider.url + "/send", "token": TOKEN, "timeout_s": 0.5}

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [{"url": "ftp://example.vn/send"}, {"token": OMIT}, {"token": "short"}]

    def cause_temporary_failure(self, provider: LocalHttpServer) -> None:
        provider.fail_next(503)

    def cause_permanent_failure(self, provider: LocalHttpServer) -> None:
        provider.fail_next(400)

    def cause_timeout(self, provider: LocalHttpServer) -> None:
        provider.hang_next(seconds=5)

    def unreachable_settings(self, provider: LocalHttpServer) -> dict[str, Any]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return {**self.valid_settings(provider), "url": f"http://127.0.0.1:{port}/send"}

    def no_answer_settings(self, provider: LocalHttpServer, url: str) -> dict[str, Any]:
        # The kit's server at ``url`` takes the request and never answers.
        return {**self.valid_settings(provider), "url": url + "/send"}

    def sent_reference(self, provider: LocalHttpServer) -> str | None:
        request = provider.last_request
        return None if request is None else request.header("idempotency-key")


def test_the_provider_receives_the_message() -> None:
    """An example of a test of your own, next to the kit's."""
    with provider_stand_in() as provider:
        settings = ${Prefix}Settings(url=provider.url + "/send", token=TOKEN)
        adapter = ${Prefix}Adapter(settings, make_context())
        message = sample_message(${Prefix}Adapter)

        async def send() -> Any:
            try:
                return await adapter.send(message)
            finally:
                await adapter.close()

        result = run(send())
        request = provider.last_request

    assert request is not None
    assert request.json()["reference"] == str(message.delivery_id)
    assert request.json()["content"] == dict(message.parts)
    assert result.provider_message_id == "msg-1"


def test_declared_templates_exist() -> None:
    folder = Test${Prefix}Contract.templates_dir
    if folder is not None:
        assert isinstance(folder, Path)
        assert (folder / "vi" / "$channel.toml").is_file()
''')

_README = Template("""\
# $distribution

A notifier channel adapter: **$channel** notifications through
**$name**, generated by `notifier adapters new $name`. It works as generated (one JSON
POST per message with a Bearer token); adapt `payload` and `_failure` in
`$package/adapter.py` to the provider's real API. It sends through notifier's HTTP
layer (`notifier.adapter_http.AdapterHttp`): timeouts, refused connections, 429 and
5xx are already `TemporaryFailure` (`maybe_sent=True` when the request went out and
no answer came), so `_failure` reads only the provider's own refusals.

## Install and test

```sh
pip install -e .            # registers the entry point notifier.adapters: $name
pytest                      # notifier's contract kit + your own tests
notifier adapters           # lists "$name (channel: $channel, ...)" and its settings
```

The tests run `notifier.testing.AdapterContract` against a local stand-in for the
provider (`tests/test_contract.py`): settings validation, secrets, temporary vs
permanent failures, the delivery id as idempotency reference, no recipient in logs,
a clean `close()`. Keep them passing as you change the adapter.

## Settings

| Variable | Meaning |
|---|---|
| `NOTIFIER_ADAPTERS__${name_upper}__URL` | the provider's send endpoint |
| `NOTIFIER_ADAPTERS__${name_upper}__TOKEN` | API token (secret) |
| `NOTIFIER_ADAPTERS__${name_upper}__TIMEOUT_S` | seconds per request (default 10) |
| `NOTIFIER_ADAPTERS__${name_upper}__MAX_CONNECTIONS` | pooled connections (default 10) |

## Enable and route

* If `$name` is the only adapter installed for channel `$channel`, setting its
  variables enables the channel. With several adapters for one channel, choose and
  order them (failover order): `NOTIFIER_CHANNELS__${channel_upper}__PROVIDERS='["$name"]'`.
* Send statuses to the channel in `config/routing.toml` (per agency if needed), and
  name a fallback channel for when it fails permanently, e.g.
  `[fallback]` `$channel = ["sms"]`.
* Templates: the channel needs `config/templates/vi/$channel.toml` and
  `config/templates/en/$channel.toml` with the parts $parts_list for every status.
  If this package has a `templates/` folder, copy it there and write each text.

The adapter delivers to the applicant's `$recipient_value` contact.

## What an adapter must do

See notifier's `docs/adapters.md`: failures only as `TemporaryFailure` /
`PermanentFailure`, `message.delivery_id` as the provider's reference, never
the recipient in a log line or failure reason, `close()` releases connections and
can be called twice, and optional delivery receipts (`accepts_receipts`,
`parse_receipt`) served at `/v1/receipts/$name`.
""")
