"""The delivery log: one row per message to send, and one per attempt to send it.

Two modules, split by who uses them:

* :mod:`~notifier.store.deliveries.lifecycle` is the write side the pipeline drives:
  :class:`DeliveryStatus` (the states and their diagram), :class:`DeliveryStore`
  (plan, claim with a lease, dispatch mark, finish attempts, release, apply receipts)
  and the records passed to it (:class:`PlannedDelivery`, :class:`ClaimedDelivery`,
  :class:`AttemptRecord`, :class:`DispatchMark`).
* :mod:`~notifier.store.deliveries.log` is the read side for people and reports:
  :class:`DeliveryLog` (search, count, attempts, rejects, percentiles, provider
  figures) with :class:`DeliveryQuery` and the row types the CLI, API and console show.

A dead letter is a ``permanent-failure`` whose ``exhausted`` column is true: its
retries ran out (as against a message the provider refused outright).
"""
