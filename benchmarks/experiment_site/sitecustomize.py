"""On the benchmark workers' PYTHONPATH only: applies benchmarks/experiments.py patches."""

import os

if os.environ.get("NOTIFIER_BENCH_EXPERIMENTS"):
    from benchmarks.experiments import apply

    apply()
