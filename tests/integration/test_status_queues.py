"""Publishers' own status queues on the real RabbitMQ (issue 17, item 2): ``notifier
broker add-publisher`` gives each its queue, bound by notifier to its agencies'
statuses; it reads that queue only, and RabbitMQ refuses (ACCESS_REFUSED) reading
another publisher's queue or binding to another agency's statuses. ``set-agencies``
rebinds, ``remove-publisher`` deletes the queue."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from click.testing import CliRunner
from pika.exceptions import ChannelClosedByBroker

from notifier.cli.main import main
from notifier.pipeline.relay import StatusRelay
from notifier.store import Database
from notifier.store.deliveries.lifecycle import set_status
from notifier.store.migrate import upgrade
from tests.support import notifier_env, rabbit_settings
from tests.test_status_record import _planned_delivery

pytestmark = pytest.mark.integration

AGENCY_A, AGENCY_B = "000.00.12.H29", "000.00.20.H56"


def refusal(connection: pika.BlockingConnection, action: Callable[[Any], object]) -> int:
    """Run ``action`` on a fresh channel: 200, or the broker's code when it refuses."""
    channel = connection.channel()
    try:
        action(channel)
    except ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    channel.close()
    return 200


def announce(database: Database, relay: StatusRelay, agency: str) -> str:
    """A delivery of ``agency`` sent, and its status published; returns its id."""
    delivery_id = _planned_delivery(database, agency)
    with database.begin() as connection:
        set_status(connection, delivery_id, only_from=["queued"], values={"status": "sent"})
    assert relay.relay_once() == 1
    return str(delivery_id)


def drain(connection: pika.BlockingConnection, queue: str) -> list[str]:
    """The delivery ids of the statuses waiting in ``queue`` (taken)."""
    channel = connection.channel()
    found = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            channel.close()
            return found
        found.append(json.loads(body)["delivery"]["id"])


def test_a_publisher_reads_its_own_agencies_statuses_and_cannot_reach_anyone_elses(
    amqp_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path}/n.db"
    settings = rabbit_settings(
        amqp_url,
        database_url,
        queue_prefix,
        statuses={"exchange": f"{queue_prefix}.statuses", "queue_prefix": f"{queue_prefix}.st"},
    )
    database = Database(database_url)
    upgrade(database)
    env = notifier_env(settings)
    runner = CliRunner()
    names = {AGENCY_A: f"pub-a-{queue_prefix}", AGENCY_B: f"pub-b-{queue_prefix}"}
    passwords = {name: secrets.token_urlsafe(18) for name in names.values()}
    for agency, name in names.items():
        created = runner.invoke(
            main,
            ["broker", "add-publisher", name, "--agency", agency],
            input=passwords[name] + "\n",
            env=env,
        )
        assert created.exit_code == 0, created.output
        assert f"status queue '{queue_prefix}.st.{name}'" in created.output
    queue_a, queue_b = (f"{queue_prefix}.st.{names[a]}" for a in (AGENCY_A, AGENCY_B))
    host_and_vhost = amqp_url.split("@", 1)[1]
    name_a = names[AGENCY_A]
    publisher_a = pika.BlockingConnection(
        pika.URLParameters(f"amqp://{name_a}:{passwords[name_a]}@{host_and_vhost}")
    )
    relay = StatusRelay(database, amqp_url, settings.statuses)
    exchange = settings.statuses.exchange
    try:
        of_a, of_b = announce(database, relay, AGENCY_A), announce(database, relay, AGENCY_B)
        # Its own queue holds its own agency's status, and only that.
        assert drain(publisher_a, queue_a) == [of_a]
        refused = {
            "read another publisher's queue": lambda ch: ch.basic_get(queue_b),
            "consume another publisher's queue": lambda ch: ch.basic_consume(
                queue_b, lambda *a: None
            ),
            "bind its queue to another agency's statuses": lambda ch: ch.queue_bind(
                queue_a, exchange, routing_key="000~00~20~H56.#"
            ),
            "bind its queue to every status": lambda ch: ch.queue_bind(
                queue_a, exchange, routing_key="#"
            ),
            "declare a queue of its own": lambda ch: ch.queue_declare("", exclusive=True),
            "purge another publisher's queue": lambda ch: ch.queue_purge(queue_b),
            "delete its own queue": lambda ch: ch.queue_delete(queue_a),
        }
        codes = {what: refusal(publisher_a, action) for what, action in refused.items()}
        assert codes == dict.fromkeys(refused, 403)
        # Publisher B's status waits in B's queue, untouched by A's attempts.
        admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
        assert drain(admin, queue_b) == [of_b]
        # set-agencies rebinds: A now hears B's agency instead of its own.
        moved = runner.invoke(
            main, ["broker", "set-agencies", name_a, "--agency", AGENCY_B], env=env
        )
        assert moved.exit_code == 0, moved.output
        assert "status queue rebound with 000~00~20~H56.#" in moved.output
        now_a, now_b = announce(database, relay, AGENCY_A), announce(database, relay, AGENCY_B)
        assert drain(publisher_a, queue_a) == [now_b]
        assert now_a not in drain(admin, queue_b)
    finally:
        relay._disconnect()
        if publisher_a.is_open:
            publisher_a.close()
        for name in names.values():
            runner.invoke(main, ["broker", "remove-publisher", name], env=env)
    # Removing the publisher deleted its queue.
    assert refusal(admin, lambda ch: ch.queue_declare(queue_a, passive=True)) == 404
    admin.close()
    database.dispose()
