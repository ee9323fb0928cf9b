"""The ``notifier`` command: one front for every task (``notifier --help``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import click

from notifier import __version__
from notifier.settings import Settings, SettingsError, load_settings
from notifier.store.apikeys import SCOPES

SCHEMA_PATH = Path("schemas") / "dossier-status-event.v1.schema.json"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _app(settings: Settings | None = None) -> Any:
    from notifier.app import Notifier
    from notifier.logging import configure_logging

    settings = settings or _settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return Notifier(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _database(settings: Settings) -> Any:
    from notifier.store import Database

    return Database(settings.database_url)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table; JSON output is the form for scripts."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="notifier")
def main() -> None:
    """notifier: dossier status events in, citizen notifications out.

    Settings come from NOTIFIER_* environment variables over config/notifier.toml.
    """


@main.command()
@click.option("--processes", type=int, help="Worker processes (default: settings).")
@click.option("--threads", type=int, help="Threads per process (default: settings).")
def worker(processes: int | None, threads: int | None) -> None:
    """Consume events and deliver notifications (needs RabbitMQ)."""
    settings = _settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException(
            "the worker needs RabbitMQ: set NOTIFIER_BROKER_URL=amqp://... "
            "(for the embedded, in-process mode run `notifier demo`)"
        )
    _app(settings).close()  # validate adapters, templates and routing before forking
    args = [
        sys.executable,
        "-m",
        "dramatiq",
        "notifier.cli.worker:broker",
        "--processes",
        str(processes or settings.worker.processes),
        "--threads",
        str(threads or settings.worker.threads),
        "--skip-logging",
        "--worker-shutdown-timeout",
        str(int(settings.worker.send_timeout_s * 1000 + 5000)),
    ]
    os.execv(sys.executable, args)  # noqa: S606 - Dramatiq's own process manager takes over


@main.command()
@click.option("--host", help="Interface to bind (default: settings, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: settings, 8000).")
def api(host: str | None, port: int | None) -> None:
    """Serve the HTTP API: events, portal inbox, delivery log (OpenAPI at /docs)."""
    import uvicorn

    from notifier.web.api import create_api

    app = _app()
    uvicorn.run(
        create_api(app),
        host=host or app.settings.api.host,
        port=port or app.settings.api.port,
        log_config=None,
        proxy_headers=False,
    )


def _read_events(stream: TextIO) -> Iterator[str]:
    """A JSON object, a JSON array of objects, or JSON Lines."""
    text = stream.read()
    stripped = text.strip()
    if not stripped:
        return
    try:
        document = json.loads(stripped)
    except ValueError:
        for line in stripped.splitlines():
            if line.strip():
                yield line
        return
    items = document if isinstance(document, list) else [document]
    for item in items:
        yield json.dumps(item, ensure_ascii=False)


@main.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON, no progress bar.")
def publish(file: TextIO, as_json: bool) -> None:
    """Publish events from FILE (a JSON object, array or JSON Lines; - for stdin).

    On a terminal a progress bar shows how far it got; piped or with --json, only the
    summary is printed at the end."""
    from notifier.cli.progress import counted
    from notifier.publisher import EventPublisher

    settings = _settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException("publish needs RabbitMQ: set NOTIFIER_BROKER_URL=amqp://...")
    documents = list(_read_events(file))
    with EventPublisher(settings.broker_url, settings.events) as publisher:
        report = publisher.publish_many(counted(documents, "publishing", as_json=as_json))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "confirmed": report.confirmed,
                    "failed": [{"event": label, "why": why} for label, why in report.failed],
                },
                ensure_ascii=False,
            )
        )
    else:
        click.echo(f"confirmed {report.confirmed}, failed {len(report.failed)}")
        for label, why in report.failed:
            click.echo(f"  not published: {label}: {why}", err=True)
    if report.failed:
        sys.exit(1)


@main.group(invoke_without_command=True)
@click.option("--dossier", "dossier_code", help="Dossier code (mã hồ sơ).")
@click.option("--channel")
@click.option(
    "--status",
    help="queued, sending, sent, delivered, temporary-failure, permanent-failure, "
    "suppressed or unknown (held: resolve with `notifier deliveries resolve`).",
)
@click.option("--agency", "agency_code")
@click.option("--event", "event_id", type=click.UUID)
@click.option("--recipient", help="A full phone or email; matched by its hash, shown masked.")
@click.option("--since", type=click.DateTime(), help="UTC, e.g. 2026-11-26T08:00:00")
@click.option("--until", type=click.DateTime())
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
@click.pass_context
def deliveries(
    ctx: click.Context,
    dossier_code: str | None,
    channel: str | None,
    status: str | None,
    agency_code: str | None,
    event_id: UUID | None,
    recipient: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List and filter the delivery log."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import UTC

    from notifier.store.deliveries.lifecycle import DeliveryStatus
    from notifier.store.deliveries.log import DeliveryLog, DeliveryQuery

    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise click.BadParameter(
            f"{status!r}; one of: {', '.join(s.value for s in DeliveryStatus)}",
            param_hint="--status",
        )

    settings = _settings()
    query = DeliveryQuery(
        dossier_code=dossier_code,
        channel=channel,
        status=status,
        agency_code=agency_code,
        event_id=event_id,
        recipient=recipient,
        since=since.replace(tzinfo=UTC) if since else None,
        until=until.replace(tzinfo=UTC) if until else None,
        limit=limit,
    )
    rows = DeliveryLog(_database(settings), settings.recipient_hash_key.get_secret_value()).search(
        query
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json(), ensure_ascii=False))
        return
    print_table([r.__dict__ for r in rows], DELIVERY_COLUMNS)


DELIVERY_COLUMNS = (
    "created_at",
    "dossier_code",
    "channel",
    "recipient",
    "status",
    "attempts",
    "provider",
    "last_error",
)


@main.command()
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
def rejects(limit: int, as_json: bool) -> None:
    """List rejected events with their reasons."""
    from notifier.store.deliveries.log import DeliveryLog

    settings = _settings()
    rows = DeliveryLog(_database(settings), settings.recipient_hash_key.get_secret_value()).rejects(
        limit=limit
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.__dict__, default=str, ensure_ascii=False))
        return
    print_table(
        [{**r.__dict__, "submitted_by": r.submitted_by} for r in rows],
        ("received_at", "source", "submitted_by", "event_id", "reason"),
    )


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def adapters(ctx: click.Context, as_json: bool) -> None:
    """List installed channel adapters and their settings."""
    if ctx.invoked_subcommand is not None:
        return
    from notifier.plugins.registry import discover

    described = [describe_adapter(cls) for cls in discover().values()]
    if as_json:
        click.echo(json.dumps(described, ensure_ascii=False, indent=2))
        return
    for item in sorted(described, key=lambda d: (d["channel"], d["name"])):
        click.echo(f"{item['name']}  (channel: {item['channel']}, module: {item['module']})")
        if item["description"]:
            click.echo(f"    {item['description']}")
        for setting in item["settings"]:
            default = "" if setting["required"] else f" = {setting['default']}"
            secret = " (secret)" if setting["secret"] else ""
            click.echo(
                f"    NOTIFIER_ADAPTERS__{item['name'].upper()}__{setting['name'].upper()}"
                f": {setting['type']}{default}{secret}"
            )


def describe_adapter(adapter_class: Any) -> dict[str, Any]:
    """An adapter's self-description; secret fields show their type, never a value."""
    from pydantic import SecretStr

    settings = []
    for name, field in adapter_class.settings_model.model_fields.items():
        annotation = field.annotation
        secret = "Secret" in str(annotation) or annotation is SecretStr
        default = (
            None if field.is_required() or secret else field.get_default(call_default_factory=True)
        )
        settings.append(
            {
                "name": name,
                "type": getattr(annotation, "__name__", str(annotation)).replace("typing.", ""),
                "required": field.is_required(),
                "default": default
                if isinstance(default, str | int | float | bool | None)
                else str(default),
                "secret": secret,
                "description": field.description or "",
            }
        )
    return {
        "name": adapter_class.name,
        "channel": adapter_class.channel,
        "description": adapter_class.description,
        "module": adapter_class.__module__,
        "recipient": str(adapter_class.recipient_kind),
        "template_parts": [p.name for p in adapter_class.template_parts],
        "settings": settings,
    }


