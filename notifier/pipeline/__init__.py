"""The event's journey, top to bottom: one module per step.

    events queue (RabbitMQ) ─ bridge.py ──┐   POST /v1/events (web/api.py)
                                          ▼   ▼
    ``ingest`` actor (app.py) ─── ingest.py: validate, de-duplicate, record the event
                                    ├─ routing.py    the channels a status goes to
                                    ├─ store/optouts the citizen's opt-outs
                                    └─ rendering.py  each channel's message (Jinja2)
                                          ▼   planned deliveries (store/deliveries)
    ``deliver_<channel>`` actors ── sending.py: claim, call the providers, record
                                    └─ protection.py rate limit + circuit breaker
                                          ▼   permanent failure: ingest.plan_fallback
                                              → the next channel's deliveries
    sweeper.py: re-enqueues deliveries left with no message in flight.

Actor and queue names are fixed in :mod:`notifier.app` (messages in flight in a running
deployment must still be consumed). Planned next: ``planning.py`` (one Planner for
ingest and fallback), ``recording.py``, ``fallback.py``, ``actors.py``.
"""
