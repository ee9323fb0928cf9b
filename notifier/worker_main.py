"""Loaded by each Dramatiq worker process (``notifier worker`` runs Dramatiq on it)."""

from __future__ import annotations

import dramatiq

from notifier.app import Notifier
from notifier.logging import configure_logging
from notifier.settings import load_settings

settings = load_settings()
configure_logging(settings.log_level, settings.log_format)
app = Notifier(settings)
broker = app.broker
dramatiq.set_broker(broker)