@main.group()
def db() -> None:
    """Database schema tasks."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (safe to run on every deploy)."""
    from notifier.store.migrate import upgrade

    upgrade(_database(_settings()))
    click.echo("database is up to date")


@main.command()
@click.option("--check", is_flag=True, help="Fail if the file differs from the models.")
@click.option("--output", type=click.Path(path_type=Path), default=SCHEMA_PATH, show_default=True)
def schema(check: bool, output: Path) -> None:
    """Write the JSON Schema of the event contract."""
    from notifier.events import json_schema

    text = json.dumps(json_schema(), ensure_ascii=False, indent=2) + "\n"
    if check:
        if not output.is_file() or output.read_text("utf-8") != text:
            raise click.ClickException(f"{output} is out of date: run `notifier schema`")
        click.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, "utf-8")
    click.echo(f"wrote {output}")


@main.group("api-keys")
def api_keys() -> None:
    """Create, list and revoke API keys (stored hashed)."""


@api_keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(list(SCOPES)),
)
@click.option(
    "--agency",
    "agencies",
    multiple=True,
    help="Agency codes a publish key may publish for (default: all).",
)
def api_keys_create(name: str, scopes: tuple[str, ...], agencies: tuple[str, ...]) -> None:
    """Create a key; it is shown once."""
    from notifier.store.apikeys import ApiKeys

    key = ApiKeys(_database(_settings())).create(name, list(scopes), list(agencies))
    click.echo(key)


