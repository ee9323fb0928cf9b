"""The benchmark works: a tiny run of `benchmarks/run.py` on the real RabbitMQ and
PostgreSQL, every planned delivery done. No timing is asserted (docs/performance.md
has the figures; timing on a shared CI machine proves nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.integration

CHANNELS = ("email", "sms", "zalo", "portal")
STAGES = ("to ingest", "to send", "send")


def test_a_tiny_benchmark_run_delivers_everything_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--events",
            "20",
            "--processes",
            "1",
            "--threads",
            "4",
            "--steady-rate",
            "20",
            "--steady-seconds",
            "1",
            "--email-events",
            "10",
            "--bare-events",
            "10",
            "--apprise-emails",
            "0",
            "--publisher-events",
            "200",
            "--output",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Throughput" in result.stdout
    assert "Targets" in result.stdout
    [path] = tmp_path.glob("*.json")
    results = json.loads(path.read_text())

    runs = {run["kind"]: run for run in results["runs"]}
    assert set(runs) == {"burst", "steady", "email-only"}
    burst = runs["burst"]
    assert burst["all_done"]
    assert burst["deliveries_done"] == burst["deliveries_expected"] == 20 * len(CHANNELS)
    assert burst["statuses"] == {"sent": 60, "delivered": 20}  # the portal's are delivered
    for channel in CHANNELS:
        assert burst["latency_ms"][channel]["n"] == 20
    for stage in STAGES:
        assert burst["stage_latency_ms"][stage]["n"] == 20 * len(CHANNELS)
        assert burst["providers"][channel] == {"accepted": 20, "duplicates": 0}
    assert set(burst["cpu_s"]) == {
        "worker",
        "broker",
        "database",
        "simulators",
        "benchmark",
        "other",
    }
    assert len(burst["memory"]["peak_rss_mb"]) == 1
    assert runs["steady"]["all_done"]
    assert runs["steady"]["events"] == 20
    assert runs["email-only"]["deliveries_done"] == 10

    references = results["references"]
    assert references["bare"]["events"] == 10
    assert references["bare"]["accepted"] == {"email": 10, "sms": 10, "zalo": 10}
    assert references["bare"]["errors"] == 0
    assert references["publisher"]["confirmed"] == 200
    assert [row[0] for row in results["targets"]]  # the targets table is filled in


def test_the_log_size_benchmark_seeds_the_log_and_times_every_operator_query(
    tmp_path: Path,
) -> None:
    figures_file = tmp_path / "logsize.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "logsize.py"),
            "--deliveries",
            "3000",
            "--repeat",
            "1",
            "--json",
            str(figures_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    # 3,000 asked: the seed's channel mix gives 8 deliveries for every 3 events.
    assert 2_900 <= figures["seeded"]["deliveries"] <= 3_100
    timings = figures["timings"]
    assert set(timings) == {
        "metrics scrape",
        "overview (24 h)",
        "dossier lookup",
        "delivery search",
        "month's report",
        "retention purge (1 day)",
    }
    # One day's share of the log had contacts to clear.
    assert timings["retention purge (1 day)"]["rows"] > 0


def test_the_morning_batch_saves_two_of_three_paid_messages_and_its_report_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "morning_batch.py"), "--dossiers", "6"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    summary = json.loads(text[text.index('{\n  "scenario"') : text.index("\n}\n") + 2])
    every, coalesced = summary["every_status"], summary["coalesced"]
    assert every["messages"] == {"email": 18, "portal": 18, "sms": 18, "zalo": 18}
    # One SMS and one Zalo message per dossier; every email and portal message.
    assert coalesced["messages"] == {"email": 18, "portal": 18, "sms": 6, "zalo": 6}
    assert coalesced["superseded"] == 24
    assert summary["saved"]["messages"] == 24
    assert summary["saved"]["vnd"] > 0
    assert summary["report_matches_simulators_charges"] is True
