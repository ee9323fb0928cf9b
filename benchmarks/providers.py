"""The provider simulators, in a process of their own (so their CPU is counted apart).

Started by benchmarks/run.py as ``python benchmarks/providers.py``. It prints one JSON
line (ports, credentials, notifier's settings overrides), then answers commands, one
per line on stdin, with one JSON line on stdout:

- ``dump PATH``: write what was accepted since the last reset to PATH (JSON) and
  forget it: per channel, ``[id, accepted_at epoch seconds]`` (id: notifier's delivery
  id; ``null`` for mail that carries none, e.g. the bare reference's or Apprise's);
- ``token``: a fresh ZNS access token (for the bare reference: it has no OAuth flow);
- ``quit``.

Acceptance times: the SMTP catcher stamps ``time.monotonic()`` when DATA is accepted,
converted here to epoch seconds; the SMS and Zalo simulators stamp ``time.time()``
when they accept a request.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from notifier_simulators.local import LocalProviders

_DELIVERY_ID = re.compile(rb"X-Notifier-Delivery-Id: ([0-9a-f-]{36})")


def _dump(providers: LocalProviders, path: Path) -> dict[str, int]:
    offset = time.time() - time.monotonic()
    email = []
    for message in providers.smtp.messages:
        match = _DELIVERY_ID.search(message.raw, 0, 4096)
        email.append([match.group(1).decode() if match else None, message.received_at + offset])
    records: dict[str, list[list[Any]]] = {
        "email": email,
        "sms": [[m.request_id, m.accepted_at] for m in providers.esms.messages]
        + [[None, m.accepted_at] for m in providers.speedsms.messages],
        "zalo": [[m.tracking_id, m.received_at] for m in providers.zalo.messages],
    }
    providers.smtp.reset()
    providers.esms.reset()
    providers.speedsms.reset()
    with providers.zalo._cond:  # the ZNS simulator has no reset; its list is all we keep
        providers.zalo._messages.clear()
    path.write_text(json.dumps(records))
    return {channel: len(rows) for channel, rows in records.items()}


def main() -> None:
    with LocalProviders(parse_emails=False) as providers:
        print(
            json.dumps(
                {
                    "overrides": providers.settings_overrides(),
                    "zalo_refresh_token": providers.zalo.current_refresh_token,
                    "smtp_port": providers.smtp.port,
                    "esms": {
                        "base_url": providers.esms.base_url,
                        "api_key": providers.esms.api_key,
                        "secret_key": providers.esms.secret_key,
                    },
                    "zalo_base_url": providers.zalo.base_url,
                }
            ),
            flush=True,
        )
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "dump":
                answer: dict[str, Any] = {"counts": _dump(providers, Path(argument))}
            elif command == "token":
                answer = {"access_token": providers.zalo.issue_access_token()}
            elif command == "quit":
                break
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
