"""The event contract from the command line: publish events, write its JSON Schema."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import click

from notifier.cli.common import cli_settings

SCHEMA_PATH = Path("schemas") / "dossier-status-event.v1.schema.json"


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


@click.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON, no progress bar.")
def publish(file: TextIO, as_json: bool) -> None:
    """Publish events from FILE (a JSON object, array or JSON Lines; - for stdin).

    On a terminal a progress bar shows how far it got; piped or with --json, only the
    summary is printed at the end."""
    from notifier.cli.progress import counted
    from notifier.publisher import EventPublisher

    settings = cli_settings()
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


@click.command()
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
