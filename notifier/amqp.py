"""The public AMQP contract: the events exchange, routing key and inbound queue."""

from __future__ import annotations

from typing import Any

import pika

from notifier.settings import CallbackSettings, EventsSettings


def connection_parameters(url: str, **overrides: Any) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.heartbeat = overrides.get("heartbeat", 30)
    parameters.blocked_connection_timeout = overrides.get("blocked_connection_timeout", 60)
    parameters.connection_attempts = overrides.get("connection_attempts", 1)
    return parameters


def broker_user(url: str) -> str:
    """The user name an amqp:// URL connects as (what RabbitMQ validates user_id against)."""
    credentials = pika.URLParameters(url).credentials
    return str(getattr(credentials, "username", "") or "")


def declare_topology(channel: Any, events: EventsSettings) -> None:
    """Declare the events exchange and the inbound queue (idempotent).

    Publishers only need the exchange; the queue is the worker bridge's. Dramatiq's
    own queues are declared by Dramatiq, never here.
    """
    channel.exchange_declare(exchange=events.exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue=events.queue, durable=True)
    channel.queue_bind(queue=events.queue, exchange=events.exchange, routing_key=events.routing_key)


def declare_callback_queue(channel: Any, callbacks: CallbackSettings) -> None:
    """Declare the status exchange (as its publisher, the status outbox, declares it:
    topic, durable), the callbacks' queue bound to every key, and the queue where
    messages that are not status messages are dead-lettered (idempotent)."""
    invalid = f"{callbacks.queue}.invalid"
    channel.exchange_declare(exchange=callbacks.exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue=invalid, durable=True)
    channel.queue_declare(
        queue=callbacks.queue,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": invalid},
    )
    channel.queue_bind(queue=callbacks.queue, exchange=callbacks.exchange, routing_key="#")
