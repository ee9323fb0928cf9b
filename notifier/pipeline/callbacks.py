"""Publishers' signed HTTP callbacks: status messages in, signed POSTs out, at least once.

Two background threads in each worker process:

* :class:`StatusIntake` consumes our queue bound to the status exchange
  (``notifier.statuses``). A group of status messages becomes callback rows (one per
  message and publisher whose agencies include the message's agency) in one
  transaction, and the messages are acked only after it commits: a crash redelivers
  them, and the rows' key (message id, publisher) drops the repeats. A message that is
  not a status message is dead-lettered to ``<queue>.invalid``, never retried forever.
* :class:`CallbackSender` claims due rows from the database (the due time lives in the
  row, like a held delivery: never a long broker delay) and POSTs each body, signed per
  Standard Webhooks, through :mod:`notifier.callback_http` (the SSRF rules). A 2xx is
  delivered; anything else is tried again after an exponential backoff with jitter, or
  after the receiver's ``Retry-After`` (429, 503), until the callback is older than
  ``max_age_s``: then it is a dead letter. A sender killed mid-send leaves its claimed
  rows due again when their lease ends: sent again with the same ``webhook-id``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import pika
import sqlalchemy as sa

from notifier.adapter import DeliveryFailure, TemporaryFailure
from notifier.adapter_http import parse_retry_after
from notifier.amqp import declare_callback_queue, node_parameters
from notifier.background import BackgroundThread, ConsumerThread
from notifier.callback_http import DestinationPolicy, HostClients, post_callback
from notifier.logging import get_logger
from notifier.settings import CallbackSettings
from notifier.store.callbacks import CallbackStore, ClaimedCallback, IncomingStatus
from notifier.store.schema import utcnow
from notifier.webhooks import SEQUENCE_HEADER, signed_headers

__all__ = [
    "STATUS_SCHEMA",
    "CallbackSender",
    "InvalidStatusMessage",
    "StatusIntake",
    "parse_status",
    "retry_delay",
]

log = get_logger(__name__)

STATUS_SCHEMA = "notifier.status.v1"
MAX_STATUS_BYTES = 64 * 1024
Clock = Callable[[], datetime]


class InvalidStatusMessage(ValueError):
    """A message on the status queue that is not a status message we can pass on."""


def parse_status(body: bytes) -> IncomingStatus:
    """The fields callbacks rely on, from a status message (schema notifier.status.v1);
    the body itself is passed on unchanged, byte for byte."""
    if len(body) > MAX_STATUS_BYTES:
        raise InvalidStatusMessage(f"larger than {MAX_STATUS_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        message = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise InvalidStatusMessage("not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise InvalidStatusMessage("not a JSON object")
    if message.get("schema") != STATUS_SCHEMA:
        raise InvalidStatusMessage(f"schema is not {STATUS_SCHEMA!r}")
    found_id, kind, agency = message.get("id"), message.get("type"), message.get("agency")
    sequence = message.get("sequence")
    if not _line(found_id, 100):
        raise InvalidStatusMessage("'id' must be a line of 1 to 100 characters")
    if not _line(kind, 64):
        raise InvalidStatusMessage("'type' must be a line of 1 to 64 characters")
    if agency is not None and not _line(agency, 64):
        raise InvalidStatusMessage("'agency' must be a line of 1 to 64 characters, or null")
    if sequence is not None and (
        isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence < 2**63
    ):
        raise InvalidStatusMessage("'sequence' must be an integer from 0 to 2^63 - 1")
    return IncomingStatus(
        str(found_id), str(kind), None if agency is None else str(agency), sequence, text
    )


def _line(value: object, longest: int) -> bool:
    """A non-empty string of at most ``longest`` characters without control characters
    (a NUL, for one, cannot be stored in PostgreSQL: the message would never commit)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= longest
        and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
    )


