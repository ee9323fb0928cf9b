"""Local stand-ins for the eSMS.vn and SpeedSMS HTTP APIs, for the tests, the demo and
the benchmarks.

Each simulator serves the gateway's real paths, field names and result codes on
127.0.0.1 (a free port by default), so an adapter tested against it works against
the real service with only its settings changed (``base_url``, keys)::

    with EsmsSimulator(api_key="k", secret_key="s") as esms:
        ...settings: base_url=esms.base_url, api_key="k", secret_key="s"...
        [sms] = esms.wait_for(1)
        sms.phone, sms.content, sms.request_id, sms.is_unicode
        esms.send_report(sms)                  # eSMS's delivery-report GET to CallbackUrl

They run a threading HTTP server (``http.server``) in a daemon thread: concurrent
requests are served concurrently, and plain synchronous code can drive them.

Misbehaving on purpose, per simulator:

- :meth:`~_GatewaySimulator.fail_next` answers the next ``n`` send requests with a
  gateway result code (eSMS ``CodeResult`` such as ``"103"``, SpeedSMS ``code`` such
  as ``"300"``); :meth:`~_GatewaySimulator.fail_phone` does it for one number, always;
- :meth:`~_GatewaySimulator.fail_next_http` answers raw HTTP errors (500, 502, 429
  with ``Retry-After``...), :meth:`~_GatewaySimulator.set_outage` answers 503 to
  everything, :meth:`~_GatewaySimulator.throttle` answers 429 beyond a rate per
  second, :meth:`~_GatewaySimulator.set_latency` slows every answer down;
- credentials are checked (eSMS: 101; SpeedSMS: HTTP 401), eSMS refuses a RequestId
  it already accepted during the run (124), and an unregistered brandname (104)
  when ``brandnames`` is given.

:meth:`~_GatewaySimulator.accepted_per_second` counts accepted messages per wall-clock
second, so a benchmark can measure the send rate the gateway saw.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from notifier.masking import mask_recipient
from notifier.phones import MobileNumber
from notifier.testing.server import BackgroundHttpServer, TrackingHttpServer
from notifier.text import sms_length

__all__ = [
    "ESMS_MESSAGES",
    "SPEEDSMS_MESSAGES",
    "EsmsSimulator",
    "ReceivedRequest",
    "SentSms",
    "SpeedSmsSimulator",
]

_START_TIMEOUT_S = 5.0
_PHONE = re.compile(r"(?:0|84|\+84)(\d{9})")

# Error texts as the gateways word them (where known), for the programmed failures.
ESMS_MESSAGES: dict[str, str] = {
    "99": "Phone is blocked",
    "101": "Authorize Failed",
    "102": "Price list not found",
    "103": "Balance not enough to send message",
    "104": "Brand name code is not exist",
    "108": "Phone number is invalid",
    "118": "Message type is invalid",
    "124": "Request exist 1",
    "140": "IP is not in whitelist",
    "143": "Account is locked",
    "146": "Sai template Brandname CSKH",
    "177": "Telco is not registered for the brandname",
    "201": "Content contains a blocked keyword",
    "300": "Message type is missing",
}
SPEEDSMS_MESSAGES: dict[str, str] = {
    "007": "IP locked",
    "008": "account locked",
    "009": "account not allowed to call API",
    "101": "invalid or missing parameters",
    "105": "phone number invalid",
    "110": "not support content encoding",
    "113": "content too long",
    "300": "account balance not enough",
    "500": "internal error, please try again",
}
# eSMS callback telcoid by carrier.
_TELCO_IDS = {
    "viettel": "1",
    "mobifone": "2",
    "vinaphone": "3",
    "vietnamobile": "4",
    "gmobile": "5",
    "itel": "6",
    "reddi": "7",
}


@dataclass(frozen=True)
class SentSms:
    """One message a simulator accepted (one per recipient)."""

    gateway: str  # "esms" or "speedsms"
    provider_id: str  # eSMS SMSID, SpeedSMS tranId
    phone: str  # as the client sent it: 0901888484 (eSMS), 84901888484 (SpeedSMS)
    content: str
    brandname: str
    request_id: str | None  # eSMS RequestId (notifier's delivery id)
    is_unicode: bool  # eSMS IsUnicode == "1"; SpeedSMS: the content is not GSM-7
    sms_type: str
    sandbox: bool
    callback_url: str | None
    accepted_at: float  # epoch seconds
    # What the gateway billed for it: segments times its price for the carrier (VND;
    # 0 in the sandbox). The figure a cost report must match to the dong.
    segments: int = 1
    charge_vnd: int = 0

    @property
    def national_phone(self) -> str:
        match = _PHONE.fullmatch(self.phone)
        return "0" + match.group(1) if match else self.phone


@dataclass(frozen=True)
class ReceivedRequest:
    """Any HTTP request the simulator received (including refused ones)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, document: Any, status: int = 200, **headers: str) -> _Answer:
        body = json.dumps(document, ensure_ascii=False).encode()
        return cls(status, body, {"Content-Type": "application/json; charset=utf-8", **headers})

    @classmethod
    def of_text(cls, status: int, text: str, **headers: str) -> _Answer:
        return cls(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **headers})


