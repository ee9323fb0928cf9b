"""The command-line edge: ``notifier`` (:mod:`notifier.cli.main`), the demo, and the
Dramatiq worker entry (:mod:`notifier.cli.worker`).

Kept empty on purpose: a worker process imports :mod:`notifier.cli.worker` without
loading click, FastAPI and every command.
"""
