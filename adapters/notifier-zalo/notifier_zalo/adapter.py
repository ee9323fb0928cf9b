"""The Zalo channel adapter: ZNS template messages to the citizen's phone.

Registered as ``zalo`` in the ``notifier.adapters`` entry-point group.

Tokens. ZNS calls carry an OA access token (about 25 hours); OAuth v4 refreshes it
with a **single-use** refresh token. The tokens live in the core's
:class:`~notifier.store.tokens.TokenStore` under ``settings.token_name``; a refresh runs
through :meth:`TokenStore.refresh`, which holds a database row lock around the call to
Zalo so only one worker anywhere spends the refresh token, and the others pick up the
result. Each adapter keeps the current token in memory (no database read per send),
refreshes it when it expires within ``refresh_margin_s``, and when Zalo still answers
-124 (token invalid) re-reads the store (another worker may have refreshed) or
refreshes once, then retries the send once.

Answers. Zalo answers HTTP 200 to failures too; the ``error`` field decides:

====================  ===================================================================
0                     sent: ``msg_id`` and the OA's daily quota go to the delivery log
-124                  access token invalid/expired: refresh once, send once more
-108 -110 -114 -118   the citizen's side (invalid phone, Zalo app too old, inactive or
-139                  blocked, no Zalo account, refused this message type): permanent,
                      no alert (the core then falls back to SMS)
-131 -132             template not approved / invalid parameter: permanent, operator alert
-115                  balance (ZBS wallet / quota) too low: permanent, operator alert,
                      code "quota"; so are ``ZaloSettings.quota_error_codes`` and errors
                      whose message says "quota"
-100                  unknown error, try again later: temporary
-133                  no sends 22:00-06:00 for this template: retry at 06:00 (Vietnam)
-249                  the template does not allow sending by user id (approved before
                      2025-12-10): permanent, no alert; the core sends ZNS by phone
other codes           permanent, operator alert (unknown: an operator should look)
HTTP 5xx, 429,        temporary, through the adapter kit's HTTP layer
timeouts, no network  (:mod:`notifier.adapter_http`): 429/5xx honour ``Retry-After``;
                      a timeout or a lost connection after the request went out is
                      ``maybe_sent`` (Zalo does not dedupe by ``tracking_id``)
====================  ===================================================================

Replies to a user's text to the OA go as the OA's consultation message within Zalo's
window after that text; once it has closed (``cs_window_s``, or -230/-234 from Zalo),
as the reply template's ZBS template by the same user id, when replies.toml gives one.

Source: Zalo's ZBS error table as cited by public clients and Zalo Cloud's
error-handling guide (see the package README and shared/providers.md).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from notifier.adapter import (
    REPLY_STATUS,
    ZALO_UID_PREFIX,
    Adapter,
    AdapterContext,
    DeliveryFailure,
    Health,
    InboundMessage,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
    Token,
    TokenGrant,
    TokenStoreError,
)
from notifier.adapter_http import AdapterHttp, request_sync, status_failure
from notifier.logging import get_logger
from notifier.masking import scrub
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile

from .params import template_data, template_id
from .receipts import parse_inbound, parse_receipt
from .settings import ZaloSettings

__all__ = ["ZaloZnsAdapter", "classify_answer", "zalo_user_id", "zns_phone"]

log = get_logger(__name__)

# Zalo's ZBS error codes, by who must act (source: the package README).
TOKEN_INVALID = -124
# The citizen's side: invalid phone, Zalo app too old, inactive/blocked, no Zalo
# account, refused this message type. Final for Zalo; the core falls back to SMS.
RECIPIENT_ERRORS: dict[int, str] = {
    -108: "the phone number is invalid",
    -110: "the citizen's Zalo app is too old for this message",
    -114: "the citizen's Zalo account is inactive or blocked the OA",
    -118: "the phone number has no Zalo account",
    -139: "the citizen refused this type of message",
}
# Our side: the template is not approved, or a parameter is invalid.
TEMPLATE_ERRORS: dict[int, str] = {
    -131: "the template is not approved",
    -132: "a template parameter is invalid",
}
# The template does not allow sending by user id (approved before 2025-12-10). Final for
# this send, and no operator alert: an alert would count against the provider's circuit
# and pause the phone sends too; the core falls back to ZNS by phone (then SMS).
UID_NOT_ALLOWED = -249
# The OA cannot pay for the message: top up the ZBS wallet (or wait for the quota).
BALANCE_TOO_LOW = -115
# "Unknown error, please try again later".
TRY_AGAIN = -100
# No sends 22:00-06:00 for this type of template.
OUTSIDE_HOURS = -133

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
# -133: this template may not be sent 22:00-06:00 (ZBS error table); the send waits
# for the next 06:00 in Vietnam.
_WINDOW_OPENS = 6
_WINDOW_CLOSES = 22
_INSIDE_WINDOW_RETRY_S = 900.0

# The OA's consultation message (reply to a user's text), from Zalo's Java SDK; the
# text limit is an assumption (2,000 characters in public clients; unverified).
CS_PATH = "/v3.0/oa/message/cs"
# ZBS Template Message to a Zalo user id, on the same OA API (see the README).
UID_TEMPLATE_PATH = "/v3.0/oa/message/template"
CS_TEXT_LIMIT = 2000
# Consultation messages refused for the window: -230 no interaction with the OA in
# the last 7 days; -234 this type cannot be sent at night (shared/providers.md).
CS_CLOSED: dict[int, str] = {
    -230: "the user has not interacted with the OA recently",
    -234: "this message type cannot be sent at night",
}

REAUTHORISE = (
    "re-authorise the OA in Zalo's developer console and run "
    "`notifier tokens set {name} --refresh-token-stdin`"
)

_PHONE_CHARS = re.compile(r"\+?[0-9 .()\-]+")


def zns_phone(recipient: str) -> str:
    """The recipient as ZNS wants it (84xxxxxxxxx), or a permanent failure.

    The reasons never contain the number.
    """
    value = recipient.strip()
    if not _PHONE_CHARS.fullmatch(value) or sum(ch.isdigit() for ch in value) > 15:
        raise PermanentFailure(
            "ZNS needs the citizen's phone number; the recipient is a Zalo user id",
            code="not_a_phone",
        )
    try:
        return parse_mobile(value).format(PhoneFormat.INTERNATIONAL)
    except InvalidPhone as exc:
        raise PermanentFailure(
            f"phone number unusable for ZNS: {exc}", code="invalid_phone"
        ) from None


_USER_ID = re.compile(r"[0-9]{1,32}")


def zalo_user_id(recipient: str) -> str | None:
    """The Zalo user id of a ``uid:<id>`` recipient (None for a phone number), or a
    permanent failure when the id is malformed. The reason never contains the id."""
    if not recipient.startswith(ZALO_UID_PREFIX):
        return None
    user_id = recipient.removeprefix(ZALO_UID_PREFIX).strip()
    if not _USER_ID.fullmatch(user_id):
        raise PermanentFailure("the Zalo user id is malformed", code="invalid_user_id")
    return user_id


def seconds_until_window(now: datetime | None = None) -> float:
    """Seconds until the sending window closed by -133 (22:00-06:00 in Vietnam) ends."""
    local = (now or datetime.now(UTC)).astimezone(VIETNAM)
    opens = local.replace(hour=_WINDOW_OPENS, minute=0, second=0, microsecond=0)
    if local.hour >= _WINDOW_CLOSES:
        opens += timedelta(days=1)
    elif local >= opens:
        # Inside the window by our clock, yet Zalo said no: the template may have a
        # narrower window, or the clocks differ. Look again a little later.
        return _INSIDE_WINDOW_RETRY_S
    return max(60.0, (opens - local).total_seconds())


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def _zalo_text(answer: dict[str, Any]) -> str:
    text = answer.get("message")
    return scrub(" ".join(str(text).split()))[:200] if text else ""


def classify_answer(answer: dict[str, Any], settings: ZaloSettings) -> SendResult:
    """A /message/template answer (HTTP 200) as a result, or the failure it means.

    -124 is handled by the caller (refresh and retry) and is temporary here.
    """
    code = _as_int(answer.get("error"))
    if code is None:
        raise TemporaryFailure("unexpected answer from Zalo: no error code")
    if code == 0:
        data = answer.get("data")
        data = data if isinstance(data, dict) else {}
        quota = data.get("quota")
        quota = quota if isinstance(quota, dict) else {}
        msg_id = data.get("msg_id")
        details: dict[str, Any] = {
            "quota_daily": _as_int(quota.get("dailyQuota")),
            "quota_remaining": _as_int(quota.get("remainingQuota")),
        }
        if settings.development_mode:
            details["mode"] = "development"
        return SendResult(
            provider_message_id=None if msg_id is None else str(msg_id), details=details
        )
    text = _zalo_text(answer)
    reason = f"Zalo error {code}" + (f": {text}" if text else "")
    if code in RECIPIENT_ERRORS:
        raise PermanentFailure(f"{RECIPIENT_ERRORS[code]} ({reason})", code=str(code))
    if code == UID_NOT_ALLOWED:
        raise PermanentFailure(
            "the template does not allow sending by Zalo user id (approved before "
            f"2025-12-10: have it approved again for UID sends) ({reason})",
            code=str(code),
        )
    if code in TEMPLATE_ERRORS:
        raise PermanentFailure(
            f"{TEMPLATE_ERRORS[code]} ({reason})", code=str(code), operator_alert=True
        )
    if code == BALANCE_TOO_LOW or code in settings.quota_error_codes or "quota" in text.lower():
        raise PermanentFailure(
            f"the OA's ZBS balance or quota is used up: top it up ({reason})",
            code="quota",
            operator_alert=True,
        )
    if code == TRY_AGAIN:
        raise TemporaryFailure(reason, code=str(code))
    if code == OUTSIDE_HOURS:
        raise TemporaryFailure(reason, code=str(code), retry_after_s=seconds_until_window())
    if code == TOKEN_INVALID:
        raise TemporaryFailure(reason, code=str(code))
    # Unknown to us: most of Zalo's other codes are about the app, the OA or the
    # request (our configuration); an operator should look at it.
    raise PermanentFailure(reason, code=str(code), operator_alert=True)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        answer = response.json()
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


class ZaloZnsAdapter(Adapter[ZaloSettings]):
    """Zalo Notification Service: approved template + parameters, to a phone number."""

    name: ClassVar[str] = "zalo"
    channel: ClassVar[str] = "zalo"
    description: ClassVar[str] = (
        "Zalo ZNS template messages (OA access token shared by all workers, "
        "signed delivery webhooks)"
    )
    settings_model = ZaloSettings
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.ZALO
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (
        TemplatePart("template_id"),
        TemplatePart("template_data"),
    )
    accepts_receipts: ClassVar[bool] = True
    # Users' texts to the OA (``user_send_text``) arrive on the same webhook.
    accepts_inbound: ClassVar[bool] = True

    def __init__(self, settings: ZaloSettings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        self._token: Token | None = None  # newest version seen, to skip a read per send
        # asyncio objects belong to the loop that runs ``send``; made on first use.
        self._http = AdapterHttp(
            context,
            "Zalo",
            timeout_s=settings.timeout_s,
            max_connections=settings.max_connections,
        )
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

    # -- receipts ------------------------------------------------------------------------

    @classmethod
    def parse_receipt(cls, settings: ZaloSettings, request: ReceiptRequest) -> list[Receipt]:
        return parse_receipt(settings, request)

    @classmethod
    def parse_inbound(cls, settings: ZaloSettings, request: ReceiptRequest) -> list[InboundMessage]:
        return parse_inbound(settings, request)

    # -- sending -------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        if message.status == REPLY_STATUS:
            return await self._consultation(message)
        return await self._send_template(message, user_id=zalo_user_id(message.recipient))

    async def _send_template(self, message: OutboundMessage, *, user_id: str | None) -> SendResult:
        """A template message: ZBS by ``user_id`` when given, else ZNS to the phone."""
        body: dict[str, Any] = {
            "template_id": template_id(message.parts),
            "template_data": template_data(message.parts, self.settings),
            "tracking_id": str(message.delivery_id),
        }
        if user_id is not None:
            # ZBS Template Message by user id (cheaper than by phone); the recipient
            # object's shape is unverified (see the package README).
            body["recipient"] = {"user_id": user_id}
            url = f"{self.settings.oa_api_url}{UID_TEMPLATE_PATH}"
        else:
            body["phone"] = zns_phone(message.recipient)
            url = f"{self.settings.base_url}/message/template"
        if self.settings.development_mode:
            body["mode"] = "development"
        token = await self._usable_token()
        answer = await self._post_message(token, body, url)
        if _as_int(answer.get("error")) == TOKEN_INVALID:
            log.info("zalo access token rejected, renewing it", version=token.version)
            token = await self._replace_rejected(token)
            answer = await self._post_message(token, body, url)
            if _as_int(answer.get("error")) == TOKEN_INVALID:
                raise TemporaryFailure(
                    "Zalo rejected a just-renewed access token", code=str(TOKEN_INVALID)
                )
        result = classify_answer(answer, self.settings)
        # Zalo prices a message by how it was addressed (notifier.costs reads this).
        details = {**result.details, "recipient": "uid" if user_id is not None else "phone"}
        return SendResult(provider_message_id=result.provider_message_id, details=details)

    async def _consultation(self, message: OutboundMessage) -> SendResult:
        """A reply to a user's text: the OA's consultation (customer-service) message,
        ``POST {oa_api_url}/v3.0/oa/message/cs`` to the user id, while Zalo's window
        after the user's message is open (``cs_window_s``); once it has closed (by our
        clock, or Zalo answers -230/-234), the reply template's ZBS template
        (``template_id`` + ``template_data``) by user id, when one is configured."""
        reference = message.in_reply_to
        if reference is None:
            raise PermanentFailure(
                "a reply without the message it answers cannot be a consultation message",
                code="cs_no_reference",
            )
        age = (datetime.now(UTC) - reference.received_at).total_seconds()
        if age > self.settings.cs_window_s:
            # Not worth a call Zalo would refuse: straight to the template, if any.
            return await self._reply_by_template(
                message,
                "Zalo's window for answering the user's message has closed",
                code="cs_window",
            )
        text = message.parts.get("text", "").strip()
        if not text:
            raise PermanentFailure("the reply template gave an empty text", code="cs_text")
        body: dict[str, Any] = {
            "recipient": {"user_id": message.recipient},
            "message": {"text": text[:CS_TEXT_LIMIT]},
        }
        token = await self._usable_token()
        answer = await self._post_message(token, body, f"{self.settings.oa_api_url}{CS_PATH}")
        if _as_int(answer.get("error")) == TOKEN_INVALID:
            token = await self._replace_rejected(token)
            answer = await self._post_message(token, body, f"{self.settings.oa_api_url}{CS_PATH}")
        code = _as_int(answer.get("error"))
        if code is not None and code in CS_CLOSED:
            # The consultation message was refused, so nothing went out: the
            # template is the reply's only send.
            return await self._reply_by_template(
                message,
                f"Zalo refused the consultation message ({CS_CLOSED[code]})",
                code=str(code),
            )
        data = answer.get("data")
        if code == 0 and isinstance(data, dict) and "msg_id" not in data:
            # The OA API names it message_id; the ZNS API msg_id.
            answer = {**answer, "data": {**data, "msg_id": data.get("message_id")}}
        result = classify_answer(answer, self.settings)
        details = {**result.details, "reply": "consultation"}
        return SendResult(provider_message_id=result.provider_message_id, details=details)

    async def _reply_by_template(
        self, message: OutboundMessage, closed: str, *, code: str
    ) -> SendResult:
        """The reply as a ZBS Template Message to the same user id, when the reply
        template carries one (``template_id``); else a permanent failure saying why."""
        if not message.parts.get("template_id", "").strip():
            raise PermanentFailure(
                f"{closed}, and the reply template has no ZBS template for Zalo "
                "(template_id and template_data in replies.toml, see the adapter README)",
                code=code,
            )
        user_id = zalo_user_id(f"{ZALO_UID_PREFIX}{message.recipient}")
        assert user_id is not None  # the prefix is there
        log.info("zalo reply window closed, replying by ZBS template", window=code)
        result = await self._send_template(message, user_id=user_id)
        details = {**result.details, "reply": "zbs_template", "window": code}
        return SendResult(provider_message_id=result.provider_message_id, details=details)

    async def _post_message(self, token: Token, body: dict[str, Any], url: str) -> dict[str, Any]:
        assert token.access_token is not None
        response = await self._http.request(
            "POST",
            url,
            json=body,
            headers={"access_token": token.access_token},
        )
        if not 200 <= response.status_code < 300:
            # Zalo answers 200 even to failures: anything else is a wrong URL or a proxy.
            raise status_failure(response, "Zalo")
        answer = _json_object(response)
        if answer is None:
            raise TemporaryFailure("unexpected answer from Zalo: not a JSON object")
        return answer

    # -- tokens --------------------------------------------------------------------------

    def _refresh_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def _remember(self, token: Token) -> Token:
        if self._token is None or token.version >= self._token.version:
            self._token = token
        return token

    async def _read_store(self) -> Token | None:
        try:
            return await asyncio.to_thread(self.context.tokens.get, self.settings.token_name)
        except TokenStoreError as exc:
            raise PermanentFailure(str(exc), code="tokens", operator_alert=True) from None
        except Exception as exc:  # the database is down or busy
            raise TemporaryFailure(f"token store unavailable: {type(exc).__name__}") from None

    def _no_tokens(self) -> PermanentFailure:
        name = self.settings.token_name
        return PermanentFailure(
            f"no Zalo tokens stored under {name!r}: " + REAUTHORISE.format(name=name),
            code="tokens",
            operator_alert=True,
        )

    async def _usable_token(self) -> Token:
        """The cached token, refreshed first when it expires within the margin."""
        token = self._token
        if token is None:
            token = await self._read_store()
            if token is None:
                raise self._no_tokens()
            self._remember(token)
        margin = self.settings.refresh_margin_s
        if token.expires_within(margin):
            token, spent = await self._refresh(token)
            if not spent and token.expires_within(margin):
                # Another worker refreshed before us, but that token is due too.
                token, _ = await self._refresh(token)
        if token.access_token is None:
            raise self._no_tokens()
        return token

    async def _replace_rejected(self, rejected: Token) -> Token:
        """After -124: a token another worker refreshed meanwhile, or a refresh of ours."""
        current = await self._read_store()
        if current is None:
            raise self._no_tokens()
        if (
            current.version > rejected.version
            and current.access_token not in (None, rejected.access_token)
            and not current.expires_within(0)
        ):
            return self._remember(current)
        token, _ = await self._refresh(current)
        if token.access_token is None:
            raise self._no_tokens()
        return token

    async def _refresh(self, stale: Token) -> tuple[Token, bool]:
        """Refresh unless someone already replaced ``stale``; True when we spent the
        refresh token ourselves."""
        async with self._refresh_lock():  # one refresh at a time in this process
            cached = self._token
            if (
                cached is not None
                and cached.version > stale.version
                and cached.access_token is not None
                and not cached.expires_within(0)
            ):
                return cached, False
            spent: list[bool] = []

            def refresher(current: Token) -> TokenGrant:
                spent.append(True)
                return self._call_refresh(current)

            try:
                # The store calls ``refresher`` under a row lock, and not at all when
                # another worker refreshed after ``stale`` was read.
                token = await asyncio.to_thread(
                    self.context.tokens.refresh,
                    self.settings.token_name,
                    refresher,
                    seen_version=stale.version,
                )
            except DeliveryFailure:
                raise
            except TokenStoreError as exc:
                raise PermanentFailure(str(exc), code="tokens", operator_alert=True) from None
            except Exception as exc:  # the database is down or busy
                raise TemporaryFailure(
                    f"token store unavailable during refresh: {type(exc).__name__}"
                ) from None
            self._remember(token)
            if spent:
                log.info(
                    "zalo access token refreshed",
                    version=token.version,
                    expires_at=None if token.expires_at is None else token.expires_at.isoformat(),
                )
            return token, bool(spent)

    def _call_refresh(self, current: Token) -> TokenGrant:
        """OAuth v4 refresh: synchronous, run by the token store under its row lock.

        A synchronous ``httpx.Client`` on the real network: the context's transport seam
        is asynchronous and cannot serve it (tests use a real local server instead).
        """
        settings = self.settings
        name = settings.token_name
        try:
            with httpx.Client(timeout=httpx.Timeout(settings.timeout_s)) as client:
                response = request_sync(
                    client,
                    "POST",
                    settings.oauth_url,
                    provider="Zalo OAuth",
                    headers={"secret_key": settings.app_secret.get_secret_value()},
                    data={
                        "refresh_token": current.refresh_token,
                        "app_id": settings.app_id,
                        "grant_type": "refresh_token",
                    },
                )
        except TemporaryFailure as exc:
            # Whatever happened to the refresh, no message went out: the send that
            # needed the token is retried like any temporary failure, never held as
            # "maybe sent". (If Zalo did refresh and its answer was lost, the new
            # single-use refresh token is lost too: the next refresh asks for
            # re-authorisation.)
            raise TemporaryFailure(
                exc.reason, code=exc.code, retry_after_s=exc.retry_after_s
            ) from None
        status = response.status_code
        answer = _json_object(response) or {}
        access_token = answer.get("access_token")
        if 200 <= status < 300 and isinstance(access_token, str) and access_token:
            refresh_token = answer.get("refresh_token")
            if not isinstance(refresh_token, str) or not refresh_token:
                log.warning("zalo refresh answer without a new refresh token; keeping the old")
                refresh_token = current.refresh_token
            expires_in = _as_int(answer.get("expires_in"))
            if expires_in is None or expires_in <= 0:
                expires_in = 3600  # Zalo says about 25 hours; assume less when it is silent
            return TokenGrant(
                access_token=access_token,
                refresh_token=refresh_token,
                expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            )
        code = _as_int(answer.get("error"))
        label = answer.get("error_name") or answer.get("message") or f"HTTP {status}"
        label = scrub(" ".join(str(label).split()))[:120]
        raise PermanentFailure(
            f"Zalo refused to refresh the access token ({label}"
            + (f", error {code}" if code is not None else "")
            + "): "
            + REAUTHORISE.format(name=name),
            code="token_refresh",
            operator_alert=True,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> Health:
        """Whether tokens are stored and when the access token expires (no Zalo call)."""
        try:
            token = await self._read_store()
        except DeliveryFailure as exc:
            return Health(ok=False, detail=exc.reason)
        name = self.settings.token_name
        if token is None:
            return Health(ok=False, detail=f"no tokens stored under {name!r}")
        self._remember(token)
        if token.access_token is None or token.expires_at is None:
            return Health(ok=True, detail="access token not fetched yet (fetched on first send)")
        return Health(
            ok=True,
            detail=f"access token version {token.version} expires {token.expires_at.isoformat()}",
        )