@api_keys.command("list")
def api_keys_list() -> None:
    from notifier.store.apikeys import ApiKeys

    rows = [c.__dict__ for c in ApiKeys(_database(_settings())).list()]
    print_table(rows, ("name", "scopes", "agencies", "created_at", "revoked_at"))


@api_keys.command("revoke")
@click.argument("name")
def api_keys_revoke(name: str) -> None:
    from notifier.store.apikeys import ApiKeys

    if not ApiKeys(_database(_settings())).revoke(name):
        raise click.ClickException(f"no active key named {name!r}")
    click.echo(f"revoked {name}")


@main.group()
def broker() -> None:
    """RabbitMQ tasks."""


@broker.command("setup")
def broker_setup() -> None:
    """Declare the events exchange and inbound queue (what publishers need to exist)."""
    import pika

    from notifier.amqp import connection_parameters, declare_topology

    settings = _settings()
    connection = pika.BlockingConnection(connection_parameters(settings.broker_url))
    try:
        declare_topology(connection.channel(), settings.events)
    finally:
        connection.close()
    click.echo(
        f"exchange {settings.events.exchange!r} → queue {settings.events.queue!r} "
        f"(routing key {settings.events.routing_key!r})"
    )


@main.command()
@click.option("--events", "count", type=int, default=12, show_default=True)
@click.option(
    "--exit",
    "exit_after",
    is_flag=True,
    help="Exit after delivering (status 0 only if every delivery succeeded).",
)
@click.option("--port", type=int, default=8000, show_default=True, help="Inbox API port.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path(".notifier-demo"),
    show_default=True,
    help="Where the demo keeps its SQLite database.",
)
def demo(count: int, exit_after: bool, port: int, workdir: Path) -> None:
    """Run everything in one process on the embedded default and watch events turn into
    deliveries: SQLite, an in-process broker, local simulated providers."""
    from notifier.cli.demo import run_demo

    sys.exit(run_demo(count=count, exit_after=exit_after, port=port, workdir=workdir))


@main.group()
def tokens() -> None:
    """Provider OAuth tokens, such as Zalo's, stored encrypted."""


@tokens.command("set")
@click.argument("name")
@click.option(
    "--refresh-token-stdin",
    is_flag=True,
    required=True,
    help="Read the refresh token from standard input (keeps it out of shell history).",
)
def tokens_set(name: str, refresh_token_stdin: bool) -> None:
    """Store a provider's refresh token (after authorising the app in its console)."""
    from notifier.store.tokens import TokenStore

    settings = _settings()
    refresh_token = sys.stdin.readline().strip()
    if not refresh_token:
        raise click.ClickException("no refresh token on standard input")
    store = TokenStore(_database(settings), settings.secret_key.get_secret_value())
    token = store.put(name, refresh_token=refresh_token)
    click.echo(
        f"stored tokens for {name!r} (version {token.version}); the access token is "
        "fetched on first use"
    )


@tokens.command("show")
@click.argument("name")
def tokens_show(name: str) -> None:
    """When a provider's access token expires (never the tokens themselves)."""
    from notifier.store.tokens import TokenStore

    settings = _settings()
    token = TokenStore(_database(settings), settings.secret_key.get_secret_value()).get(name)
    if token is None:
        raise click.ClickException(f"no tokens stored for {name!r}")
    click.echo(
        f"{name}: version {token.version}, access token "
        + ("absent" if token.access_token is None else f"expires {token.expires_at}")
    )


def _register_commands() -> None:
    """Commands that live beside the code they drive (each module keeps its own heavy
    imports inside its commands, so `notifier --help` stays quick)."""
    from notifier.cli import operators as console
    from notifier.ops.brokeradmin import (
        add_publisher_command,
        publishers_command,
        remove_publisher_command,
        set_agencies_command,
    )
    from notifier.ops.retention import purge_command
    from notifier.plugins.scaffold import new_adapter
    from notifier.store.optouts import opt_out_group

    adapters.add_command(new_adapter, "new")
    deliveries.add_command(console.resolve)
    broker.add_command(add_publisher_command)
    broker.add_command(remove_publisher_command)
    broker.add_command(set_agencies_command)
    broker.add_command(publishers_command)
    for command in (
        purge_command,
        opt_out_group,
        console.overview,
        console.dossier,
        console.dead_letters,
        console.providers,
        console.report,
        console.replay,
        console.operators,
    ):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
