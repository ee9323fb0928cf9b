"""SMS brandname gateway adapters for notifier, one module per gateway.

- :mod:`notifier_sms.esms`: eSMS.vn (``esms``), idempotent by RequestId, receipts.
- :mod:`notifier_sms.speedsms`: SpeedSMS (``speedsms``), no receipts.
- :mod:`notifier_sms.generic`: a configurable HTTP gateway (``http_sms``).
- :mod:`notifier_sms.base`: what they share (text, segments, phone, HTTP errors).
"""

from notifier_sms.base import GatewayAccepted, PreparedSms, SmsAdapterBase, SmsSettings
from notifier_sms.esms import EsmsAdapter, EsmsSettings
from notifier_sms.generic import HttpSmsAdapter, HttpSmsSettings
from notifier_sms.speedsms import SpeedSmsAdapter, SpeedSmsSettings

__all__ = [
    "EsmsAdapter",
    "EsmsSettings",
    "GatewayAccepted",
    "HttpSmsAdapter",
    "HttpSmsSettings",
    "PreparedSms",
    "SmsAdapterBase",
    "SmsSettings",
    "SpeedSmsAdapter",
    "SpeedSmsSettings",
]
