"""Secrets at rest: API keys (stored hashed) and providers' OAuth tokens (encrypted)."""

from __future__ import annotations

import sys

import click

from notifier.cli.common import cli_settings, open_database, print_table
from notifier.store.apikeys import SCOPES


@click.group("api-keys")
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

    key = ApiKeys(open_database(cli_settings())).create(name, list(scopes), list(agencies))
    click.echo(key)


@api_keys.command("list")
def api_keys_list() -> None:
    from notifier.store.apikeys import ApiKeys

    rows = [c.__dict__ for c in ApiKeys(open_database(cli_settings())).list()]
    print_table(rows, ("name", "scopes", "agencies", "created_at", "revoked_at"))


@api_keys.command("revoke")
@click.argument("name")
def api_keys_revoke(name: str) -> None:
    from notifier.store.apikeys import ApiKeys

    if not ApiKeys(open_database(cli_settings())).revoke(name):
        raise click.ClickException(f"no active key named {name!r}")
    click.echo(f"revoked {name}")


@click.group()
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

    settings = cli_settings()
    refresh_token = sys.stdin.readline().strip()
    if not refresh_token:
        raise click.ClickException("no refresh token on standard input")
    store = TokenStore(open_database(settings), settings.secret_key.get_secret_value())
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

    settings = cli_settings()
    token = TokenStore(open_database(settings), settings.secret_key.get_secret_value()).get(name)
    if token is None:
        raise click.ClickException(f"no tokens stored for {name!r}")
    click.echo(
        f"{name}: version {token.version}, access token "
        + ("absent" if token.access_token is None else f"expires {token.expires_at}")
    )
