"""``/v1/preferences`` (scope ``preferences``, the portal's key): a citizen's choices of
channels, language and quiet hours. The storage, its audit and how planning and the
send-time gate use it: :mod:`notifier.store.preferences`.

The identity (portal account id, phone or email) travels in the body, never in the URL,
which access logs and proxies keep: so a read is ``POST /v1/preferences/lookup`` (as the
delivery search is a POST). ``PUT`` replaces the whole set and is idempotent: the same
body again changes nothing and writes no audit row.

On a portal account the portal may also store the account's Zalo user id
(``zalo_user_id``, digits), so that events naming the account go to Zalo by UID, the
cheapest Zalo send, when they carry no user id themselves. It is stored encrypted,
audited masked, and answered masked; a PUT without it (or with null) removes it, as a
PUT replaces the whole set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from notifier.masking import mask_digits, mask_recipient
from notifier.store.apikeys import ApiClient
from notifier.store.preferences import (
    CHOOSABLE_CHANNELS,
    IdentityKind,
    Preference,
    PreferenceStore,
)
from notifier.web.deps import State, require_scope

router = APIRouter(tags=["preferences"])
PortalClient = Annotated[ApiClient, Depends(require_scope("preferences"))]


class Identity(BaseModel):
    """Exactly one of the three."""

    model_config = ConfigDict(extra="forbid")

    account_id: str | None = Field(default=None, min_length=1, max_length=64)
    phone: str | None = Field(default=None, pattern=r"^[0-9+ ().-]{8,20}$")
    email: str | None = Field(
        default=None, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Identity:
        given = [v for v in (self.account_id, self.phone, self.email) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of account_id, phone, email")
        return self

    def key(self) -> tuple[IdentityKind, str]:
        if self.account_id is not None:
            return IdentityKind.ACCOUNT, self.account_id
        if self.phone is not None:
            return IdentityKind.PHONE, self.phone
        assert self.email is not None
        return IdentityKind.EMAIL, self.email


class Channels(BaseModel):
    """Channels on (true) or off (false); the portal inbox is always on."""

    model_config = ConfigDict(extra="forbid")

    email: bool = True
    sms: bool = True
    zalo: bool = True


class PreferencesPut(Identity):
    channels: Channels = Field(default_factory=Channels)
    language: Literal["vi", "en"] | None = Field(
        default=None, description="null: the language each event names"
    )
    quiet_hours: bool = Field(default=True, description="SMS and Zalo wait for the morning")
    zalo_user_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{6,64}$",
        description=(
            "portal accounts only: the account's Zalo user id (Zalo by UID, the cheapest); "
            "null or absent removes it"
        ),
    )

    @model_validator(mode="after")
    def _zalo_user_id_on_an_account(self) -> PreferencesPut:
        if self.zalo_user_id is not None and self.account_id is None:
            raise ValueError("zalo_user_id is set on a portal account (account_id) only")
        return self


class PreferencesState(BaseModel):
    identity: str = Field(description="kind:masked value")
    channels: dict[str, bool]
    language: Literal["vi", "en"] | None
    quiet_hours: bool
    zalo_user_id: str | None = Field(
        default=None, description="the account's Zalo user id, masked; null: none stored"
    )
    stored: bool = Field(description="false: nothing stored, the defaults apply")
    changed: bool = False


def _store(state: State) -> PreferenceStore:
    app = state.notifier
    return PreferenceStore(
        app.database,
        app.settings.recipient_hash_key.get_secret_value(),
        app.settings.secret_key.get_secret_value(),
    )


def _state(
    kind: IdentityKind, value: str, found: Preference | None, changed: bool
) -> PreferencesState:
    preference = found or Preference()
    return PreferencesState(
        identity=f"{kind.value}:{mask_recipient(value)}",
        channels={c: c not in preference.channels_off for c in CHOOSABLE_CHANNELS}
        | {"portal": True},
        language=preference.language,
        quiet_hours=preference.quiet_hours is not False,
        zalo_user_id=None
        if preference.zalo_user_id is None
        else mask_digits(preference.zalo_user_id),
        stored=found is not None,
        changed=changed,
    )


@router.put("/v1/preferences", response_model=PreferencesState)
def put_preferences(body: PreferencesPut, state: State, client: PortalClient) -> PreferencesState:
    """Set a citizen's preferences (the whole set; idempotent; audited with the key's name)."""
    kind, value = body.key()
    preference = Preference(
        channels_off=frozenset(c for c in CHOOSABLE_CHANNELS if not getattr(body.channels, c)),
        language=body.language,
        quiet_hours=body.quiet_hours,
        zalo_user_id=body.zalo_user_id,
    )
    store = _store(state)
    try:
        changed = store.put(kind, value, preference, changed_by=f"api-key:{client.name}")
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return _state(kind, value, preference, changed)


@router.post("/v1/preferences/lookup", response_model=PreferencesState)
def lookup_preferences(body: Identity, state: State, _client: PortalClient) -> PreferencesState:
    """A citizen's current preferences (the defaults when none are stored)."""
    kind, value = body.key()
    return _state(kind, value, _store(state).get(kind, value), False)