def retry_delay(
    attempts: int,
    settings: CallbackSettings,
    retry_after_s: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before the next try after ``attempts`` failed ones: the receiver's
    ``Retry-After`` if it gave one, else ``min * 2^(attempts-1)`` capped at ``max``, with
    jitter taking it down to half at random (so receivers that come back are not hit by
    every sender at once)."""
    if retry_after_s is not None:
        return max(0.0, retry_after_s)
    exponent = min(max(attempts - 1, 0), 60)
    ceiling = min(settings.max_backoff_s, settings.min_backoff_s * float(2**exponent))
    return ceiling * (0.5 + 0.5 * rng())


# How long the intake waits for more status messages once one has come (at most
# ``prefetch`` are gathered): a callback is due this much later, and a loaded worker
# writes its callbacks in fewer, larger transactions.
GROUP_WINDOW_S = 0.05


class StatusIntake(ConsumerThread):
    """Consumes status messages into callback rows (acked after the rows commit)."""

    thread_name = "notifier-callback-intake"

    def __init__(
        self, broker_url: str, exchange: str, settings: CallbackSettings, store: CallbackStore
    ) -> None:
        super().__init__()
        self.broker_url = broker_url
        self.exchange = exchange  # the status stream's (settings.statuses.exchange)
        self.settings = settings
        self.store = store

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def consume(self) -> None:
        connection = pika.BlockingConnection(node_parameters(self.broker_url))
        try:
            channel = connection.channel()
            declare_callback_queue(channel, self.exchange, self.settings)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            group: list[tuple[int, bytes]] = []

            def collect(_channel: Any, method: Any, _properties: Any, body: bytes) -> None:
                group.append((method.delivery_tag, body))

            channel.basic_consume(self.settings.queue, on_message_callback=collect)
            log.info("callback intake consuming", queue=self.settings.queue)
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=1.0)
                # pika returns as soon as one read's messages are dispatched: under load
                # that is one or two. Gather a little longer, so the group's transaction
                # (the audience check and one INSERT) is shared by more messages.
                gather_until = time.monotonic() + GROUP_WINDOW_S
                while group and len(group) < self.settings.prefetch:
                    left = gather_until - time.monotonic()
                    if left <= 0:
                        break
                    connection.process_data_events(time_limit=left)
                if group:
                    taken = list(group)
                    group.clear()
                    self.take(channel, taken)
            channel.close()
        finally:
            if connection.is_open:
                connection.close()

    def take(self, channel: Any, group: list[tuple[int, bytes]]) -> None:
        """Record a group's callbacks in one transaction, then ack; dead-letter the
        messages that are not status messages."""
        valid: list[tuple[int, IncomingStatus]] = []
        last_tag = None
        for tag, body in group:
            try:
                valid.append((tag, parse_status(body)))
                last_tag = tag
            except InvalidStatusMessage as exc:
                log.warning(
                    "not a status message; dead-lettered",
                    reason=str(exc),
                    queue=f"{self.settings.queue}.invalid",
                )
                channel.basic_reject(tag, requeue=False)
        if last_tag is None:
            return
        try:
            added = self.store.record([status for _tag, status in valid])
        except sa.exc.DataError:
            # Something in the group the database refuses (not an outage): one at a time,
            # so only the message at fault is dead-lettered, never requeued for ever.
            self._one_by_one(channel, valid)
            return
        except Exception:
            # Nothing recorded: the messages go back to the queue, and we slow down.
            channel.basic_nack(last_tag, multiple=True, requeue=True)
            log.exception("could not record callbacks; status messages requeued")
            self.stopping.wait(1.0)
            return
        channel.basic_ack(last_tag, multiple=True)
        if added:
            log.info("callbacks due", messages=len(valid), callbacks=added)

    def _one_by_one(self, channel: Any, valid: list[tuple[int, IncomingStatus]]) -> None:
        for tag, status in valid:
            try:
                self.store.record([status])
            except sa.exc.DataError as exc:
                log.warning(
                    "status message refused by the database; dead-lettered",
                    error=type(exc.orig).__name__ if exc.orig is not None else "DataError",
                    queue=f"{self.settings.queue}.invalid",
                )
                channel.basic_reject(tag, requeue=False)
                continue
            except Exception:
                channel.basic_nack(tag, requeue=True)
                log.exception("could not record callbacks; status message requeued")
                continue
            channel.basic_ack(tag)


class CallbackSender(BackgroundThread):
    """Sends due callbacks, ``concurrency`` at a time, from each worker process."""

    thread_name = "notifier-callback-sender"

    def __init__(
        self,
        store: CallbackStore,
        settings: CallbackSettings,
        *,
        policy: DestinationPolicy | None = None,
        clock: Clock = utcnow,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.policy = policy or DestinationPolicy.of(
            settings.allowed_networks, allow_http=settings.allow_http
        )
        self.clock = clock
        self.rng = rng
        # A claim must outlast the slowest round: every request of a batch timing out,
        # ``concurrency`` at a time, plus one more timeout to record the outcomes; else
        # another sender may send a callback again while this one still works on it.
        rounds = math.ceil(settings.batch / settings.concurrency)
        self.lease = timedelta(seconds=settings.timeout_s * (rounds + 1))
        self._rounds = 0

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def run(self) -> None:
        with (
            HostClients(timeout=self.settings.timeout_s, follow_redirects=False) as client,
            ThreadPoolExecutor(
                self.settings.concurrency, thread_name_prefix="notifier-callback"
            ) as pool,
        ):
            while not self.stopping.is_set():
                try:
                    sent = self.run_once(client, pool)
                except Exception:  # the database may be down; try again next round
                    log.exception("callback round failed")
                    sent = 0
                if not sent:
                    self.stopping.wait(self.settings.poll_interval_s)

    def run_once(
        self, client: httpx.Client | HostClients, pool: ThreadPoolExecutor | None = None
    ) -> int:
        """Claim the due callbacks and try each once; returns how many were tried."""
        self._rounds += 1
        if self._rounds % 600 == 1:
            keep = timedelta(days=self.settings.keep_delivered_days)
            self.store.prune_delivered(self.clock() - keep, 1000)
        claims = self.store.claim_due(self.clock(), self.settings.batch, self.lease)
        if not claims:
            return 0
        if pool is None:
            for claim in claims:
                self.send(client, claim)
        else:
            list(pool.map(lambda claim: self.send(client, claim), claims))
        return len(claims)

    def send(self, client: httpx.Client | HostClients, claim: ClaimedCallback) -> None:
        """One try of one callback, and its outcome recorded."""
        timestamp = math.floor(self.clock().timestamp())
        headers = signed_headers(claim.message_id, timestamp, claim.body, claim.secrets)
        if claim.sequence is not None:
            headers[SEQUENCE_HEADER] = str(claim.sequence)
        status_code: int | None = None
        retry_after_s: float | None = None
        try:
            response = post_callback(
                client,
                self.policy,
                claim.url,
                claim.body.encode("utf-8"),
                headers,
                retry_after_hook=self._retry_after,
            )
        except TemporaryFailure as failure:
            error = failure.reason
            retry_after_s = failure.retry_after_s
            if failure.code and failure.code.startswith("http-"):
                status_code = int(failure.code.removeprefix("http-"))
        except DeliveryFailure as failure:  # a refused destination (the SSRF rules)
            error = failure.reason
        except Exception as exc:
            log.exception("callback try failed unexpectedly", callback=str(claim.callback_id))
            error = f"unexpected error ({type(exc).__name__})"
        else:
            status_code = response.status_code
            if 200 <= status_code < 300:
                self.store.delivered(claim, self.clock(), status_code)
                return
            error = f"the receiver answered HTTP {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
        now = self.clock()
        retry_at = now + timedelta(
            seconds=retry_delay(claim.attempts, self.settings, retry_after_s, self.rng)
        )
        if retry_at - claim.window_start > timedelta(seconds=self.settings.max_age_s):
            log.warning(
                "callback given up; it is a dead letter",
                callback=str(claim.callback_id),
                message_id=claim.message_id,
                attempts=claim.attempts,
                error=error,
            )
            self.store.failed(claim, now, error, status_code, None)
            return
        log.info(
            "callback try failed; will retry",
            callback=str(claim.callback_id),
            attempts=claim.attempts,
            error=error,
            retry_at=retry_at.isoformat(),
        )
        self.store.failed(claim, now, error, status_code, retry_at)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """The receiver's Retry-After (seconds or an HTTP date), read on our clock."""
        return parse_retry_after(response.headers.get("retry-after"), now=self.clock().timestamp())
