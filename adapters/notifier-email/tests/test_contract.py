"""The email adapter against notifier's adapter contract kit, over real SMTP to the local
catcher (notifier_simulators.smtp), which requires AUTH so credentials are exercised."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any, ClassVar

from notifier_email import EmailAdapter
from notifier_simulators.smtp import SmtpCatcher

from notifier.testing import OMIT, AdapterContract

REPO = Path(__file__).resolve().parents[3]
USER, PASSWORD = "notifier", "catcher-pw-7731"


class TestEmailContract(AdapterContract):
    adapter_class = EmailAdapter
    templates_dir = REPO / "config" / "templates"
    not_applicable: ClassVar[dict[str, str]] = {
        "no_answer": "SMTP, not HTTP: the kit's silent server speaks HTTP",
    }

    def provider(self) -> SmtpCatcher:
        return SmtpCatcher(auth=(USER, PASSWORD))

    def valid_settings(self, provider: SmtpCatcher) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": provider.port,
            "username": USER,
            "password": PASSWORD,
            "from_address": "hcc@hanoi.gov.vn",
            "timeout_s": 0.5,
        }

    def invalid_settings(self) -> list[dict[str, Any]]:
        return [
            {"username": OMIT},  # a password without a user
            {"pool_size": 0},
            {"security": "ssl"},
            {"port": 0},
            {"timeout_s": 0},
            {"from_address": "not an address"},
            {"from_name": "Cổng\r\nBcc: evil@example.com"},
        ]

    def cause_temporary_failure(self, provider: SmtpCatcher) -> None:
        provider.fail_next(1, code=451, message="4.3.0 Mailbox busy, try later")

    def cause_permanent_failure(self, provider: SmtpCatcher) -> None:
        provider.fail_next(1, code=550, message="5.1.1 Recipient address rejected")

    def cause_timeout(self, provider: SmtpCatcher) -> None:
        provider.latency_s = 2.0  # every reply comes after the adapter's 0.5 s timeout

    def unreachable_settings(self, provider: SmtpCatcher) -> dict[str, Any]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return {**self.valid_settings(provider), "port": port}

    def sent_reference(self, provider: SmtpCatcher) -> str | None:
        messages = provider.messages
        return str(messages[-1]["X-Notifier-Delivery-Id"]) if messages else None

    def expected_reference(self, delivery_id: uuid.UUID) -> str:
        return str(delivery_id)
