"""The event's journey, top to bottom: one module per step.

    events queue (RabbitMQ) ─ bridge.py ──┐   POST /v1/events (web/events.py)
                                          ▼   ▼
    ``ingest`` actor (actors.py) ── ingest.py: validate, authorise, de-duplicate,
                                    │          record the event and its deliveries
                                    └─ planning.py: the Planner
                                         ├─ routing.py    the channels a status goes to
                                         ├─ rendering.py  each channel's message (Jinja2)
                                         └─ store/optouts the citizen's opt-outs
                                          ▼   planned deliveries (store/deliveries)
    ``deliver_<channel>`` actors ── sending.py: claim, mark, call the providers
      (actors.py)                   ├─ guard.py       ``async with guard.call(provider)``
                                    │  └─ protection.py  rate limit + circuit breaker
                                    └─ recording.py   outcomes → attempt records
                                          ▼   retry later: actors.enqueue_deliveries
                                          ▼   permanent failure:
                                    fallback.py: the routing's fallback channels,
                                          planned by the same Planner → their actors
    sweeper.py: re-enqueues deliveries left with no message in flight.
    relay.py: publishes the recorded status changes (store/statuses, written by every
              transition in the same transaction) to the status stream.

Actor and queue names are fixed in :mod:`notifier.pipeline.actors` (messages in flight
in a running deployment must still be consumed); :mod:`notifier.app` only wires.
"""
