"""Provider health as operators see it: the circuit state derived from the outcomes
that any process recorded, so a state left by a killed worker does not stick."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


def shown_circuit_state(
    recorded: str,
    *,
    opened_at: datetime | None,
    open_until: datetime | None,
    last_success_at: datetime | None,
    updated_at: datetime,
    now: datetime,
) -> CircuitState:
    """The state operators see, from what any process last recorded: a success after
    the circuit opened closes it (whoever had it open may be dead); past its pause an
    open circuit lets a trial call through (half-open)."""
    state = CircuitState(recorded) if recorded in set(CircuitState) else CircuitState.OPEN
    if state is CircuitState.CLOSED:
        return state
    since = opened_at or updated_at
    if last_success_at is not None and last_success_at > since:
        return CircuitState.CLOSED
    if open_until is not None and now >= open_until:
        return CircuitState.HALF_OPEN
    return state
