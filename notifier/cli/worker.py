"""Loaded by each Dramatiq worker process (``notifier worker`` runs Dramatiq on it)."""

from __future__ import annotations

import dramatiq

from notifier.app import Notifier
from notifier.logging import configure_logging
from notifier.ops.metrics import instrument_worker
from notifier.ops.retention import add_retention_job
from notifier.ops.rollups import add_rollup_job
from notifier.settings import load_settings

settings = load_settings()
configure_logging(settings.log_level, settings.log_format)
app = Notifier(settings)
add_retention_job(app)  # the personal data purge, every interval_s
add_rollup_job(app)  # the hourly rollup reports read, every interval_s
instrument_worker(app)  # Dramatiq's Prometheus middleware (port 9191) + send metrics
broker = app.broker
dramatiq.set_broker(broker)
