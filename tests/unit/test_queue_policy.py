"""The broker settings: several nodes in one URL, the queue type by environment, and
queue arguments that match Dramatiq's own for classic queues (so an existing
deployment's queues stay equivalent) and bound poison messages for quorum ones."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from notifier.amqp import QueuePolicy, broker_user, describe_nodes, node_parameters, node_urls
from notifier.brokers import NotifierRabbitmqBroker
from notifier.settings import EventsSettings, SettingsError
from tests.support import make_settings

STRONG = {
    "recipient_hash_key": "Qm9vdGggdHJhaW4gZmxvd2VyIGNsb3VkIDQ3IQ-x7Yz",
    "secret_key": "n7Gd2Kq9vLw4Xp1Rt8Hs5Jc3Bf6Ym0Ze-Ua_Ib",
}


def test_one_url_names_every_node_of_a_cluster_with_the_same_credentials_and_vhost() -> None:
    url = "amqp://worker:s3cr%2Ft@rmq1:5672,rmq2,rmq3:5673/notifier?heartbeat=10"
    assert node_urls(url) == [
        "amqp://worker:s3cr%2Ft@rmq1:5672/notifier?heartbeat=10",
        "amqp://worker:s3cr%2Ft@rmq2/notifier?heartbeat=10",
        "amqp://worker:s3cr%2Ft@rmq3:5673/notifier?heartbeat=10",
    ]
    assert broker_user(url) == "worker"
    assert describe_nodes(url) == "rmq1:5672,rmq2:5672,rmq3:5673"
    hosts = {(p.host, p.port, p.virtual_host) for p in node_parameters(url)}
    assert hosts == {
        ("rmq1", 5672, "notifier"),
        ("rmq2", 5672, "notifier"),
        ("rmq3", 5673, "notifier"),
    }


def test_a_single_node_url_is_one_node_and_a_list_keeps_its_order_when_not_shuffled() -> None:
    assert node_urls("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]
    ordered = node_parameters("amqp://u:p@a,b,c/", shuffle=False)
    assert [p.host for p in ordered] == ["a", "b", "c"]


def test_an_empty_node_in_the_list_is_refused() -> None:
    with pytest.raises(ValueError, match="empty host"):
        node_urls("amqp://u:p@rmq1,,rmq3/vhost")


def test_queues_are_quorum_in_production_and_classic_in_development_unless_set() -> None:
    assert make_settings().queue_type == "classic"
    assert make_settings(environment="production", **STRONG).queue_type == "quorum"
    chosen = make_settings(environment="production", broker={"queue_type": "classic"}, **STRONG)
    assert chosen.queue_type == "classic"


def test_a_delivery_limit_of_one_is_refused_because_a_failover_alone_would_dead_letter() -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_BROKER__DELIVERY_LIMIT"):
        make_settings(broker={"delivery_limit": 1})


def _dramatiq_declares(broker: RabbitmqBroker, queue: str) -> dict[str, Any]:
    """What a broker declares for a queue, its .DQ and its .XQ (arguments)."""
    seen: dict[str, Any] = {}

    class Channel:
        def queue_declare(self, queue: str, durable: bool, arguments: Any) -> None:
            assert durable
            seen[queue] = arguments

    broker.state.channel = Channel()
    broker._declare_queue(queue)
    broker._declare_dq_queue(queue)
    broker._declare_xq_queue(queue)
    return seen


def test_classic_queues_are_declared_exactly_as_dramatiq_itself_declares_them() -> None:
    ours = NotifierRabbitmqBroker("amqp://guest:guest@127.0.0.1/", QueuePolicy("classic"))
    theirs = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1/")
    assert _dramatiq_declares(ours, "n.email") == _dramatiq_declares(theirs, "n.email")


def test_quorum_queues_bound_a_poison_message_and_dead_letter_it_at_least_once() -> None:
    broker = NotifierRabbitmqBroker("amqp://g:g@a,b,c/", QueuePolicy("quorum", 7))
    declared = _dramatiq_declares(broker, "n.sms")
    for name in ("n.sms", "n.sms.DQ"):
        assert declared[name] == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 7,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "n.sms.XQ",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    assert declared["n.sms.XQ"]["x-queue-type"] == "quorum"
    assert "x-delivery-limit" not in declared["n.sms.XQ"]  # nothing leaves it unseen
    assert [p.host for p in sorted(broker.parameters, key=lambda p: p.host)] == ["a", "b", "c"]


def test_the_events_queue_keeps_no_arguments_when_classic_and_dead_letters_when_quorum() -> None:
    events = EventsSettings()
    assert QueuePolicy("classic").events_queue_arguments(events) is None
    quorum = QueuePolicy("quorum", 20).events_queue_arguments(events)
    assert quorum is not None
    assert quorum["x-dead-letter-routing-key"] == "notifier.events.inbound.XQ"
    assert quorum["x-delivery-limit"] == 20
