"""notifier's adapter contract kit: what every adapter package runs against itself.

::

    from notifier.testing import AdapterContract, LocalHttpServer

    class TestMyAdapter(AdapterContract):
        adapter_class = MyAdapter
        ...hooks...

See :class:`AdapterContract` for the hooks and docs/adapters.md for a walk-through.
Needs pytest (a test dependency, not one of the service's).
"""

from notifier.testing.contract import OMIT, SCENARIOS, AdapterContract, Outcome
from notifier.testing.helpers import (
    DEFAULT_RECIPIENTS,
    LogCapture,
    capture_logs,
    make_context,
    recipient_variants,
    run,
    sample_message,
    sample_parts,
)
from notifier.testing.http import LocalHttpServer, RecordedRequest, Reply

__all__ = [
    "DEFAULT_RECIPIENTS",
    "OMIT",
    "SCENARIOS",
    "AdapterContract",
    "LocalHttpServer",
    "LogCapture",
    "Outcome",
    "RecordedRequest",
    "Reply",
    "capture_logs",
    "make_context",
    "recipient_variants",
    "run",
    "sample_message",
    "sample_parts",
]
