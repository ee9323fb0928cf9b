"""The Node.js receiver of docs/events.md ("Callbacks"), run as written against notifier's
sender: it verifies the signatures (during a rotation, with the old secret only), drops a
repeat of a webhook-id and a stale sequence, and refuses a forged callback."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from notifier.pipeline.callbacks import CallbackSender
from notifier.settings import CallbackSettings
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.store.callbacks import CallbackStore, IncomingStatus
from notifier.webhooks import new_secret, signed_headers
from tests.support import REPO, wait_until

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


def docs_example() -> str:
    text = (REPO / "docs" / "events.md").read_text(encoding="utf-8")
    # The section by its name, whatever its number.
    heading = re.search(r"^## [0-9]+\. Callbacks", text, re.MULTILINE)
    assert heading is not None, "docs/events.md has no Callbacks section"
    part = text[heading.start() :]
    start = part.index("```js\n") + len("```js\n")
    return part[start : part.index("```", start)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _status(message_id: str, delivery_id: str, sequence: int) -> IncomingStatus:
    body = json.dumps(
        {
            "schema": "notifier.status.v1",
            "id": message_id,
            "type": "delivery.delivered",
            "agency": "H29",
            "sequence": sequence,
            "delivery": {"id": delivery_id, "channel": "sms", "status": "delivered"},
        }
    )
    return IncomingStatus(message_id, "delivery.delivered", "H29", sequence, body)


def test_the_node_receiver_in_the_docs_verifies_and_drops_repeats_and_stale_statuses(
    tmp_path: Path, sqlite_database: Database
) -> None:
    old, new = new_secret(), new_secret()
    port = _free_port()
    script = tmp_path / "receiver.js"
    script.write_text(docs_example(), encoding="utf-8")
    node = subprocess.Popen(
        ["node", str(script)],
        env={"PORT": str(port), "NOTIFIER_WEBHOOK_SECRETS": old, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _listening(port), timeout=15)
        ApiKeys(sqlite_database).create("mot-cua", ["publish"], ["H29"])
        store = CallbackStore(sqlite_database, "k" * 40)
        store.set_target("api-key", "mot-cua", f"http://127.0.0.1:{port}/hooks", old)
        store.rotate_secret("api-key", "mot-cua", new)  # both sign; the receiver has the old
        settings = CallbackSettings(allowed_networks=["127.0.0.1/32"], allow_http=True)
        sender = CallbackSender(store, settings)
        with httpx.Client() as client:
            for status in (
                _status("a", "d1", 1),
                _status("b", "d1", 3),
                _status("c", "d1", 2),  # arrives after 3: stale
                _status("d", "d2", 1),
            ):
                store.record([status])
                (claim,) = store.claim_due(sender.clock(), 10, sender.lease)
                sender.send(client, claim)
                if status.id == "d":
                    sender.send(client, claim)  # a repeat of the same webhook-id
            assert [h.delivered for h in store.health()] == [4]
            body = '{"schema": "notifier.status.v1", "id": "x", "sequence": 9}'
            forged = signed_headers("x", int(time.time()), body, [new_secret()])
            answer = client.post(f"http://127.0.0.1:{port}/hooks", content=body, headers=forged)
            assert answer.status_code == 401
    finally:
        node.terminate()
        out, err = node.communicate(timeout=10)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(line["id"], line["sequence"]) for line in lines] == [("a", 1), ("b", 3), ("d", 1)], (
        err.decode()
    )
