"""Realistic sample dossier status events, for the demo, the tests and the benchmark."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.events import SCHEMA_VERSION, Status

_AGENCIES = [
    ("000.00.12.H29", "UBND phường Điện Biên, quận Ba Đình"),
    ("000.00.20.H56", "Sở Tư pháp tỉnh Khánh Hòa"),
    ("000.01.31.H26", "UBND huyện Cẩm Giàng, tỉnh Hải Dương"),
]
_PROCEDURES = [
    ("1.001193", "Đăng ký khai sinh"),
    ("1.000656", "Cấp Giấy chứng nhận quyền sử dụng đất lần đầu"),
    ("2.000908", "Cấp bản sao trích lục hộ tịch"),
    ("1.004227", "Cấp Phiếu lý lịch tư pháp"),
]
_NAMES = [
    "Nguyễn Thị Minh Khai",
    "Trần Văn Đức",
    "Lê Hoàng Yến",
    "Phạm Quốc Bảo",
    "Đỗ Thị Thu Hà",
    "Vũ Đình Trọng",
    "Hoàng Gia Hân",
    "Bùi Xuân Trường",
]
# Where fixed-date samples start (tests and the benchmark repeat exactly); the demo dates
# its samples relative to now instead.
SAMPLE_START = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
ONE_SECOND = timedelta(seconds=1)

_REASONS = {
    Status.REFUSED: "Hồ sơ không thuộc thẩm quyền giải quyết của cơ quan",
    Status.SUPPLEMENT_REQUESTED: "Bổ sung bản sao giấy khai sinh có chứng thực",
    Status.STOPPED: "Công dân không bổ sung hồ sơ trong thời hạn quy định",
}


def sample_event(
    index: int,
    *,
    status: Status | None = None,
    rng: random.Random | None = None,
    contacts: dict[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
    start: datetime = SAMPLE_START,
    step: timedelta = ONE_SECOND,
) -> dict[str, Any]:
    """One valid event as the JSON document a TTHC system would publish; it occurred
    at ``start + index * step``, on a dossier of ``start``'s day."""
    rng = rng or random.Random(index)
    status = status or rng.choice(list(Status))
    agency_code, agency_name = _AGENCIES[index % len(_AGENCIES)]
    procedure_code, procedure_name = _PROCEDURES[index % len(_PROCEDURES)]
    occurred_at = start + index * step
    today = start.date()
    dossier: dict[str, Any] = {
        "code": f"{agency_code}-{today:%y%m%d}-{index % 10000:04d}",
        "procedure": {"code": procedure_code, "name": procedure_name},
        "status": status.value,
        "due_date": (today + timedelta(days=7)).isoformat(),
        "tracking_url": "https://dichvucong.gov.vn/p/home/dvc-tra-cuu-ho-so.html",
    }
    if status in _REASONS:
        dossier["reason"] = _REASONS[status]
    if status is Status.PAYMENT_REQUIRED:
        dossier["amount_due"] = 50_000 * (1 + index % 20)
    if status is Status.OVERDUE:
        dossier["new_due_date"] = (today + timedelta(days=14)).isoformat()
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(event_id or uuid.UUID(int=rng.getrandbits(128), version=4)),
        "occurred_at": occurred_at.isoformat(),
        "source_system": "motcua-demo",
        "agency": {"code": agency_code, "name": agency_name},
        "dossier": dossier,
        "applicant": {
            "name": _NAMES[index % len(_NAMES)],
            "language": "en" if index % 5 == 4 else "vi",
            "contacts": contacts
            if contacts is not None
            else {
                "email": f"citizen{index}@example.com",
                "phone": f"09{index % 100_000_000:08d}",
                "zalo": {"phone": f"09{index % 100_000_000:08d}"},
                "portal_account_id": f"acc-{index % 50}",
            },
        },
    }


def sample_events(
    count: int,
    *,
    seed: int = 2026,
    start: datetime = SAMPLE_START,
    step: timedelta = ONE_SECOND,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [sample_event(i, rng=rng, start=start, step=step) for i in range(count)]
