"""Apprise sending the benchmark's emails to the same SMTP catcher (a reference point).

Each citizen is a different recipient, so each email is its own Apprise notification
(``mailto://`` plain SMTP, ``mode=insecure``: no TLS, like notifier's run here).
Apprise opens a new SMTP session per notify(), as it always does. Run with one JSON
argument ``{"smtp_port", "count", "threads"}``; prints one JSON line with its figures.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def send_one(port: int, index: int) -> bool:
    import apprise

    notifier = apprise.Apprise()
    notifier.add(
        f"mailto://127.0.0.1:{port}?mode=insecure&from=bench@example.com"
        f"&to=citizen{index}@example.com&name=Cong%20DVC"
    )
    return bool(
        notifier.notify(
            title=f"Hồ sơ 000.00.12.H29-261126-{index:04d}: cập nhật trạng thái",
            body=(
                "Kính gửi công dân, hồ sơ của Ông/Bà đã có kết quả. "
                "Tra cứu: https://dichvucong.gov.vn/p/home/dvc-tra-cuu-ho-so.html"
            ),
        )
    )


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    import apprise  # noqa: F401  (fail here, before the clock starts, if missing)

    port, count, threads = config["smtp_port"], config["count"], config["threads"]
    send_one(port, -1)  # warm-up: imports and plugin discovery are not per-email costs
    cpu = time.process_time()
    start = time.perf_counter()
    if threads == 1:
        results = [send_one(port, i) for i in range(count)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda i: send_one(port, i), range(count)))
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "threads": threads,
                "emails": count,
                "ok": sum(results),
                "seconds": round(elapsed, 3),
                "per_s": round(count / elapsed, 1),
                "cpu_s": round(time.process_time() - cpu, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