_Route = Callable[["ReceivedRequest"], "_Answer"]


@dataclass
class _Queued:
    remaining: int
    value: Any


class _Handler(BaseHTTPRequestHandler):
    # Answers go out as several small writes; without TCP_NODELAY each waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive, as the real gateways do
    timeout = 60  # idle keep-alive connections are closed after this
    server_version = "notifier-sms-simulator"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = ReceivedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            received_at=time.time(),
        )
        simulator = cast(TrackingHttpServer, self.server).owner
        try:
            answer = simulator._dispatch(request)
        except Exception as exc:  # a simulator bug: answer 500 rather than hang up
            answer = _Answer.of_text(500, f"simulator error: {type(exc).__name__}")
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Paths and bodies may hold phone numbers and keys: log nothing.
        return


class _GatewaySimulator(BackgroundHttpServer):
    """What both simulators share: the server, the records and the failure knobs."""

    gateway: ClassVar[str] = ""
    path_prefix: ClassVar[str] = ""  # part of base_url, like the real service's

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_s: float = 0.0) -> None:
        super().__init__(host, port)
        self._cond = threading.Condition()
        self._latency_s = latency_s
        self._messages: list[SentSms] = []
        self._received: list[ReceivedRequest] = []
        self._failures: deque[_Queued] = deque()
        self._http_failures: deque[_Queued] = deque()
        self._phone_codes: dict[str, str] = {}
        self._outage: tuple[bool, float | None] = (False, None)
        self._rate: tuple[int | None, float] = (None, 1.0)
        self._window: tuple[int, int] = (0, 0)  # (second, requests admitted in it)

    # -- lifecycle -------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        """What to put in the adapter's ``base_url`` setting."""
        return f"http://{self.host}:{self.port}{self.path_prefix}"

    # -- what was received -----------------------------------------------------------

    @property
    def messages(self) -> list[SentSms]:
        """Accepted messages so far, oldest first (a snapshot)."""
        with self._cond:
            return list(self._messages)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every HTTP request received, refused ones included (a snapshot)."""
        with self._cond:
            return list(self._received)

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._received)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[SentSms]:
        """Block until at least ``count`` messages were accepted; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"got {len(self._messages)} of {count} messages within {timeout:g}s"
                )
            return list(self._messages)

    def accepted_per_second(self) -> dict[int, int]:
        """Accepted messages per wall-clock second (epoch seconds), oldest first."""
        with self._cond:
            counts = Counter(int(message.accepted_at) for message in self._messages)
        return dict(sorted(counts.items()))

    def peak_rate(self) -> int:
        """The most messages accepted within one wall-clock second."""
        return max(self.accepted_per_second().values(), default=0)

    def reset(self) -> None:
        """Forget messages, requests, programmed failures, throttling and outage."""
        with self._cond:
            self._messages.clear()
            self._received.clear()
            self._failures.clear()
            self._http_failures.clear()
            self._phone_codes.clear()
            self._outage = (False, None)
            self._rate = (None, 1.0)
            self._window = (0, 0)
            self._reset_gateway()

    def _reset_gateway(self) -> None:
        """Gateway-specific state to forget on reset (called under the lock)."""

    # -- misbehaving on purpose -------------------------------------------------------

    def fail_next(self, n: int = 1, code: str | int = "", message: str | None = None) -> None:
        """Answer the next ``n`` send requests (with valid credentials) with the gateway
        result ``code`` instead of accepting them."""
        code = str(code)
        if not code:
            raise ValueError("give the gateway result code to answer, e.g. '103'")
        with self._cond:
            if n > 0:
                self._failures.append(_Queued(n, (code, message)))

    def fail_next_http(
        self, n: int = 1, status: int = 503, *, retry_after: float | str | None = None
    ) -> None:
        """Answer the next ``n`` requests with a bare HTTP ``status`` (and Retry-After)."""
        if not 300 <= status <= 599:
            raise ValueError("status must be an HTTP error status (3xx-5xx)")
        with self._cond:
            if n > 0:
                self._http_failures.append(_Queued(n, (status, retry_after)))

    def fail_phone(self, phone: str, code: str | int | None) -> None:
        """Always answer ``code`` for this number (any form); ``None`` stops it."""
        national = _national(phone)
        if national is None:
            raise ValueError("not a Vietnamese mobile number form the gateway takes")
        with self._cond:
            if code is None:
                self._phone_codes.pop(national, None)
            else:
                self._phone_codes[national] = str(code)

    def set_outage(self, on: bool = True, *, retry_after: float | None = None) -> None:
        """While on, every request is answered HTTP 503 (with Retry-After if given)."""
        with self._cond:
            self._outage = (on, retry_after)

    def set_latency(self, seconds: float) -> None:
        """Wait this long before answering each request (timeouts, slow gateways)."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._cond:
            self._latency_s = seconds

    def throttle(self, rate_per_s: int | None, *, retry_after_s: float = 1.0) -> None:
        """Admit at most ``rate_per_s`` requests per wall-clock second; answer the rest
        HTTP 429 with ``Retry-After``. ``None`` lifts the limit."""
        if rate_per_s is not None and rate_per_s < 0:
            raise ValueError("rate_per_s cannot be negative")
        with self._cond:
            self._rate = (rate_per_s, retry_after_s)
            self._window = (0, 0)

    # -- serving (handler threads) ---------------------------------------------------

    def _dispatch(self, request: ReceivedRequest) -> _Answer:
        with self._cond:
            self._received.append(request)
            latency = self._latency_s
        if latency > 0:
            time.sleep(latency)
        with self._cond:
            outage, outage_retry = self._outage
            if outage:
                headers = {} if outage_retry is None else {"Retry-After": _header(outage_retry)}
                return _Answer.of_text(503, "Service Unavailable", **headers)
            if self._http_failures:
                status, retry_after = _take(self._http_failures)
                headers = {} if retry_after is None else {"Retry-After": _header(retry_after)}
                return _Answer.of_text(status, f"simulated HTTP {status}", **headers)
            rate, retry_after_s = self._rate
            if rate is not None:
                second = int(time.time())
                window_second, admitted = self._window
                if window_second != second:
                    admitted = 0
                if admitted >= rate:
                    self._window = (second, admitted)
                    return _Answer.of_text(
                        429, "Too Many Requests", **{"Retry-After": _header(retry_after_s)}
                    )
                self._window = (second, admitted + 1)
        refusal = self._over_limit()
        if refusal is not None:
            return refusal
        route = self._route(request)
        if route is None:
            return _Answer.of_text(404, "Not Found")
        return route(request)

    def _over_limit(self) -> _Answer | None:
        """The gateway's own request limit: an answer refusing this request, or None."""
        return None

    @abc.abstractmethod
    def _route(self, request: ReceivedRequest) -> _Route | None:
        """The handler for a request, or None for 404."""

    def _take_failure(self) -> tuple[str, str | None] | None:
        with self._cond:
            if not self._failures:
                return None
            code, message = _take(self._failures)
            return str(code), message

    def _phone_code(self, national: str) -> str | None:
        with self._cond:
            return self._phone_codes.get(national)

    def _accept(self, message: SentSms) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    @property
    def charged_vnd(self) -> int:
        """What the gateway billed in all, in VND (each accepted message's charge)."""
        return sum(message.charge_vnd for message in self.messages)


