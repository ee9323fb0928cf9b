"""Publishers' signed callbacks: set a URL and secret, rotate the secret, see each
publisher's callback health and dead letters, replay them."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import click

from notifier.cli.common import cli_settings, echo_json, open_database, print_table

if TYPE_CHECKING:
    from notifier.settings import Settings
    from notifier.store.callbacks import CallbackStore

_KIND_OPTION = click.option(
    "--broker-user",
    "broker_user",
    is_flag=True,
    help="PUBLISHER is a broker publisher user (default: an API key's name).",
)


def _store(settings: Settings | None = None) -> CallbackStore:
    from notifier.store.callbacks import CallbackStore

    settings = settings or cli_settings()
    return CallbackStore(open_database(settings), settings.secret_key.get_secret_value())


def _kind(broker_user: bool) -> str:
    return "broker-user" if broker_user else "api-key"


@click.group()
def callbacks() -> None:
    """Signed HTTP callbacks to publishers (Standard Webhooks; docs/events.md)."""


@callbacks.command("set")
@click.argument("publisher")
@click.option("--url", required=True, help="The publisher's https URL for callbacks.")
@_KIND_OPTION
def callbacks_set(publisher: str, url: str, broker_user: bool) -> None:
    """Set a publisher's callback URL. The first time, a signing secret is made and shown
    once: give it to the publisher (its verifier needs it)."""
    from notifier.callback_http import DestinationPolicy, DestinationRefused
    from notifier.store.callbacks import CallbackError
    from notifier.webhooks import new_secret

    settings = cli_settings()
    rules = settings.callbacks
    try:
        DestinationPolicy.of(rules.allowed_networks, allow_http=rules.allow_http).check_url(url)
    except DestinationRefused as exc:
        raise click.ClickException(exc.reason) from None
    secret = new_secret()
    try:
        target, created = _store(settings).set_target(_kind(broker_user), publisher, url, secret)
    except CallbackError as exc:
        raise click.ClickException(str(exc)) from None
    if created:
        click.echo(f"callbacks for {target.publisher_name} go to the URL given; signing secret:")
        click.echo(secret)
        click.echo("(shown once: give it to the publisher)", err=True)
    else:
        click.echo(f"callbacks for {target.publisher_name} now go to the URL given")


@callbacks.command("rotate-secret")
@click.argument("publisher")
@_KIND_OPTION
def callbacks_rotate(publisher: str, broker_user: bool) -> None:
    """Make a new signing secret (shown once). Callbacks carry a signature by the new
    and by the old secret until `notifier callbacks end-rotation`."""
    from notifier.store.callbacks import CallbackError
    from notifier.webhooks import new_secret

    secret = new_secret()
    try:
        _store().rotate_secret(_kind(broker_user), publisher, secret)
    except CallbackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(
        "(shown once) both secrets sign until `notifier callbacks end-rotation "
        f"{publisher}`, once the publisher verifies with the new one",
        err=True,
    )


@callbacks.command("end-rotation")
@click.argument("publisher")
@_KIND_OPTION
def callbacks_end_rotation(publisher: str, broker_user: bool) -> None:
    """Sign with the newest secret only."""
    from notifier.store.callbacks import CallbackError

    try:
        _store().end_rotation(_kind(broker_user), publisher)
    except CallbackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{publisher}: callbacks are signed with the newest secret only")


@callbacks.command("remove")
@click.argument("publisher")
@_KIND_OPTION
def callbacks_remove(publisher: str, broker_user: bool) -> None:
    """Stop callbacks to a publisher (its pending callbacks and dead letters go too)."""
    if not _store().remove_target(_kind(broker_user), publisher):
        raise click.ClickException(f"{publisher!r} has no callback")
    click.echo(f"removed the callback of {publisher}")


@callbacks.command("list")
@click.option("--json", "as_json", is_flag=True)
def callbacks_list(as_json: bool) -> None:
    """Each publisher's callback health: last success, failures, backlog, dead letters."""
    rows = [_health_row(h) for h in _store().health()]
    if as_json:
        echo_json(rows)
        return
    print_table(
        rows,
        (
            "publisher",
            "kind",
            "last_success_at",
            "last_failure_at",
            "failures_in_a_row",
            "backlog",
            "dead_letters",
            "last_error",
        ),
    )


def _health_row(health: Any) -> dict[str, Any]:
    return {
        "publisher": health.target.publisher_name,
        "kind": health.target.publisher_kind.value,
        "url": health.target.url,
        "agencies": None if health.agencies is None else list(health.agencies),
        "secrets_in_use": health.target.secrets_in_use,
        "last_success_at": health.last_success_at,
        "last_failure_at": health.last_failure_at,
        "failures_in_a_row": health.consecutive_failures,
        "last_error": health.last_error,
        "backlog": health.backlog,
        "oldest_pending_at": health.oldest_pending_at,
        "dead_letters": health.dead_letters,
        "delivered": health.delivered,
    }


@callbacks.command("dead-letters")
@click.option("--publisher", help="Only this publisher's.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def callbacks_dead_letters(publisher: str | None, limit: int, as_json: bool) -> None:
    """Callbacks given up after the configured age (replay them with `callbacks replay`)."""
    store = _store()
    rows = [d.__dict__ for d in store.dead_letters(publisher, limit=limit)]
    if as_json:
        echo_json({"total": store.dead_count(publisher), "items": rows})
        return
    print_table(
        rows,
        ("callback_id", "publisher_name", "type", "sequence", "attempts", "dead_at", "last_error"),
    )


@callbacks.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --publisher).")
@click.option("--publisher", help="Only this publisher's dead letters.")
def callbacks_replay(ids: tuple[str, ...], every: bool, publisher: str | None) -> None:
    """Send dead letters again (due now, with a fresh give-up age)."""
    if bool(ids) == every:
        raise click.ClickException("give callback ids, or --all")
    try:
        chosen = None if every else [uuid.UUID(i) for i in ids]
    except ValueError:
        raise click.ClickException("a callback id is a UUID") from None
    count = _store().replay(chosen, publisher=publisher)
    click.echo(f"replayed {count} callback(s)")
