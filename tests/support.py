"""Helpers shared by the tests: settings for a test, an in-process worker, a served API."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from dramatiq import Worker

from notifier.app import Notifier
from notifier.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "config_dir": REPO / "config",
        "log_format": "console",
        "log_level": "INFO",
        # Quiet hours and caps follow the wall clock and the recipients' history: off for
        # the tests that are not about them (tests/test_choice*.py turn them on).
        "choice": {"quiet_hours": False, "frequency_caps": False},
    }
    values.update(overrides)
    return load_settings(**values)


def rabbit_settings(amqp_url: str, database_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for a test on RabbitMQ, with names of its own."""
    return make_settings(
        broker_url=amqp_url,
        database_url=database_url,
        events={"exchange": f"{prefix}.events", "queue": f"{prefix}.events.inbound"},
        worker={
            "queue_prefix": prefix,
            "min_backoff_ms": 50,
            "max_backoff_ms": 500,
            "send_timeout_s": 10,
        },
        **overrides,
    )


class RunningWorker:
    """An in-process Dramatiq worker for one app (the bridge starts with it)."""

    def __init__(self, app: Notifier, threads: int = 4) -> None:
        self.app = app
        self.worker = Worker(app.broker, worker_threads=threads, worker_timeout=100)

    def __enter__(self) -> RunningWorker:
        self.worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.app.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class ServedApi:
    """``create_api`` served by a real uvicorn on 127.0.0.1 (a free port)."""

    def __init__(self, asgi_app: Any) -> None:
        # As `notifier api` serves: no proxy headers trusted by uvicorn itself (the app
        # trusts NOTIFIER_API__TRUSTED_PROXIES only).
        config = uvicorn.Config(
            asgi_app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="off",
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApi:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    @property
    def base_url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def notifier_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `notifier` process with the same settings as ``settings``
    for everything the tests vary."""
    import os

    worker = settings.worker
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        "NOTIFIER_BROKER_URL": settings.broker_url,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_CONFIG_DIR": str(settings.config_dir),
        "NOTIFIER_EVENTS__EXCHANGE": settings.events.exchange,
        "NOTIFIER_EVENTS__QUEUE": settings.events.queue,
        "NOTIFIER_WORKER__QUEUE_PREFIX": worker.queue_prefix,
        "NOTIFIER_WORKER__MIN_BACKOFF_MS": str(worker.min_backoff_ms),
        "NOTIFIER_WORKER__MAX_BACKOFF_MS": str(worker.max_backoff_ms),
        "NOTIFIER_WORKER__SEND_TIMEOUT_S": str(worker.send_timeout_s),
        "NOTIFIER_LOG_FORMAT": "json",
        "NOTIFIER_CHOICE__QUIET_HOURS": str(settings.choice.quiet_hours).lower(),
        "NOTIFIER_CHOICE__FREQUENCY_CAPS": str(settings.choice.frequency_caps).lower(),
    }
    for name, values in settings.adapters.items():
        for key, value in values.items():
            env[f"NOTIFIER_ADAPTERS__{name.upper()}__{key.upper()}"] = str(value)
    env.update(extra)
    return env


def run_on_terminal(args: list[str], env: dict[str, str], timeout: float = 120.0) -> str:
    """``python -m notifier.cli.main ARGS`` with stdout and stderr on a pseudo-terminal, as a
    person at a terminal runs it; everything it wrote, once it has exited (exit 0)."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=REPO,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        code = process.wait(timeout=timeout)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    assert code == 0, output
    return output