class EsmsSimulator(_GatewaySimulator):
    """eSMS.vn's REST API: ``SendMultipleMessage_V4_post_json`` and ``GetBalance_json``.

    ``brandnames``: the registered ones (104 for others); None takes any.
    ``auto_report_after_s``: after accepting a message with a CallbackUrl, send it a
    delivered report after this delay (the demo); None (default) sends none unless
    :meth:`send_report` is called.
    """

    gateway: ClassVar[str] = "esms"
    path_prefix: ClassVar[str] = ""
    # VND per segment by carrier (a CSKH brandname price list's shape; the figures are
    # the simulator's own): what it bills and reports as TotalPrice.
    DEFAULT_PRICES: ClassVar[dict[str, int]] = {
        "viettel": 860,
        "mobifone": 750,
        "vinaphone": 780,
        "vietnamobile": 700,
        "gmobile": 700,
        "reddi": 700,
        "itel": 700,
        "unknown": 900,
    }
    SEND_PATH: ClassVar[str] = "/MainService.svc/json/SendMultipleMessage_V4_post_json"
    BALANCE_PATH: ClassVar[str] = "/MainService.svc/json/GetBalance_json"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = "sim-api-key",
        secret_key: str = "sim-secret-key",  # noqa: S107 - the simulator's own
        brandnames: set[str] | frozenset[str] | None = None,
        balance: int = 1_000_000,
        latency_s: float = 0.0,
        auto_report_after_s: float | None = None,
        prices: dict[str, int] | None = None,
    ) -> None:
        super().__init__(host, port, latency_s=latency_s)
        self.prices = dict(self.DEFAULT_PRICES if prices is None else prices)
        self.api_key = api_key
        self.secret_key = secret_key
        self.brandnames = None if brandnames is None else frozenset(brandnames)
        self.balance = balance
        self.auto_report_after_s = auto_report_after_s
        self._request_ids: set[str] = set()
        self._invalid_requests = 0
        self.report_errors: list[str] = []  # auto reports that failed (type names)

    def _reset_gateway(self) -> None:
        self._request_ids.clear()
        self._invalid_requests = 0
        self.report_errors.clear()

    def fail_next_invalid_request(self, n: int = 1) -> None:
        """Answer the next ``n`` send requests ``{"error": "Invalid request"}``, eSMS's
        answer to a request it cannot read (no CodeResult)."""
        with self._cond:
            self._invalid_requests += n

    def _route(self, request: ReceivedRequest) -> _Route | None:
        path = request.path.rstrip("/")
        if request.method == "POST" and path == self.SEND_PATH:
            return self._send
        if request.method == "POST" and path == self.BALANCE_PATH:
            return self._balance
        return None

    @staticmethod
    def _code(code: str, message: str | None = None, **extra: Any) -> _Answer:
        return _Answer.of_json(
            {
                "CodeResult": code,
                "CountRegenerate": 0,
                "ErrorMessage": message or ESMS_MESSAGES.get(code, "Simulated failure"),
                **extra,
            }
        )

    def _authorised(self, document: dict[str, Any]) -> bool:
        return (document.get("ApiKey"), document.get("SecretKey")) == (
            self.api_key,
            self.secret_key,
        )

    def _send(self, request: ReceivedRequest) -> _Answer:
        document = _json_object(request)
        if document is None:
            return _Answer.of_json({"error": "Invalid request"})
        if not self._authorised(document):
            return self._code("101")
        with self._cond:
            invalid, self._invalid_requests = (
                self._invalid_requests > 0,
                max(0, self._invalid_requests - 1),
            )
        if invalid:
            return _Answer.of_json({"error": "Invalid request"})
        failure = self._take_failure()
        if failure is not None:
            return self._code(*failure)
        fields = [document.get(k) for k in ("Phone", "Content", "Brandname", "SmsType")]
        if not all(isinstance(v, str) and v for v in fields):
            return _Answer.of_json({"error": "Invalid request"})
        phone, content, brandname, sms_type = (str(v) for v in fields)
        if self.brandnames is not None and brandname not in self.brandnames:
            return self._code("104")
        national = _national(phone)
        if national is None:
            return self._code("108")
        code = self._phone_code(national)
        if code is not None:
            return self._code(code)
        request_id = document.get("RequestId")
        request_id = str(request_id) if request_id not in (None, "") else None
        if request_id is not None and len(request_id) > 50:
            return _Answer.of_json({"error": "Invalid request"})
        callback = document.get("CallbackUrl")
        sandbox = str(document.get("Sandbox", "0")) == "1"
        segments = sms_length(content).segments
        carrier = MobileNumber(national[1:]).carrier
        per_segment = self.prices.get(carrier, self.prices.get("unknown", 0))
        message = SentSms(
            gateway=self.gateway,
            provider_id=uuid.uuid4().hex,
            phone=phone,
            content=content,
            brandname=brandname,
            request_id=request_id,
            is_unicode=str(document.get("IsUnicode", "0")) == "1",
            sms_type=sms_type,
            sandbox=sandbox,
            callback_url=callback if isinstance(callback, str) and callback else None,
            accepted_at=time.time(),
            segments=segments,
            charge_vnd=0 if sandbox else segments * per_segment,
        )
        with self._cond:  # check and record at once: concurrent duplicates get one 124
            if request_id is not None:
                if request_id in self._request_ids:
                    return self._code("124", SendStatus="5")
                self._request_ids.add(request_id)
            self._messages.append(message)
            self._cond.notify_all()
        if self.auto_report_after_s is not None and message.callback_url is not None:
            timer = threading.Timer(self.auto_report_after_s, self._auto_report, (message,))
            timer.daemon = True
            timer.start()
        return _Answer.of_json(
            {"CodeResult": "100", "CountRegenerate": 0, "SMSID": message.provider_id}
        )

    def _balance(self, request: ReceivedRequest) -> _Answer:
        document = _json_object(request)
        if document is None:
            return _Answer.of_json({"error": "Invalid request"})
        if not self._authorised(document):
            return _Answer.of_json(
                {"Balance": 0, "CodeResponse": "101", "ErrorMessage": "Authorize Failed"}
            )
        return _Answer.of_json({"Balance": self.balance, "CodeResponse": "100", "UserID": 9999})

    # -- delivery reports --------------------------------------------------------------

    def find(self, reference: str) -> SentSms:
        """The accepted message with this SMSID or RequestId."""
        for message in self.messages:
            if reference in (message.provider_id, message.request_id):
                return message
        raise KeyError("no accepted message has that SMSID or RequestId")

    def report_params(
        self,
        message: SentSms,
        *,
        send_status: int = 5,
        success: int | None = None,
        failed: int | None = None,
    ) -> dict[str, str]:
        """The query parameters of eSMS's delivery-report callback for ``message``."""
        if success is None:
            success = 1 if send_status == 5 and not failed else 0
        if failed is None:
            failed = 0
        national = message.national_phone
        carrier = MobileNumber(national[1:]).carrier if len(national) == 10 else "unknown"
        return {
            "SMSID": message.provider_id,
            "SendFailed": str(failed),
            "SendStatus": str(send_status),
            "SendSuccess": str(success),
            # What it billed: the message's charge once delivered, nothing otherwise.
            "TotalPrice": f"{message.charge_vnd if success else 0:.4f}",
            "TotalReceiver": "1",
            "TotalSent": "1" if send_status == 5 else "0",
            "RequestId": message.request_id or "",
            "TypeId": message.sms_type,
            "telcoid": _TELCO_IDS.get(carrier, "0"),
            "phonenumber": national,
            "switchsmsid": "",
        }

    def send_report(
        self,
        message: SentSms | str,
        *,
        send_status: int = 5,
        success: int | None = None,
        failed: int | None = None,
        url: str | None = None,
        timeout: float = 5.0,
    ) -> httpx.Response:
        """Call the message's CallbackUrl (or ``url``) as eSMS does: HTTP GET with the
        report as a query string appended to the URL, the way the samples in eSMS's
        docs show it (``https://{{yourportalreceivecallback}}?SMSID=...``). A URL that
        already has a query (the deprecated ``?token=``) gets ``&...`` instead.

        ``message``: an accepted :class:`SentSms`, or its SMSID or RequestId. By default
        a delivered report (SendStatus 5, SendSuccess 1); ``send_status=4`` rejected,
        ``failed=1`` undelivered, ``send_status`` 1/2/7 in progress.
        """
        sent = self.find(message) if isinstance(message, str) else message
        target = url or sent.callback_url
        if target is None:
            raise ValueError("the message has no CallbackUrl; pass url=")
        params = self.report_params(sent, send_status=send_status, success=success, failed=failed)
        full_url = target + ("&" if "?" in target else "?") + urlencode(params)
        with httpx.Client(timeout=timeout) as client:
            return client.get(full_url)

    def _auto_report(self, message: SentSms) -> None:
        try:
            self.send_report(message)
        except Exception as exc:  # recorded for the test or demo to see
            with self._cond:
                self.report_errors.append(type(exc).__name__)


