"""Every provider simulated on 127.0.0.1 at once, with the settings that point notifier at
them: the embedded demo, the integration tests and the benchmark use the same set.

    with LocalProviders() as providers:
        settings = load_settings(**providers.settings_overrides(receipts_base=...))
        providers.seed_tokens(app.tokens)     # Zalo's refresh token, as an operator would
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Self

from notifier.store.tokens import TokenStore
from notifier_simulators.sms import EsmsSimulator, SpeedSmsSimulator
from notifier_simulators.smtp import SmtpCatcher
from notifier_simulators.zalo import ZaloSimulator


class LocalProviders:
    """An SMTP server, the eSMS and SpeedSMS gateways and Zalo ZNS, all local."""

    def __init__(self, *, smtp_latency_s: float = 0.0, parse_emails: bool = True) -> None:
        self.receipt_token = secrets.token_urlsafe(24)
        self.smtp = SmtpCatcher(latency_s=smtp_latency_s, parse_messages=parse_emails)
        self.esms = EsmsSimulator()
        self.speedsms = SpeedSmsSimulator()
        self.zalo = ZaloSimulator()
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        for simulator in (self.smtp, self.esms, self.speedsms, self.zalo):
            self._stack.enter_context(simulator)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def settings_overrides(self, receipts_base: str | None = None) -> dict[str, Any]:
        """``channels`` and ``adapters`` settings for these simulators. With
        ``receipts_base`` (the API's URL), eSMS is told where to send delivery reports
        (with each message), and SpeedSMS's callback URL is set (as an operator would
        in its dashboard)."""
        esms: dict[str, Any] = {
            "api_key": self.esms.api_key,
            "secret_key": self.esms.secret_key,
            "base_url": self.esms.base_url,
            "brandname": "CONG DVC",
            "receipt_token": self.receipt_token,
        }
        if receipts_base:
            esms["callback_url"] = f"{receipts_base}/v1/receipts/esms"
            self.speedsms.callback_url = (
                f"{receipts_base}/v1/receipts/speedsms/{self.receipt_token}"
            )
        return {
            "channels": {"sms": {"providers": ["esms", "speedsms"]}},
            "adapters": {
                "email": {"host": "127.0.0.1", "port": self.smtp.port, "pool_size": 4},
                "esms": esms,
                "speedsms": {
                    "access_token": self.speedsms.access_token,
                    "base_url": self.speedsms.base_url,
                    "brandname": "CONG DVC",
                    "receipt_token": self.receipt_token,
                },
                "zalo": {
                    "app_id": self.zalo.app_id,
                    "app_secret": self.zalo.app_secret,
                    "oa_secret_key": self.zalo.oa_secret_key,
                    "base_url": self.zalo.base_url,
                    "oauth_url": self.zalo.oauth_url,
                    "uid_url": self.zalo.uid_url,
                },
            },
        }

    def seed_tokens(self, tokens: TokenStore) -> None:
        """Store Zalo's first refresh token, as `notifier tokens set zalo` does."""
        tokens.put("zalo", refresh_token=self.zalo.current_refresh_token)
