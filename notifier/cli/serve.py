"""Long-running processes: the worker, the HTTP API and the all-in-one demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from notifier.cli.common import check_broker_queues, cli_settings, open_app

# glibc gives each thread that contends for malloc an arena of its own (up to 8 a core)
# and keeps memory those arenas freed; a worker has many threads (Dramatiq's, the event
# loop, the background ones). Two arenas took 9 MB off each process's peak in the
# benchmark, CPU unchanged within noise (docs/performance.md, round 4); an operator's
# own value wins.
MALLOC_ARENAS = "2"


@click.command()
@click.option("--processes", type=int, help="Worker processes (default: settings).")
@click.option("--threads", type=int, help="Threads per process (default: settings).")
def worker(processes: int | None, threads: int | None) -> None:
    """Consume events and deliver notifications (needs RabbitMQ)."""
    settings = cli_settings()
    if not settings.uses_rabbitmq:
        raise click.ClickException(
            "the worker needs RabbitMQ: set NOTIFIER_BROKER_URL=amqp://... "
            "(for the embedded, in-process mode run `notifier demo`)"
        )
    app = open_app(settings)  # validate adapters, templates and routing before forking
    try:
        check_broker_queues(app)
    finally:
        app.close()
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
    environment = dict(os.environ)
    environment.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)  # read as the new image starts
    # Dramatiq's own process manager takes over; its worker processes inherit the
    # environment and the allocator's settings.
    os.execve(sys.executable, args, environment)  # noqa: S606


@click.command()
@click.option("--host", help="Interface to bind (default: settings, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: settings, 8000).")
def api(host: str | None, port: int | None) -> None:
    """Serve the HTTP API: events, portal inbox, delivery log (OpenAPI at /docs)."""
    import uvicorn

    from notifier.web.api import create_api

    app = open_app()
    if app.settings.uses_rabbitmq:
        check_broker_queues(app)
    uvicorn.run(
        create_api(app),
        host=host or app.settings.api.host,
        port=port or app.settings.api.port,
        log_config=None,
        proxy_headers=False,
    )


@click.command()
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