class SpeedSmsSimulator(_GatewaySimulator):
    """SpeedSMS's API under ``/index.php``: ``POST /sms/send`` and ``GET /user/info``,
    HTTP Basic auth with the access token as user name (HTTP 401 otherwise).

    Its request limit, as its API page states it: ``rate_limit`` requests in
    ``rate_window_s`` seconds (60 in 60 by default; None lifts it). The allowance refills
    continuously (one request a second back at the default) and holds at most the
    limit; a request without allowance gets HTTP 429 ``{"name": "Too Many Requests",
    ...}`` with ``X-Rate-Limit-Reset`` (seconds to wait: the window, as SpeedSMS's
    framework answers) and spends what allowance had come back.

    Callbacks, as SpeedSMS makes them to the one URL set in its dashboard
    (``callback_url``): :meth:`send_report` POSTs a delivery status ``{"type":
    "report", "tranId", "phone", "status"}`` (0 delivered, 1-63 still trying, 64 and
    above failed), :meth:`send_incoming` an incoming SMS ``{"type": "incoming",
    "phone", "content"}``. ``auto_report_after_s`` reports each accepted message
    delivered after that delay. The shapes follow public clients (see
    adapters/notifier-sms/README.md): unverified against SpeedSMS itself.
    """

    gateway: ClassVar[str] = "speedsms"
    path_prefix: ClassVar[str] = "/index.php"
    SEND_PATH: ClassVar[str] = "/index.php/sms/send"
    USER_INFO_PATH: ClassVar[str] = "/index.php/user/info"
    PRICE_PER_SMS: ClassVar[int] = 250

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_token: str = "sim-access-token",  # noqa: S107 - the simulator's own
        balance: int = 1_000_000,
        latency_s: float = 0.0,
        rate_limit: int | None = 60,
        rate_window_s: float = 60.0,
        callback_url: str | None = None,
        auto_report_after_s: float | None = None,
    ) -> None:
        super().__init__(host, port, latency_s=latency_s)
        self.access_token = access_token
        self.balance = balance
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.callback_url = callback_url
        self.auto_report_after_s = auto_report_after_s
        self.report_errors: list[str] = []  # auto reports that failed (type names)
        self._tran_id = 0
        self._allowance = float(rate_limit or 0)
        self._allowance_at = time.monotonic()
        self.rate_limited = 0  # requests answered 429 by the limit

    def _reset_gateway(self) -> None:
        self._allowance = float(self.rate_limit or 0)
        self._allowance_at = time.monotonic()
        self.rate_limited = 0
        self.report_errors.clear()

    def _over_limit(self) -> _Answer | None:
        limit = self.rate_limit
        if limit is None:
            return None
        with self._cond:
            now = time.monotonic()
            refill = (now - self._allowance_at) * limit / self.rate_window_s
            allowance = min(float(limit), self._allowance + refill)
            self._allowance_at = now
            if allowance < 1:
                self._allowance = 0.0
                self.rate_limited += 1
                return _Answer.of_json(
                    {
                        "name": "Too Many Requests",
                        "message": "Rate limit exceeded.",
                        "code": 0,
                        "status": 429,
                    },
                    status=429,
                    **{
                        "X-Rate-Limit-Limit": str(limit),
                        "X-Rate-Limit-Remaining": "0",
                        "X-Rate-Limit-Reset": str(int(self.rate_window_s)),
                    },
                )
            self._allowance = allowance - 1
        return None

    # -- callbacks -------------------------------------------------------------------

    def find(self, tran_id: str) -> SentSms:
        """The accepted message with this tranId."""
        for message in self.messages:
            if message.provider_id == str(tran_id):
                return message
        raise KeyError("no accepted message has that tranId")

    def report_body(self, message: SentSms, *, status: int = 0) -> dict[str, Any]:
        """The JSON of SpeedSMS's delivery-status callback for ``message``."""
        return {
            "type": "report",
            "tranId": int(message.provider_id),
            "phone": message.phone,
            "status": status,
        }

    def send_report(
        self,
        message: SentSms | str,
        *,
        status: int = 0,
        url: str | None = None,
        timeout: float = 5.0,
    ) -> httpx.Response:
        """POST the delivery status of ``message`` (a :class:`SentSms` or its tranId) to
        ``url`` or the dashboard's ``callback_url``: 0 delivered, 64+ failed."""
        sent = self.find(message) if isinstance(message, str) else message
        return self._post(url, self.report_body(sent, status=status), timeout)

    def send_incoming(
        self, phone: str, content: str, *, url: str | None = None, timeout: float = 5.0
    ) -> httpx.Response:
        """POST an SMS a citizen sent to our number (a reply such as "STOP")."""
        document = {"type": "incoming", "phone": phone, "content": content}
        return self._post(url, document, timeout)

    def _post(self, url: str | None, document: dict[str, Any], timeout: float) -> httpx.Response:
        target = url or self.callback_url
        if target is None:
            raise ValueError("no callback URL: set callback_url (the dashboard's) or pass url=")
        with httpx.Client(timeout=timeout) as client:
            return client.post(target, json=document)

    def _auto_report(self, message: SentSms) -> None:
        try:
            self.send_report(message)
        except Exception as exc:  # recorded for the test or demo to see
            with self._cond:
                self.report_errors.append(type(exc).__name__)

    def _route(self, request: ReceivedRequest) -> _Route | None:
        path = request.path.rstrip("/")
        if request.method == "POST" and path == self.SEND_PATH:
            return self._send
        if request.method == "GET" and path == self.USER_INFO_PATH:
            return self._user_info
        return None

    def _authorised(self, request: ReceivedRequest) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, _password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.access_token

    @staticmethod
    def _error(code: str, message: str | None = None, **extra: Any) -> _Answer:
        return _Answer.of_json(
            {
                "status": "error",
                "code": code,
                "message": message or SPEEDSMS_MESSAGES.get(code, "simulated failure"),
                **extra,
            }
        )

    def _unauthorised(self) -> _Answer:
        return _Answer.of_json(
            {"status": "error", "code": "401", "message": "Unauthorized"},
            status=401,
            **{"WWW-Authenticate": 'Basic realm="SpeedSMS API"'},
        )

    def _send(self, request: ReceivedRequest) -> _Answer:
        if not self._authorised(request):
            return self._unauthorised()
        document = _json_object(request)
        if document is None:
            return self._error("101")
        failure = self._take_failure()
        if failure is not None:
            return self._error(*failure)
        to, content = document.get("to"), document.get("content")
        sms_type, sender = document.get("sms_type"), document.get("sender", "")
        if isinstance(to, str):
            to = [to]
        if (
            not isinstance(to, list)
            or not to
            or not isinstance(content, str)
            or not content
            or not isinstance(sms_type, int)
            or not isinstance(sender, str)
        ):
            return self._error("101")
        valid: list[str] = []
        invalid: list[str] = []
        for phone in to:
            national = _national(str(phone))
            (valid if national is not None else invalid).append(str(phone))
        if not valid:
            return self._error("105", invalidPhone=invalid)
        for phone in valid:
            code = self._phone_code(_national(phone) or "")
            if code is not None:
                return self._error(code)
        segments = sms_length(content)
        with self._cond:
            self._tran_id += 1
            tran_id = self._tran_id
        now = time.time()
        accepted = [
            SentSms(
                gateway=self.gateway,
                provider_id=str(tran_id),
                phone=phone,
                content=content,
                brandname=sender,
                request_id=None,
                is_unicode=segments.encoding == "ucs2",
                sms_type=str(sms_type),
                sandbox=False,
                callback_url=self.callback_url,
                accepted_at=now,
                segments=segments.segments,
                charge_vnd=segments.segments * self.PRICE_PER_SMS,
            )
            for phone in valid
        ]
        for message in accepted:
            self._accept(message)
            if self.auto_report_after_s is not None and self.callback_url is not None:
                timer = threading.Timer(self.auto_report_after_s, self._auto_report, (message,))
                timer.daemon = True
                timer.start()
        total = segments.segments * len(valid)
        return _Answer.of_json(
            {
                "status": "success",
                "code": "00",
                "data": {
                    "tranId": tran_id,
                    "totalSMS": total,
                    "totalPrice": total * self.PRICE_PER_SMS,
                    "invalidPhone": invalid,
                },
            }
        )

    def _user_info(self, request: ReceivedRequest) -> _Answer:
        if not self._authorised(request):
            return self._unauthorised()
        return _Answer.of_json(
            {
                "status": "success",
                "code": "00",
                "data": {
                    "email": "simulator@speedsms.test",
                    "balance": self.balance,
                    "currency": "VND",
                },
            }
        )


