"""``notifier operators``: console accounts (passwords stored as scrypt hashes) and API
tokens for scripts or Prometheus."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from notifier.cli.common import cli_settings, open_database, print_table

if TYPE_CHECKING:
    from notifier.store.operators import OperatorStore


def _operators() -> OperatorStore:
    from notifier.store.operators import OperatorStore

    return OperatorStore(open_database(cli_settings()))


def _password(from_stdin: bool) -> str:
    """From standard input (scripts) or a hidden prompt, never from an argument."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("no password given")
    return password


@click.group()
def operators() -> None:
    """Console accounts (passwords stored as scrypt hashes) and API tokens for scripts."""


@operators.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def operators_add(username: str, role: str, password_stdin: bool) -> None:
    """Create an account (viewer reads; admin also replays)."""
    from notifier.store.operators import OperatorError

    store = _operators()
    try:
        added = store.add(username, _password(password_stdin), role)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {added.username} ({added.role.value})")


@operators.command("list")
@click.option("--json", "as_json", is_flag=True)
def operators_list(as_json: bool) -> None:
    rows = [
        {
            "username": o.username,
            "role": o.role.value,
            "created_at": o.created_at,
            "disabled_at": o.disabled_at,
        }
        for o in _operators().list()
    ]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    print_table(rows, ("username", "role", "created_at", "disabled_at"))


@operators.command("disable")
@click.argument("username")
def operators_disable(username: str) -> None:
    """Disable an account; its sessions end at once (enabling it again revives none)."""
    if not _operators().disable(username):
        raise click.ClickException(f"no active operator named {username!r}")
    click.echo(f"disabled {username}")


@operators.command("sign-out")
@click.argument("username")
def operators_sign_out(username: str) -> None:
    """End every console session of an operator (e.g. a lost laptop)."""
    if _operators().get(username) is None:
        raise click.ClickException(f"no operator named {username!r}")
    ended = _operators().end_sessions(username)
    click.echo(f"ended {ended} session(s) of {username}")


@operators.command("enable")
@click.argument("username")
def operators_enable(username: str) -> None:
    if not _operators().enable(username):
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"enabled {username}")


@operators.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
def operators_set_password(username: str, password_stdin: bool) -> None:
    """Change a password; every session of the operator ends."""
    from notifier.store.operators import OperatorError

    try:
        changed = _operators().set_password(username, _password(password_stdin))
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    if not changed:
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"password changed for {username}")


@operators.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(["viewer", "admin"]))
def operators_set_role(username: str, role: str) -> None:
    if not _operators().set_role(username, role):
        raise click.ClickException(f"no operator named {username!r}")
    click.echo(f"{username} is now {role}")


@operators.command("token")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "admin", "metrics"]),
    default="viewer",
    show_default=True,
    help="viewer: read the console API; admin: also replay; metrics: only /metrics.",
)
def operators_token(name: str, role: str) -> None:
    """Create an API token for scripts or Prometheus; it is shown once."""
    from sqlalchemy.exc import IntegrityError

    from notifier.store.apikeys import ApiKeys

    scope = {"viewer": "operator", "admin": "admin", "metrics": "metrics"}[role]
    try:
        key = ApiKeys(open_database(cli_settings())).create(name, [scope], [])
    except IntegrityError:
        raise click.ClickException(f"an API key named {name!r} exists already") from None
    click.echo(key)
