"""Proposed core changes, applied as patches inside the benchmark's worker processes only.

    ./dev bench --experiment no-dramatiq-prometheus

They measure a change before it is made in notifier; they are not notifier's code.
``run.py`` puts ``benchmarks/experiment_site`` on the workers' PYTHONPATH, whose
``sitecustomize`` calls :func:`apply` with NOTIFIER_BENCH_EXPERIMENTS (comma-separated)
before Dramatiq forks its worker processes. Each patch keeps the patched function's
contract (the same outcomes and rows); see docs/performance.md for the proposals.

Earlier experiments are in the core now and were removed from here: no pool pre-ping
and the one-statement claim (ac09276), the compat32 MIME build (c645957, since replaced
by a direct MIME writer), and a one-statement finish (superseded by recording a group
of attempts at once).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ENV = "NOTIFIER_BENCH_EXPERIMENTS"


def no_dramatiq_prometheus() -> None:
    """Workers without Dramatiq's Prometheus middleware (its per-message histograms and
    counters in multiprocess mmap files); notifier's own send metrics stay."""
    from notifier.ops import metrics

    original = metrics.instrument_worker

    def instrument_worker(app: Any, *, dramatiq_middleware: bool = True) -> Any:
        return original(app, dramatiq_middleware=False)

    metrics.instrument_worker = instrument_worker


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "no-dramatiq-prometheus": no_dramatiq_prometheus,
}


def apply(names: str | None = None) -> list[str]:
    chosen = [n for n in (names if names is not None else os.environ.get(ENV, "")).split(",") if n]
    for name in chosen:
        EXPERIMENTS[name]()
    return chosen