# -- helpers ------------------------------------------------------------------------------


def _national(phone: str) -> str | None:
    """0 + 9 digits for the forms gateways take (0xxxxxxxxx, 84xxxxxxxxx, +84...)."""
    match = _PHONE.fullmatch(phone.strip())
    return "0" + match.group(1) if match else None


def _json_object(request: ReceivedRequest) -> dict[str, Any] | None:
    try:
        document = request.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _take(queue: deque[_Queued]) -> Any:
    head = queue[0]
    head.remaining -= 1
    if head.remaining <= 0:
        queue.popleft()
    return head.value


def _header(seconds: float | str) -> str:
    if isinstance(seconds, str):
        return seconds
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def serve_forever(gateway: str = "esms", port: int = 0) -> None:  # pragma: no cover
    """Run a simulator in the foreground, printing a line per message (for the demo)."""
    simulator: _GatewaySimulator = (
        EsmsSimulator(port=port, auto_report_after_s=1.0)
        if gateway == "esms"
        else SpeedSmsSimulator(port=port)
    )
    with simulator:
        print(f"{gateway} simulator at {simulator.base_url}; Ctrl+C to stop", flush=True)
        seen = 0
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                messages = simulator.messages
                for message in messages[seen:]:
                    print(
                        f"-> {mask_recipient(message.phone)} | {message.brandname} | "
                        f"{message.request_id or message.provider_id} | {message.content[:60]}",
                        flush=True,
                    )
                seen = len(messages)
                time.sleep(0.2)


if __name__ == "__main__":  # pragma: no cover
    serve_forever(
        sys.argv[1] if len(sys.argv) > 1 else "esms",
        int(sys.argv[2]) if len(sys.argv) > 2 else 0,
    )
