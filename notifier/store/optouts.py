"""Opt-outs: a citizen's choice not to be told by one channel, stored and honoured.

Stored by keyed recipient hash (:func:`notifier.masking.recipient_hash` under
``NOTIFIER_RECIPIENT_HASH_KEY``), never in clear: the same hash the delivery log
keeps, so ingest checks a planned delivery with one indexed lookup. A planned
delivery whose (recipient, channel) is opted out is recorded with status
``suppressed`` and never enqueued or sent; its count stays in the log and reports.

Who records one (the HTTP routes are :mod:`notifier.web.optouts`):

- the portal backend, for a citizen's choice: ``POST /v1/opt-outs`` (and ``DELETE``
  to opt back in), with an API key of scope ``inbox``;
- operators: ``notifier opt-out add|remove --channel C --recipient R``;
- the citizen, by replying STOP to an SMS, where the gateway forwards replies (MO
  messages) to ``/v1/inbound-sms/<provider>/<receipt_token>`` (the older
  ``?token=<receipt_token>`` form still works, deprecated). The parameter
  names ``Phone`` and ``Content`` follow eSMS's usual naming and are an assumption:
  no gateway's MO-forwarding document was at hand; check with the gateway before
  relying on it (any of query string, form or JSON body is read, names
  case-insensitive). ``STOP``, ``TU CHOI``/``TUCHOI`` and ``HUY`` (any case, with or
  without diacritics and punctuation) opt the number out of SMS; any other text is
  acknowledged and ignored. A gateway whose adapter reads its own format
  (``accepts_inbound``: SpeedSMS's JSON ``{type: "incoming", phone, content}``) is read
  by the adapter, here and on its receipts URL alike.

Phone numbers are taken in any written form and kept in the +84 form ingest uses, so
``0901 888 484`` and ``+84901888484`` are one citizen.
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.masking import recipient_hash
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.store import Database
from notifier.store.deliveries.lifecycle import PlannedDelivery, SuppressReason
from notifier.store.schema import opt_outs, utcnow
from notifier.text import strip_diacritics

log = get_logger(__name__)

SMS_CHANNEL = "sms"
STOP_WORDS = frozenset({"STOP", "TU CHOI", "TUCHOI", "HUY"})


def canonical_recipient(value: str) -> str:
    """The form ingest hashes: phones as +84..., anything else as given (trimmed)."""
    value = value.strip()
    if "@" in value:
        return value
    try:
        return parse_mobile(value).format(PhoneFormat.E164)
    except InvalidPhone:
        return value


def is_stop_text(text: str) -> bool:
    """Whether an SMS reply asks to stop: STOP, TỪ CHỐI, HỦY (case, accents, punctuation
    ignored). Only the whole message counts: "Huy" is also a given name."""
    plain = strip_diacritics(text).upper()
    words = re.sub(r"[^A-Z0-9]+", " ", plain).split()
    return " ".join(words) in STOP_WORDS


class OptOutStore:
    def __init__(self, database: Database, hash_key: str) -> None:
        self.database = database
        self.hash_key = hash_key

    def _hash(self, recipient: str) -> str:
        return recipient_hash(canonical_recipient(recipient), self.hash_key)

    def add(self, recipient: str, channel: str, source: str) -> bool:
        """Record an opt-out; returns whether it is new."""
        with self.database.begin() as connection:
            inserted = connection.execute(
                self.database.insert_ignore(opt_outs, "recipient_hash", "channel")
                .values(
                    recipient_hash=self._hash(recipient),
                    channel=channel,
                    source=source[:32],
                    created_at=utcnow(),
                )
                .returning(opt_outs.c.channel)
            ).first()
        if inserted is not None:
            log.info("opt-out recorded", channel=channel, source=source, recipient=recipient)
        return inserted is not None

    def remove(self, recipient: str, channel: str) -> bool:
        """Opt back in; returns whether there was an opt-out."""
        with self.database.begin() as connection:
            removed = connection.execute(
                sa.delete(opt_outs).where(
                    opt_outs.c.recipient_hash == self._hash(recipient),
                    opt_outs.c.channel == channel,
                )
            ).rowcount
        if removed:
            log.info("opt-out removed", channel=channel, recipient=recipient)
        return bool(removed)

    def is_opted_out(self, recipient: str, channel: str) -> bool:
        return bool(opted_out(self.database, [(self._hash(recipient), channel)]))


def opted_out(database: Database, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (recipient hash, channel) pairs are opted out."""
    if not keys:
        return set()
    o = opt_outs.c
    query = sa.select(o.recipient_hash, o.channel).where(
        o.recipient_hash.in_({h for h, _ in keys}), o.channel.in_({c for _, c in keys})
    )
    with database.engine.connect() as connection:
        found = {(row.recipient_hash, row.channel) for row in connection.execute(query)}
    return found & set(keys)


def suppress(planned: list[PlannedDelivery], found: set[tuple[str, str]]) -> list[PlannedDelivery]:
    """Planned deliveries with the opted-out ones (``found`` by :func:`opted_out`) turned
    ``suppressed``: kept, not sent."""
    if not found:
        return planned
    result = []
    for p in planned:
        if (p.recipient_hash, p.channel) in found:
            log.info("delivery suppressed: the citizen opted out", channel=p.channel)
            p = p.suppressed(SuppressReason.OPTED_OUT)
        result.append(p)
    return result


def take_reply(store: OptOutStore, provider: str, phone: str, text: str) -> bool:
    """A citizen's SMS forwarded by ``provider``: STOP words opt the number out of SMS.
    Returns whether it did; any other text (or a number that is not a Vietnamese
    mobile) is acknowledged and ignored."""
    if not is_stop_text(text):
        log.info("inbound sms ignored: not a stop word", provider=provider)
        return False
    try:
        number = parse_mobile(phone).format(PhoneFormat.E164)
    except InvalidPhone:
        log.warning("inbound sms ignored: not a Vietnamese mobile number", provider=provider)
        return False
    store.add(number, SMS_CHANNEL, f"sms-stop:{provider}"[:32])
    return True
