"""notifier-zalo: the Zalo Notification Service (ZNS) channel adapter for notifier.

Installed, it registers :class:`ZaloZnsAdapter` as ``zalo`` in the ``notifier.adapters``
entry-point group; configure it with ``NOTIFIER_ADAPTERS__ZALO__*`` (see
:class:`ZaloSettings`) and store the OA's refresh token with
``notifier tokens set zalo --refresh-token-stdin``.
"""

from .adapter import ZaloZnsAdapter, classify_answer, zns_phone
from .receipts import parse_receipt, signature
from .settings import ZaloSettings

__all__ = [
    "ZaloSettings",
    "ZaloZnsAdapter",
    "classify_answer",
    "parse_receipt",
    "signature",
    "zns_phone",
]
