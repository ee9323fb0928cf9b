"""The ``notifier`` command: one front for every task (``notifier --help``).

Each topic has its module in this package (``serve``, ``events``, ``deliveries``,
``replay``, ``console``, ``operators``, ``keys``, ``broker``, ``callbacks``, ``db``,
``adapters``, ``optouts``); this one gathers them under one click group. Shared helpers are in
:mod:`notifier.cli.common`; the modules keep their heavy imports inside their commands,
so ``notifier --help`` stays quick.
"""

from __future__ import annotations

import click

from notifier import __version__
from notifier.cli import (
    adapters,
    broker,
    callbacks,
    console,
    db,
    deliveries,
    events,
    keys,
    operators,
    optouts,
    replay,
    serve,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="notifier")
def main() -> None:
    """notifier: dossier status events in, citizen notifications out.

    Settings come from NOTIFIER_* environment variables over config/notifier.toml.
    """


deliveries.deliveries.add_command(replay.resolve)
for command in (
    serve.worker,
    serve.api,
    serve.demo,
    events.publish,
    events.schema,
    deliveries.deliveries,
    deliveries.rejects,
    replay.replay,
    console.overview,
    console.dossier,
    console.dead_letters,
    console.providers,
    console.report,
    operators.operators,
    keys.api_keys,
    keys.tokens,
    broker.broker,
    callbacks.callbacks,
    db.db,
    db.purge_command,
    adapters.adapters,
    optouts.opt_out_group,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
