"""notifier-webhook: the ``app_push`` channel, signed JSON webhooks to a province's own app.

Installed, it registers :class:`WebhookAdapter` as ``webhook`` in the
``notifier.adapters`` entry-point group; configure it with
``NOTIFIER_ADAPTERS__WEBHOOK__URL`` and ``..._SECRET`` (see :class:`WebhookSettings`).
"""

from .adapter import WebhookAdapter, payload
from .settings import WebhookSettings
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, BadSignature, sign, verify

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "BadSignature",
    "WebhookAdapter",
    "WebhookSettings",
    "payload",
    "sign",
    "verify",
]
