"""``notifier opt-out``: record, remove and check a citizen's opt-out from a channel
(the storage is :mod:`notifier.store.optouts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from notifier.cli.common import cli_settings, open_database
from notifier.masking import mask_recipient

if TYPE_CHECKING:
    from notifier.store.optouts import OptOutStore


def _cli_store() -> OptOutStore:
    from notifier.store.optouts import OptOutStore

    settings = cli_settings()
    key = settings.recipient_hash_key.get_secret_value()
    return OptOutStore(open_database(settings), key)


@click.group("opt-out")
def opt_out_group() -> None:
    """A citizen's opt-out from a channel (deliveries become "suppressed")."""


_channel_option = click.option("--channel", required=True, help="sms, email, zalo, portal...")
_recipient_option = click.option(
    "--recipient", required=True, help="Phone (any form), email or account id; stored hashed."
)


@opt_out_group.command("add")
@_channel_option
@_recipient_option
@click.option("--source", default="operator", show_default=True)
def opt_out_add(channel: str, recipient: str, source: str) -> None:
    """Record an opt-out."""
    new = _cli_store().add(recipient, channel, source)
    state = "opted out" if new else "already opted out"
    click.echo(f"{mask_recipient(recipient)} {state} of {channel}")


@opt_out_group.command("remove")
@_channel_option
@_recipient_option
def opt_out_remove(channel: str, recipient: str) -> None:
    """Opt back in."""
    removed = _cli_store().remove(recipient, channel)
    state = "opted back in to" if removed else "was not opted out of"
    click.echo(f"{mask_recipient(recipient)} {state} {channel}")


@opt_out_group.command("check")
@_channel_option
@_recipient_option
def opt_out_check(channel: str, recipient: str) -> None:
    """Whether a recipient is opted out of a channel (exit 1 if not)."""
    if _cli_store().is_opted_out(recipient, channel):
        click.echo(f"{mask_recipient(recipient)} is opted out of {channel}")
        return
    click.echo(f"{mask_recipient(recipient)} is not opted out of {channel}")
    raise SystemExit(1)
