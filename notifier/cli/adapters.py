"""Channel adapters: list the installed ones, scaffold a new one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from notifier.adapter import RecipientKind


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def adapters(ctx: click.Context, as_json: bool) -> None:
    """List installed channel adapters and their settings."""
    if ctx.invoked_subcommand is not None:
        return
    from notifier.plugins.registry import describe_adapter, discover

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


@adapters.command("new")
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
    "--inbound",
    is_flag=True,
    help="Also read citizens' messages the provider forwards (parse_inbound, signed JSON "
    "as a starting point; docs/inbound.md).",
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
    inbound: bool,
    directory: Path | None,
) -> None:
    """Create a ready adapter package NAME: pyproject with the entry point, adapter,
    settings, contract tests and README. It installs and passes its own tests as is."""
    from notifier.plugins.scaffold import ScaffoldError, default_directory, generate, plan

    config_dir = Path(os.environ.get("NOTIFIER_CONFIG_DIR", "config"))
    try:
        spec, with_templates = plan(
            name,
            channel=channel,
            recipient=recipient,
            parts=parts,
            config_dir=config_dir,
            inbound=inbound,
        )
    except ScaffoldError as exc:
        if exc.option is None:
            raise click.ClickException(str(exc)) from None
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    target = directory or default_directory()
    try:
        written = generate(spec, target, with_templates=with_templates)
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
