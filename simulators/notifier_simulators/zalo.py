"""A local Zalo ZNS and OAuth v4 server for the demo, the tests and the benchmarks.

It serves, on 127.0.0.1 and a free port, in daemon threads (stdlib
``ThreadingHTTPServer``), so synchronous and asynchronous code alike can use it::

    with ZaloSimulator(initial_refresh_token="rt-0") as zalo:
        ...settings base_url=zalo.base_url, oauth_url=zalo.oauth_url...
        ...store "rt-0" as the refresh token...
        [sent] = zalo.wait_for(1)
        sent.phone, sent.template_id, sent.template_data, sent.tracking_id

``POST /message/template`` behaves like ZNS: HTTP 200 with an ``error`` field, -124
unless the ``access_token`` header holds the current access token, per-phone
outcomes (:meth:`not_zalo_user` -118, :meth:`blocked` -114, :meth:`invalid_phone`
-108), template refusals (:meth:`reject_template`, -131 by default), a daily quota
(:meth:`set_quota`, then :data:`QUOTA_ERROR`), any ZBS error code on demand
(:meth:`fail_next`: -100, -110, -115, -133, -139..., with the simulator's own text) and
outages (:meth:`set_outage`: HTTP 503).

``POST /v3.0/oa/message/template`` (under :attr:`ZaloSimulator.base_url`) takes the same
template message addressed ``{"recipient": {"user_id": ...}}`` (ZBS by Zalo user id),
with -249 for templates refused that way (:meth:`refuse_uid_template`). Each accepted
message records what it was billed (``charge_vnd``: ``zns_price_vnd`` by phone,
``uid_price_vnd`` by user id, nothing in development mode; :attr:`charged_vnd` in all).

``POST /v4/oa/access_token`` behaves like OAuth v4 refresh: it checks the
``secret_key`` header and ``app_id``, and refresh tokens are **single use**: each
refresh kills the one it was given and issues a new one, and a dead token is refused.
``refresh_count`` counts calls (failed ones too), so a test can prove that workers
sharing tokens refresh once. ``access_token_ttl_s`` sets the access token lifetime;
:meth:`expire_access_token` invalidates the current one at once.

:meth:`send_receipt` POSTs a signed ``user_received_message`` webhook (see
:meth:`build_receipt` for the body and signature) to a callback URL.

Inbound: :meth:`send_user_text` POSTs a signed ``user_send_text`` webhook (a citizen
writing to the OA; :meth:`build_user_text` forges or leaves out the signature), and
``POST /v3.0/oa/message/cs`` takes the OA's consultation message to a user who wrote
(-230 to anyone else), kept in :attr:`consultations`.

Error codes of failures Zalo has not documented publicly (OAuth errors) are the
simulator's own choice; the adapter must not depend on them beyond
what its settings say.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.testing.server import BackgroundHttpServer

__all__ = [
    "APP_TOO_OLD",
    "OUTSIDE_HOURS",
    "QUOTA_ERROR",
    "REFUSED_TYPE",
    "UNKNOWN_ERROR",
    "SentZns",
    "ZaloSimulator",
]

# What the simulator answers past its daily quota: -115, "balance too low" in Zalo's
# ZBS error table (the wallet/quota case; the table has no separate daily-quota code).
QUOTA_ERROR = -115
UNKNOWN_ERROR = -100
APP_TOO_OLD = -110
OUTSIDE_HOURS = -133
REFUSED_TYPE = -139
TOKEN_INVALID = -124
NOT_ZALO_USER = -118
USER_BLOCKED = -114
INVALID_PHONE = -108
TEMPLATE_NOT_APPROVED = -131
TEMPLATE_MISSING = -132
# OAuth error codes of the simulator (Zalo's own are not documented at hand).
OAUTH_INVALID_REFRESH_TOKEN = -14014
OAUTH_INVALID_APP = -14002
OAUTH_INVALID_SECRET = -14003
OAUTH_INVALID_GRANT = -14004

MESSAGE_PATH = "/message/template"
# ZBS Template Message to a Zalo user id (openapi.zalo.me in production).
UID_MESSAGE_PATH = "/v3.0/oa/message/template"
# The template does not allow sending by user id (approved before 2025-12-10).
UID_NOT_ALLOWED = -249
# The OA's consultation message (a reply to a user who wrote to the OA).
CS_PATH = "/v3.0/oa/message/cs"
NO_INTERACTION = -230
OAUTH_PATH = "/v4/oa/access_token"

_ERROR_TEXT = {
    NO_INTERACTION: "User has not interacted with the OA in the last 7 days",
    TOKEN_INVALID: "Access token is invalid or expired",
    NOT_ZALO_USER: "Zalo account does not exist",
    USER_BLOCKED: "User is inactive, rejected the message or uses an outdated Zalo app",
    INVALID_PHONE: "Phone number is invalid",
    TEMPLATE_NOT_APPROVED: "Template is not approved",
    TEMPLATE_MISSING: "Template does not exist",
    QUOTA_ERROR: "Balance is not enough to send this message",
    UNKNOWN_ERROR: "Unknown error, please try again later",
    APP_TOO_OLD: "User's Zalo version is not supported for this message",
    OUTSIDE_HOURS: "Template is not allowed to be sent at this time (22:00-06:00)",
    REFUSED_TYPE: "User has refused to receive this type of message",
    UID_NOT_ALLOWED: "Template does not support sending by user id",
}
_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class SentZns:
    """A message the simulator accepted."""

    phone: str
    template_id: str
    template_data: dict[str, Any]
    tracking_id: str | None
    msg_id: str
    mode: str | None
    access_token: str
    received_at: float
    # Sent by Zalo user id (ZBS UID; ``phone`` is then ""), and what it billed (VND).
    user_id: str | None = None
    charge_vnd: int = 0


@dataclass(frozen=True)
class SentConsultation:
    """A consultation (customer-service) message the OA sent a user: a reply."""

    user_id: str
    text: str
    message_id: str
    access_token: str
    received_at: float


@dataclass(frozen=True)
class _Failure:
    code: int
    message: str


def _canonical_phone(phone: str) -> str:
    try:
        return parse_mobile(phone).format(PhoneFormat.INTERNATIONAL)
    except InvalidPhone:
        return phone


class ZaloSimulator(BackgroundHttpServer):
    """ZNS and Zalo OAuth v4 on 127.0.0.1, keeping what it accepts in memory."""

    def __init__(
        self,
        *,
        app_id: str = "sim-app-id",
        app_secret: str = "sim-app-secret",  # noqa: S107 - a simulator's own secrets
        oa_secret_key: str = "sim-oa-secret-key",  # noqa: S107
        initial_refresh_token: str = "sim-refresh-token-0",  # noqa: S107
        oa_id: str = "sim-oa-id",
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_ttl_s: float = 90_000.0,
        daily_quota: int = 1_000_000,
        latency_s: float = 0.0,
        refresh_latency_s: float = 0.0,
        zns_price_vnd: int = 300,
        uid_price_vnd: int = 200,
    ) -> None:
        # What one message costs: to a phone (ZNS price), to a user id (cheaper).
        self.zns_price_vnd = zns_price_vnd
        self.uid_price_vnd = uid_price_vnd
        self._uid_refused: set[str] = set()
        self.app_id = app_id
        self.app_secret = app_secret
        self.oa_secret_key = oa_secret_key
        self.oa_id = oa_id
        super().__init__(host, port)
        self.access_token_ttl_s = access_token_ttl_s
        self.latency_s = latency_s
        self.refresh_latency_s = refresh_latency_s
        self._cond = threading.Condition()
        self._refresh_token: str = initial_refresh_token
        self._dead_refresh_tokens: set[str] = set()
        self._access_token: str | None = None
        self._access_expires = 0.0
        self._refresh_count = 0
        self._refresh_failures = 0
        self._messages: list[SentZns] = []
        self._consultations: list[SentConsultation] = []
        # Users who wrote to the OA: only they may get a consultation message (-230).
        self._interacted: set[str] = set()
        self._not_zalo: set[str] = set()
        self._blocked: set[str] = set()
        self._invalid: set[str] = set()
        self._templates: dict[str, int] = {}
        self._daily_quota = daily_quota
        self._used_quota = 0
        self._failures: deque[_Failure] = deque()
        self._outage = False
        self._oauth_outage = False

    # -- lifecycle -------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_class(self)

    @property
    def base_url(self) -> str:
        """What the adapter's ``base_url`` should be (ZNS paths are under it)."""
        return f"http://{self.host}:{self.port}"

    @property
    def charged_vnd(self) -> int:
        """What the OA was billed in all, in VND."""
        return sum(message.charge_vnd for message in self.messages)

    def refuse_uid_template(self, template_id: str) -> None:
        """Answer -249 to sends of this template by user id (it serves phones only)."""
        with self._cond:
            self._uid_refused.add(template_id)

    @property
    def oauth_url(self) -> str:
        """What the adapter's ``oauth_url`` should be."""
        return f"{self.base_url}{OAUTH_PATH}"

    # -- what happened ---------------------------------------------------------------

    @property
    def messages(self) -> list[SentZns]:
        """A snapshot of the accepted messages, oldest first."""
        with self._cond:
            return list(self._messages)

    @property
    def refresh_count(self) -> int:
        """Calls to the OAuth refresh endpoint, refused ones included."""
        with self._cond:
            return self._refresh_count

    @property
    def refresh_failures(self) -> int:
        with self._cond:
            return self._refresh_failures

    @property
    def current_refresh_token(self) -> str:
        """The only refresh token that works now."""
        with self._cond:
            return self._refresh_token

    @property
    def current_access_token(self) -> str | None:
        """The access token that works now (None before the first refresh or after
        :meth:`expire_access_token`)."""
        with self._cond:
            return self._valid_access_token()

    @property
    def quota_remaining(self) -> int:
        with self._cond:
            return max(0, self._daily_quota - self._used_quota)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[SentZns]:
        """Block until at least ``count`` messages were accepted; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"got {len(self._messages)} of {count} messages within {timeout:g}s"
                )
            return list(self._messages)

    # -- tokens ----------------------------------------------------------------------

    def issue_access_token(self, ttl_s: float | None = None) -> str:
        """Make a new current access token without spending the refresh token (to seed
        a test's token store with a working token)."""
        with self._cond:
            return self._new_access_token(self.access_token_ttl_s if ttl_s is None else ttl_s)

    def expire_access_token(self) -> None:
        """The current access token stops working now (-124 from the next send)."""
        with self._cond:
            self._access_token = None
            self._access_expires = 0.0

    def revoke_refresh_token(self) -> None:
        """Kill the live refresh token (as when the OA owner revokes the app)."""
        with self._cond:
            self._dead_refresh_tokens.add(self._refresh_token)
            self._refresh_token = "revoked-" + secrets.token_urlsafe(12)
            self._dead_refresh_tokens.add(self._refresh_token)

    # -- misbehaving on purpose ---------------------------------------------------------

    def not_zalo_user(self, phone: str) -> None:
        """Sends to ``phone`` get -118 (no Zalo account)."""
        with self._cond:
            self._not_zalo.add(_canonical_phone(phone))

    def blocked(self, phone: str) -> None:
        """Sends to ``phone`` get -114 (inactive, blocked the OA, outdated app)."""
        with self._cond:
            self._blocked.add(_canonical_phone(phone))

    def invalid_phone(self, phone: str) -> None:
        """Sends to ``phone`` get -108 (phone number invalid)."""
        with self._cond:
            self._invalid.add(_canonical_phone(phone))

    def reject_template(self, template_id: str, code: int = TEMPLATE_NOT_APPROVED) -> None:
        """Sends with ``template_id`` get ``code`` (-131 not approved, -132 missing)."""
        with self._cond:
            self._templates[template_id] = code

    def set_quota(self, daily: int) -> None:
        """A daily quota of ``daily`` messages from now on; past it, :data:`QUOTA_ERROR`."""
        with self._cond:
            self._daily_quota = daily
            self._used_quota = 0

    def fail_next(self, n: int = 1, code: int = OUTSIDE_HOURS, message: str | None = None) -> None:
        """Answer the next ``n`` sends (with a valid token) with error ``code``."""
        with self._cond:
            text = message if message is not None else _ERROR_TEXT.get(code, "Simulated error")
            self._failures.extend(_Failure(code, text) for _ in range(n))

    def set_outage(self, down: bool = True) -> None:
        """ZNS sends get HTTP 503 while ``down``."""
        with self._cond:
            self._outage = down

    def set_oauth_outage(self, down: bool = True) -> None:
        """OAuth refreshes get HTTP 503 while ``down`` (not counted as spending a token)."""
        with self._cond:
            self._oauth_outage = down

    @property
    def consultations(self) -> list[SentConsultation]:
        """A snapshot of the consultation messages (replies to users), oldest first."""
        with self._cond:
            return list(self._consultations)

    def wait_for_consultations(self, count: int, timeout: float = 5.0) -> list[SentConsultation]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._consultations) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self._consultations)

    # -- a user's text to the OA (inbound) -----------------------------------------------

    def build_user_text(
        self,
        user_id: str,
        text: str,
        *,
        msg_id: str | None = None,
        timestamp_ms: int | None = None,
        secret: str | None = None,
        signed: bool = True,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a ``user_send_text`` webhook: ``user_id`` wrote
        ``text`` to the OA. ``secret`` forges the signature; ``signed=False`` leaves the
        header out. The user then may be answered by consultation message."""
        timestamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        document = {
            "app_id": self.app_id,
            "user_id_by_app": f"app-{user_id}",
            "event_name": "user_send_text",
            "timestamp": timestamp,
            "sender": {"id": user_id},
            "recipient": {"id": self.oa_id},
            "message": {"msg_id": msg_id or uuid.uuid4().hex, "text": text},
        }
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-ZEvent-Signature"] = "mac=" + self.webhook_signature(
                body, timestamp, secret=secret
            )
        with self._cond:
            self._interacted.add(user_id)
        return body, headers

    def send_user_text(
        self, webhook_url: str, user_id: str, text: str, *, timeout: float = 5.0, **options: Any
    ) -> httpx.Response:
        """POST a signed ``user_send_text`` webhook to ``webhook_url`` (options: see
        :meth:`build_user_text`) and return the answer."""
        body, headers = self.build_user_text(user_id, text, **options)
        return httpx.post(webhook_url, content=body, headers=headers, timeout=timeout)

    # -- delivery webhooks ------------------------------------------------------------

    def webhook_signature(
        self,
        body: bytes,
        timestamp: str,
        *,
        signer_id: str | None = None,
        secret: str | None = None,
    ) -> str:
        """sha256(app id + body + timestamp + OA secret key), hex."""
        signer = self.app_id if signer_id is None else signer_id
        key = self.oa_secret_key if secret is None else secret
        digest = hashlib.sha256(signer.encode() + body + timestamp.encode() + key.encode())
        return digest.hexdigest()

    def build_receipt(
        self,
        tracking_id: str,
        *,
        msg_id: str | None = None,
        phone: str | None = None,
        timestamp_ms: int | None = None,
        delivery_time_ms: int | None = None,
        event_name: str = "user_received_message",
        secret: str | None = None,
        mac_prefix: bool = True,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a ``user_received_message`` webhook.

        ``msg_id`` and ``phone`` default to those of the accepted message with this
        tracking id. ``secret`` overrides the OA secret key (to forge a bad signature).
        """
        sent = next((m for m in self.messages if m.tracking_id == tracking_id), None)
        now_ms = int(time.time() * 1000)
        timestamp = str(now_ms if timestamp_ms is None else timestamp_ms)
        document = {
            "app_id": self.app_id,
            "sender": {"id": self.oa_id},
            "recipient": {"id": phone or (sent.phone if sent else "84900000000")},
            "event_name": event_name,
            "message": {
                "msg_id": msg_id or (sent.msg_id if sent else uuid.uuid4().hex),
                "tracking_id": tracking_id,
                "delivery_time": str(now_ms if delivery_time_ms is None else delivery_time_ms),
            },
            "timestamp": timestamp,
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        mac = self.webhook_signature(body, timestamp, secret=secret)
        headers = {
            "Content-Type": "application/json",
            "X-ZEvent-Signature": f"mac={mac}" if mac_prefix else mac,
        }
        return body, headers

    def send_receipt(
        self, callback_url: str, tracking_id: str, *, timeout: float = 5.0, **options: Any
    ) -> httpx.Response:
        """POST a signed delivery webhook to ``callback_url`` (options: see
        :meth:`build_receipt`) and return the answer."""
        body, headers = self.build_receipt(tracking_id, **options)
        return httpx.post(callback_url, content=body, headers=headers, timeout=timeout)

    # -- called on server threads ------------------------------------------------------

    def _valid_access_token(self) -> str | None:
        if self._access_token is None or time.time() >= self._access_expires:
            return None
        return self._access_token

    def _new_access_token(self, ttl_s: float) -> str:
        self._access_token = "sim-at-" + secrets.token_urlsafe(24)
        self._access_expires = time.time() + ttl_s
        return self._access_token

    def _handle_send(
        self, headers: dict[str, str], body: bytes, *, by_uid: bool = False
    ) -> tuple[int, dict[str, Any]]:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        with self._cond:
            if self._outage:
                return 503, {"error": -1, "message": "Service Unavailable"}
            try:
                request = json.loads(body)
            except ValueError:
                return 200, {"error": -122, "message": "Body is not valid JSON"}
            if not isinstance(request, dict):
                return 200, {"error": -122, "message": "Body is not a JSON object"}
            token = headers.get("access_token")
            if token is None or token != self._valid_access_token():
                return 200, _error(TOKEN_INVALID)
            if self._failures:
                failure = self._failures.popleft()
                return 200, {"error": failure.code, "message": failure.message}
            user_id: str | None = None
            if by_uid:
                recipient = request.get("recipient")
                user_id = recipient.get("user_id") if isinstance(recipient, dict) else None
                if not isinstance(user_id, str) or not user_id.isdigit():
                    return 200, {"error": -201, "message": "user_id is invalid"}
                phone = ""
                if user_id in self._not_zalo or user_id in self._blocked:
                    return 200, _error(USER_BLOCKED)
            else:
                given = request.get("phone")
                phone = given if isinstance(given, str) else ""
                if (
                    not isinstance(given, str)
                    or len(phone) != 11
                    or not phone.startswith("84")
                    or not phone.isdigit()
                    or phone in self._invalid
                ):
                    return 200, _error(INVALID_PHONE)
                if phone in self._not_zalo:
                    return 200, _error(NOT_ZALO_USER)
                if phone in self._blocked:
                    return 200, _error(USER_BLOCKED)
            template_id = request.get("template_id")
            if not isinstance(template_id, str) or not template_id.isdigit():
                return 200, _error(TEMPLATE_MISSING)
            if template_id in self._templates:
                return 200, _error(self._templates[template_id])
            if by_uid and template_id in self._uid_refused:
                return 200, _error(UID_NOT_ALLOWED)
            data = request.get("template_data")
            if not isinstance(data, dict):
                return 200, {"error": -112, "message": "template_data is invalid"}
            if self._used_quota >= self._daily_quota:
                return 200, _error(QUOTA_ERROR)
            self._used_quota += 1
            tracking_id = request.get("tracking_id")
            mode = request.get("mode")
            sent = SentZns(
                phone=phone,
                template_id=template_id,
                template_data=data,
                tracking_id=str(tracking_id) if tracking_id is not None else None,
                msg_id=uuid.uuid4().hex,
                mode=str(mode) if mode is not None else None,
                access_token=token,
                received_at=time.time(),
                user_id=user_id,
                charge_vnd=0
                if mode == "development"
                else (self.uid_price_vnd if by_uid else self.zns_price_vnd),
            )
            self._messages.append(sent)
            self._cond.notify_all()
            return 200, {
                "error": 0,
                "message": "Success",
                "data": {
                    "msg_id": sent.msg_id,
                    "sent_time": str(int(sent.received_at * 1000)),
                    "quota": {
                        "dailyQuota": str(self._daily_quota),
                        "remainingQuota": str(self._daily_quota - self._used_quota),
                    },
                },
            }

    def _handle_consultation(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v3.0/oa/message/cs``: a text to a user who wrote to the OA."""
        with self._cond:
            if self._outage:
                return 503, {"error": -1, "message": "Service Unavailable"}
            try:
                request = json.loads(body)
            except ValueError:
                return 200, {"error": -201, "message": "Body is not valid JSON"}
            token = headers.get("access_token")
            if token is None or token != self._valid_access_token():
                return 200, _error(TOKEN_INVALID)
            recipient = request.get("recipient") if isinstance(request, dict) else None
            message = request.get("message") if isinstance(request, dict) else None
            user_id = recipient.get("user_id") if isinstance(recipient, dict) else None
            text = message.get("text") if isinstance(message, dict) else None
            if not isinstance(user_id, str) or not isinstance(text, str) or not text:
                return 200, {"error": -201, "message": "Parameters are invalid"}
            if user_id not in self._interacted:
                return 200, {"error": NO_INTERACTION, "message": _ERROR_TEXT[NO_INTERACTION]}
            sent = SentConsultation(
                user_id=user_id,
                text=text,
                message_id=uuid.uuid4().hex,
                access_token=token,
                received_at=time.time(),
            )
            self._consultations.append(sent)
            self._cond.notify_all()
            return 200, {
                "error": 0,
                "message": "Success",
                "data": {"message_id": sent.message_id, "user_id": user_id},
            }

    def _handle_refresh(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if self.refresh_latency_s > 0:
            time.sleep(self.refresh_latency_s)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        with self._cond:
            self._refresh_count += 1
            if self._oauth_outage:
                self._refresh_failures += 1
                return 503, {"error": -1, "message": "Service Unavailable"}
            problem: tuple[int, str] | None = None
            if headers.get("secret_key") != self.app_secret:
                problem = (OAUTH_INVALID_SECRET, "Invalid secret key")
            elif form.get("app_id") != self.app_id:
                problem = (OAUTH_INVALID_APP, "Invalid app_id")
            elif form.get("grant_type") != "refresh_token":
                problem = (OAUTH_INVALID_GRANT, "Invalid grant_type")
            elif form.get("refresh_token") != self._refresh_token:
                used = form.get("refresh_token") in self._dead_refresh_tokens
                problem = (
                    OAUTH_INVALID_REFRESH_TOKEN,
                    "Refresh token was already used" if used else "Invalid refresh token",
                )
            if problem is not None:
                self._refresh_failures += 1
                return 200, {
                    "error": problem[0],
                    "error_name": problem[1],
                    "error_reason": problem[1],
                    "error_description": problem[1],
                }
            self._dead_refresh_tokens.add(self._refresh_token)
            self._refresh_token = "sim-rt-" + secrets.token_urlsafe(24)
            access_token = self._new_access_token(self.access_token_ttl_s)
            return 200, {
                "access_token": access_token,
                "refresh_token": self._refresh_token,
                # Zalo sends it as a string of seconds.
                "expires_in": str(int(self.access_token_ttl_s)),
            }


def _error(code: int) -> dict[str, Any]:
    return {"error": code, "message": _ERROR_TEXT.get(code, "Simulated error")}


def _handler_class(simulator: ZaloSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # small writes, no delayed-ACK wait
        protocol_version = "HTTP/1.1"  # keep-alive, as the adapter's pool expects
        server_version = "ZaloSimulator/1"
        timeout = 30  # an idle keep-alive connection is closed after this

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._answer(413, {"error": -1, "message": "Request too large"})
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = urlsplit(self.path).path.rstrip("/")
            if path == MESSAGE_PATH:
                status, answer = simulator._handle_send(headers, body)
            elif path == UID_MESSAGE_PATH:
                status, answer = simulator._handle_send(headers, body, by_uid=True)
            elif path == CS_PATH:
                status, answer = simulator._handle_consultation(headers, body)
            elif path == OAUTH_PATH:
                status, answer = simulator._handle_refresh(headers, body)
            else:
                status, answer = 404, {"error": -1, "message": "Not Found"}
            self._answer(status, answer)

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(ConnectionError):
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: request lines may be noisy in test output

    return Handler
