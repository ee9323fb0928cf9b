"""A citizen's preferences (channels on or off, language, quiet hours), stored and
audited with the privacy of opt-outs.

An identity is a portal account id, a phone (any written form, kept as +84...) or an
email, stored only as its keyed hash (:func:`notifier.masking.recipient_hash` under
``NOTIFIER_RECIPIENT_HASH_KEY``): the same hash the delivery log keeps, so planning and
the send-time gate look preferences up by the hashes a delivery already has. A
preference set on a portal account applies to every delivery of an event naming that
account; one set on a phone or email applies to the deliveries to that contact.

The portal inbox cannot be turned off: it is the one place every notice stays.
Every change is written with who made it (the API key's name) and the values before
and after, in the same transaction (``preference_changes``).

A portal account may also carry its Zalo user id (issue 19): planning then sends
"zalo|sms" by UID (ZBS, the cheapest) for an event naming the account that carries no
user id itself. The id is personal data: stored Fernet-encrypted under a key derived
from ``NOTIFIER_SECRET_KEY`` (as provider tokens are), written to the audit only masked,
never logged, and left out of :class:`Preference`'s repr.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from notifier.logging import get_logger
from notifier.masking import mask_digits, recipient_hash
from notifier.store import Database
from notifier.store.optouts import canonical_recipient
from notifier.store.schema import preference_changes, preferences, utcnow

log = get_logger(__name__)

# Channels a citizen may turn off; the portal inbox is not among them.
CHOOSABLE_CHANNELS = ("email", "sms", "zalo")
PORTAL_CHANNEL = "portal"
LANGUAGES = ("vi", "en")
# A Zalo user id as the OA API gives it: a string of digits (19 in the ids seen so far;
# bounds kept loose, the event schema allows 64 characters).
ZALO_USER_ID = re.compile(r"[0-9]{6,64}")


class IdentityKind(StrEnum):
    ACCOUNT = "account"  # the portal account id (tài khoản Cổng DVC)
    PHONE = "phone"
    EMAIL = "email"


@dataclass(frozen=True)
class Preference:
    """One identity's choices. ``language`` None: the event's; ``quiet_hours`` None: on."""

    channels_off: frozenset[str] = frozenset()
    language: str | None = None
    quiet_hours: bool | None = None
    # The account's Zalo user id, in clear only in memory (never in a repr or a log).
    zalo_user_id: str | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        """The audit's form: the Zalo user id masked (and only when one is set)."""
        found: dict[str, Any] = {
            "channels_off": sorted(self.channels_off),
            "language": self.language,
            "quiet_hours": self.quiet_hours,
        }
        if self.zalo_user_id is not None:
            found["zalo_user_id"] = mask_digits(self.zalo_user_id)
        return found


@dataclass(frozen=True)
class Choice:
    """The preferences that apply to one delivery: its account's and its contact's."""

    of_account: Preference | None = None
    of_contact: Preference | None = None
    _both: tuple[Preference, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, account: Preference | None, contact: Preference | None) -> Choice:
        return cls(account, contact, tuple(p for p in (account, contact) if p is not None))

    def channel_off(self, channel: str) -> bool:
        """Whether the citizen turned this channel off (the portal never is)."""
        if channel == PORTAL_CHANNEL:
            return False
        return any(channel in p.channels_off for p in self._both)

    @property
    def language(self) -> str | None:
        """The account's language first (the citizen's own setting), then the contact's."""
        return next((p.language for p in self._both if p.language is not None), None)

    @property
    def quiet_hours(self) -> bool:
        """Quiet hours apply unless the citizen turned them off (either identity)."""
        return not any(p.quiet_hours is False for p in self._both)

    @property
    def zalo_user_id(self) -> str | None:
        """The account's Zalo user id (only an account carries one)."""
        return None if self.of_account is None else self.of_account.zalo_user_id


class ZaloUserIdSeal:
    """Encrypts the accounts' Zalo user ids at rest (a key derived from the secret key,
    apart from the tokens' and callback secrets' keys)."""

    def __init__(self, secret_key: str) -> None:
        digest = hashlib.sha256(b"notifier-account-zalo-uid:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, user_id: str | None) -> str | None:
        return None if user_id is None else self._fernet.encrypt(user_id.encode()).decode()

    def open(self, sealed: str | None) -> str | None:
        """The user id, or None when none is stored or it cannot be decrypted (the secret
        key changed): planning then goes by phone, as for an account without one."""
        if sealed is None:
            return None
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            log.warning(
                "an account's Zalo user id cannot be decrypted: NOTIFIER_SECRET_KEY changed"
            )
            return None


class PreferenceStore:
    def __init__(self, database: Database, hash_key: str, secret_key: str | None = None) -> None:
        self.database = database
        self.hash_key = hash_key
        # Without a secret key, Zalo user ids can be neither stored nor read.
        self.seal = None if secret_key is None else ZaloUserIdSeal(secret_key)

    def identity_hash(self, kind: IdentityKind, value: str) -> str:
        """The keyed hash an identity is stored under (the delivery log's recipient hash)."""
        if kind is IdentityKind.ACCOUNT:
            return recipient_hash(value.strip(), self.hash_key)
        return recipient_hash(canonical_recipient(value), self.hash_key)

    def get(self, kind: IdentityKind, value: str) -> Preference | None:
        key = self.identity_hash(kind, value)
        return self.by_hash([key]).get(key)

    def put(
        self, kind: IdentityKind, value: str, preference: Preference, *, changed_by: str
    ) -> bool:
        """Store an identity's preferences (the whole set); returns whether anything
        changed. A change is audited in the same transaction; the same values again
        change nothing and write no audit row (an idempotent PUT)."""
        unknown = preference.channels_off - set(CHOOSABLE_CHANNELS)
        if unknown:
            raise ValueError(f"channels that cannot be turned off: {', '.join(sorted(unknown))}")
        if preference.language is not None and preference.language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        if preference.zalo_user_id is not None:
            if kind is not IdentityKind.ACCOUNT:
                raise ValueError("a Zalo user id is set on a portal account only")
            if not ZALO_USER_ID.fullmatch(preference.zalo_user_id):
                raise ValueError("zalo_user_id must be the digits of a Zalo user id")
            if self.seal is None:
                raise ValueError("a Zalo user id cannot be stored without the secret key")
        key = self.identity_hash(kind, value)
        now = utcnow()
        p = preferences.c
        with self.database.begin() as connection:
            row = connection.execute(
                sa.select(p.channels_off, p.language, p.quiet_hours, p.zalo_user_id)
                .where(p.identity_hash == key)
                .with_for_update()
            ).first()
            before = None if row is None else _preference(row, self.seal)
            if before == preference:
                return False
            values = {
                "identity_kind": kind.value,
                "channels_off": sorted(preference.channels_off),
                "language": preference.language,
                "quiet_hours": preference.quiet_hours,
                "updated_at": now,
                "updated_by": changed_by[:100],
            }
            if self.seal is not None:
                # Fernet gives a fresh ciphertext per write, so equality is checked in
                # clear above. A store without the key leaves a stored id as it is.
                values["zalo_user_id"] = self.seal.seal(preference.zalo_user_id)
            if row is None:
                connection.execute(preferences.insert().values(identity_hash=key, **values))
            else:
                connection.execute(
                    sa.update(preferences).where(p.identity_hash == key).values(**values)
                )
            connection.execute(
                preference_changes.insert().values(
                    identity_hash=key,
                    identity_kind=kind.value,
                    changed_at=now,
                    changed_by=changed_by[:100],
                    before=None if before is None else before.as_json(),
                    after=preference.as_json(),
                )
            )
        log.info("preferences changed", kind=kind.value, changed_by=changed_by)
        return True

    def changes(self, kind: IdentityKind, value: str) -> list[dict[str, Any]]:
        """The audit of one identity, oldest first."""
        c = preference_changes.c
        query = (
            sa.select(c.changed_at, c.changed_by, c.before, c.after)
            .where(c.identity_hash == self.identity_hash(kind, value))
            .order_by(c.change_id)
        )
        with self.database.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def by_hash(self, hashes: Iterable[str]) -> dict[str, Preference]:
        """The preferences stored under any of these identity hashes (one query)."""
        return preferences_by_hash(self.database, hashes, self.seal)


def preferences_by_hash(
    database: Database, hashes: Iterable[str], seal: ZaloUserIdSeal | None = None
) -> dict[str, Preference]:
    """The stored preferences of these identities; the accounts' Zalo user ids only with
    ``seal`` (planning's), left out otherwise (the send-time gate needs none)."""
    wanted: Collection[str] = {h for h in hashes if h}
    if not wanted:
        return {}
    p = preferences.c
    query = sa.select(
        p.identity_hash, p.channels_off, p.language, p.quiet_hours, p.zalo_user_id
    ).where(p.identity_hash.in_(wanted))
    with database.engine.connect() as connection:
        return {row.identity_hash: _preference(row, seal) for row in connection.execute(query)}


def _preference(row: Any, seal: ZaloUserIdSeal | None) -> Preference:
    return Preference(
        channels_off=frozenset(row.channels_off or ()),
        language=row.language,
        quiet_hours=row.quiet_hours,
        zalo_user_id=None if seal is None else seal.open(row.zalo_user_id),
    )
