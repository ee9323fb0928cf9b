"""The console's words in Vietnamese (the default) and English, and local formatting.

Times are shown in Vietnam's time zone (UTC+7), the zone of the agencies and of the
people who read the console; the JSON API and the CLI keep UTC ISO 8601.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from notifier.events import Status
from notifier.reports import zone

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"
LOCAL_ZONE: tzinfo = zone(None)

MESSAGES: dict[str, dict[str, str]] = {
    "vi": {
        "app_name": "notifier",
        "app_tagline": "Bảng điều khiển thông báo TTHC",
        "nav_overview": "Tổng quan",
        "nav_search": "Tra cứu",
        "nav_dead_letters": "Gửi thất bại",
        "nav_rejects": "Sự kiện bị từ chối",
        "nav_providers": "Nhà cung cấp",
        "nav_reports": "Báo cáo",
        "sign_in": "Đăng nhập",
        "sign_in_title": "Đăng nhập bảng điều khiển",
        "sign_in_hint": "Tài khoản do quản trị hệ thống cấp (notifier operators add).",
        "sign_out": "Đăng xuất",
        "username": "Tên đăng nhập",
        "password": "Mật khẩu",
        "bad_credentials": "Tên đăng nhập hoặc mật khẩu không đúng.",
        "too_many_attempts": "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau ít phút.",
        "session_expired": "Phiên làm việc đã hết hạn, vui lòng đăng nhập lại.",
        "role_viewer": "Xem",
        "role_admin": "Quản trị",
        "window_hour": "1 giờ qua",
        "window_day": "24 giờ qua",
        "window_month": "30 ngày qua",
        "deliveries": "Lượt gửi",
        "sent_ok": "Đã gửi thành công",
        "failure_rate": "Tỉ lệ thất bại",
        "failure_rate_hint": "lỗi vĩnh viễn / (đã gửi + lỗi vĩnh viễn)",
        "median_time": "Trung vị thời gian gửi",
        "median_time_hint": "từ khi hồ sơ đổi trạng thái đến khi gửi đi",
        "in_flight": "Đang chờ / đang gửi",
        "rejected_events": "Sự kiện bị từ chối",
        "dead_letters": "Gửi thất bại sau khi thử lại",
        "open_circuits": "Nhà cung cấp đang ngắt",
        "by_channel_status": "Theo kênh và trạng thái",
        "over_time": "Lượt gửi theo thời gian",
        "per_channel": "Theo từng kênh",
        "channel": "Kênh",
        "status": "Trạng thái",
        "total": "Tổng",
        "agency": "Đơn vị",
        "procedure": "Thủ tục",
        "dossier": "Hồ sơ",
        "dossier_code": "Mã hồ sơ",
        "recipient": "Người nhận",
        "recipient_hint": "Số điện thoại, email (đầy đủ hoặc dạng che *******567)",
        "recipient_hashed": "Đang lọc theo người nhận (so khớp mã băm, không lưu số/email)",
        "provider": "Nhà cung cấp",
        "provider_id": "Mã tin của nhà cung cấp",
        "attempts": "Số lần thử",
        "attempt": "Lần thử",
        "error": "Lỗi",
        "error_code": "Mã lỗi",
        "time": "Thời gian",
        "created": "Tạo lúc",
        "sent_at": "Gửi lúc",
        "delivered_at": "Nhận lúc",
        "from": "Từ",
        "since": "Từ",
        "to": "Đến",
        "any": "Tất cả",
        "search": "Tìm kiếm",
        "clear": "Xóa bộ lọc",
        "results": "kết quả",
        "no_results": "Không có kết quả phù hợp.",
        "page": "Trang",
        "previous": "Trang trước",
        "next": "Trang sau",
        "open_dossier": "Xem hồ sơ",
        "events": "Sự kiện",
        "event": "Sự kiện",
        "occurred_at": "Thời điểm xảy ra",
        "received_at": "Nhận lúc",
        "source": "Nguồn",
        "submitted_by": "Người gửi",
        "replay_refused": "Không gửi lại",
        "template": "Mẫu tin",
        "timeline": "Diễn biến",
        "fallback_of": "Gửi thay cho",
        "fallbacks": "Kênh thay thế",
        "no_events": "Chưa có sự kiện nào cho hồ sơ này.",
        "no_deliveries": "Chưa có lượt gửi nào cho hồ sơ này.",
        "replay": "Gửi lại",
        "resolve_resend": "Gửi lại",
        "resolve_mark_sent": "Coi là đã gửi",
        "resolve_confirm": "Nhà cung cấp có thể đã nhận tin này. Đã kiểm tra chưa?",
        "replay_selected": "Gửi lại các mục đã chọn",
        "replay_all": "Gửi lại tất cả mục đang lọc",
        "replay_confirm": "Gửi lại các thông báo này qua luồng xử lý thông thường?",
        "replay_done": "Đã đưa lại vào hàng đợi",
        "replay_skipped": "Bỏ qua",
        "replayed_at": "Đã gửi lại lúc",
        "admins_only": "Chỉ tài khoản quản trị mới được gửi lại.",
        "kind": "Loại",
        "kind_exhausted": "Hết số lần thử lại",
        "kind_permanent": "Mọi lỗi vĩnh viễn",
        "kind_temporary": "Lỗi tạm thời đang chờ",
        "reason": "Lý do",
        "size": "Kích thước",
        "circuit": "Cầu dao",
        "circuit_closed": "Bình thường",
        "circuit_half-open": "Đang thử lại",
        "circuit_open": "Tạm ngừng",
        "consecutive_failures": "Lỗi liên tiếp",
        "open_until": "Ngừng đến",
        "rate_limit": "Hạn mức / giới hạn tốc độ",
        "error_rate_hour": "Tỉ lệ lỗi 1 giờ",
        "error_rate_day": "Tỉ lệ lỗi 24 giờ",
        "last_attempt": "Lần gửi gần nhất",
        "updated": "Cập nhật",
        "no_health": "Chưa có báo cáo tình trạng từ worker.",
        "report_title": "Báo cáo số liệu (mục 20, Công văn 3109/BTTTT-CĐSQG)",
        "report_make": "Lập báo cáo",
        "download_csv": "Tải CSV",
        "download_json": "Tải JSON",
        "latency_title": "Thời gian gửi (giây)",
        "sent_count": "Số đã gửi",
        "all_channels": "Mọi kênh",
        "language": "Ngôn ngữ",
        "times_in": "Giờ Việt Nam (UTC+7)",
        "not_found": "Không tìm thấy trang.",
        "forbidden": "Bạn không có quyền thực hiện thao tác này.",
        "bad_request": "Yêu cầu không hợp lệ.",
        "back": "Quay lại",
        "of": "trên",
        "note": "Ghi chú",
    },
    "en": {
        "app_name": "notifier",
        "app_tagline": "Dossier notification console",
        "nav_overview": "Overview",
        "nav_search": "Search",
        "nav_dead_letters": "Dead letters",
        "nav_rejects": "Rejected events",
        "nav_providers": "Providers",
        "nav_reports": "Reports",
        "sign_in": "Sign in",
        "sign_in_title": "Sign in to the console",
        "sign_in_hint": "Accounts are created by the service operator (notifier operators add).",
        "sign_out": "Sign out",
        "username": "Username",
        "password": "Password",
        "bad_credentials": "Wrong username or password.",
        "too_many_attempts": "Too many failed sign-ins. Please try again in a few minutes.",
        "session_expired": "Your session has expired; please sign in again.",
        "role_viewer": "Viewer",
        "role_admin": "Admin",
        "window_hour": "Last hour",
        "window_day": "Last 24 hours",
        "window_month": "Last 30 days",
        "deliveries": "Deliveries",
        "sent_ok": "Sent",
        "failure_rate": "Failure rate",
        "failure_rate_hint": "permanent failures / (sent + permanent failures)",
        "median_time": "Median time to send",
        "median_time_hint": "from the dossier's status change to the send",
        "in_flight": "Waiting / sending",
        "rejected_events": "Rejected events",
        "dead_letters": "Failed after retries",
        "open_circuits": "Providers cut off",
        "by_channel_status": "By channel and status",
        "over_time": "Deliveries over time",
        "per_channel": "Per channel",
        "channel": "Channel",
        "status": "Status",
        "total": "Total",
        "agency": "Agency",
        "procedure": "Procedure",
        "dossier": "Dossier",
        "dossier_code": "Dossier code",
        "recipient": "Recipient",
        "recipient_hint": "Phone or email (in full, or masked like *******567)",
        "recipient_hashed": "Filtered by recipient (keyed hash match; the contact is not kept)",
        "provider": "Provider",
        "provider_id": "Provider message id",
        "attempts": "Attempts",
        "attempt": "Attempt",
        "error": "Error",
        "error_code": "Error code",
        "time": "Time",
        "created": "Created",
        "sent_at": "Sent",
        "delivered_at": "Delivered",
        "from": "From",
        "since": "Since",
        "to": "To",
        "any": "Any",
        "search": "Search",
        "clear": "Clear filters",
        "results": "results",
        "no_results": "Nothing matches.",
        "page": "Page",
        "previous": "Previous",
        "next": "Next",
        "open_dossier": "Open dossier",
        "events": "Events",
        "event": "Event",
        "occurred_at": "Occurred",
        "received_at": "Received",
        "source": "Source",
        "submitted_by": "Submitted by",
        "replay_refused": "Replay refused",
        "template": "Template",
        "timeline": "Timeline",
        "fallback_of": "Fallback for",
        "fallbacks": "Fallbacks",
        "no_events": "No events for this dossier yet.",
        "no_deliveries": "No deliveries for this dossier yet.",
        "replay": "Replay",
        "resolve_resend": "Resend",
        "resolve_mark_sent": "Mark as sent",
        "resolve_confirm": "The provider may already have this message. Checked?",
        "replay_selected": "Replay selected",
        "replay_all": "Replay all matching",
        "replay_confirm": "Send these again through the normal path?",
        "replay_done": "Queued again",
        "replay_skipped": "Skipped",
        "replayed_at": "Replayed",
        "admins_only": "Only admins may replay.",
        "kind": "Kind",
        "kind_exhausted": "Retries exhausted",
        "kind_permanent": "All permanent failures",
        "kind_temporary": "Temporary failures waiting",
        "reason": "Reason",
        "size": "Size",
        "circuit": "Circuit",
        "circuit_closed": "Closed",
        "circuit_half-open": "Half-open",
        "circuit_open": "Open",
        "consecutive_failures": "Failures in a row",
        "open_until": "Open until",
        "rate_limit": "Quota / rate limit",
        "error_rate_hour": "Error rate, 1 h",
        "error_rate_day": "Error rate, 24 h",
        "last_attempt": "Last attempt",
        "updated": "Updated",
        "no_health": "No health reports from workers yet.",
        "report_title": "Delivery report (item 20, letter 3109/BTTTT-CĐSQG)",
        "report_make": "Make report",
        "download_csv": "Download CSV",
        "download_json": "Download JSON",
        "latency_title": "Delivery time (seconds)",
        "sent_count": "Sent",
        "all_channels": "All channels",
        "language": "Language",
        "times_in": "Vietnam time (UTC+7)",
        "not_found": "Page not found.",
        "forbidden": "You may not do this.",
        "bad_request": "Bad request.",
        "back": "Back",
        "of": "of",
        "note": "Note",
    },
}

STATUS_LABELS = {
    "vi": {
        "queued": "Chờ gửi",
        "sending": "Đang gửi",
        "sent": "Đã gửi",
        "delivered": "Đã đến người nhận",
        "temporary-failure": "Lỗi tạm thời",
        "permanent-failure": "Lỗi vĩnh viễn",
        "suppressed": "Không gửi",
        "unknown": "Chưa rõ đã gửi chưa",
        "resolved:resend": "Quản trị: gửi lại",
        "resolved:mark-sent": "Quản trị: coi là đã gửi",
        "replayed": "Gửi lại",
        "replay-failed": "Gửi lại không thành",
        "receipt:delivered": "Báo nhận: đã nhận",
        "receipt:failed": "Báo nhận: thất bại",
    },
    "en": {
        "queued": "Queued",
        "sending": "Sending",
        "sent": "Sent",
        "delivered": "Delivered",
        "temporary-failure": "Temporary failure",
        "permanent-failure": "Permanent failure",
        "suppressed": "Suppressed",
        "unknown": "Unknown (held)",
        "resolved:resend": "Admin: resend",
        "resolved:mark-sent": "Admin: marked sent",
        "replayed": "Replayed",
        "replay-failed": "Replay failed",
        "receipt:delivered": "Receipt: delivered",
        "receipt:failed": "Receipt: failed",
    },
}

CHANNEL_LABELS = {
    "vi": {"email": "Email", "sms": "SMS", "zalo": "Zalo", "portal": "Cổng DVC"},
    "en": {"email": "Email", "sms": "SMS", "zalo": "Zalo", "portal": "Portal inbox"},
}

# Statuses in the order the console lists and stacks them (good to bad).
STATUS_ORDER = (
    "delivered",
    "sent",
    "sending",
    "queued",
    "temporary-failure",
    "permanent-failure",
    "unknown",
    "suppressed",
)


def pick_language(query: str | None, cookie: str | None) -> str:
    for value in (query, cookie):
        if value in LANGUAGES:
            return value
    return DEFAULT_LANGUAGE


class Translator:
    """The per-request helpers templates use: ``t``, labels and local formats."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        self.messages = MESSAGES[self.language]

    def __call__(self, key: str) -> str:
        return self.messages.get(key) or MESSAGES["en"].get(key) or key

    def status(self, value: str) -> str:
        return STATUS_LABELS[self.language].get(value, value)

    def channel(self, value: str) -> str:
        return CHANNEL_LABELS[self.language].get(value, value)

    def dossier_status(self, value: str) -> str:
        try:
            status = Status(value)
        except ValueError:
            return value
        if self.language == "vi":
            code = status.code
            return f"{status.vietnamese_name}" + (f" ({code})" if code else "")
        return value.replace("_", " ").capitalize()

    def when(self, value: datetime | None, *, seconds: bool = True) -> str:
        if value is None:
            return "–"
        local = value.astimezone(LOCAL_ZONE)
        if self.language == "vi":
            return local.strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")
        return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def number(self, value: float | int | None) -> str:
        if value is None:
            return "–"
        text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
        if self.language == "vi":  # 1.234.567,8
            text = text.replace(",", "\0").replace(".", ",").replace("\0", ".")
        return text

    def percent(self, value: float | None) -> str:
        if value is None:
            return "–"
        text = f"{value * 100:.1f} %"
        return text.replace(".", ",") if self.language == "vi" else text

    def duration(self, seconds: float | None) -> str:
        """A short human duration: 850 ms, 4,2 s, 3 min 05 s, 2 h 10 min."""
        if seconds is None:
            return "–"
        if seconds < 1:
            return f"{seconds * 1000:.0f} ms"
        if seconds < 60:
            text = f"{seconds:.1f} s"
            return text.replace(".", ",") if self.language == "vi" else text
        minutes, secs = divmod(round(seconds), 60)
        if minutes < 60:
            return f"{minutes} min {secs:02d} s"
        hours, minutes = divmod(minutes, 60)
        if hours < 48:
            return f"{hours} h {minutes:02d} min"
        days, hours = divmod(hours, 24)
        return f"{days} {'ngày' if self.language == 'vi' else 'd'} {hours} h"

    def helpers(self) -> dict[str, Any]:
        return {
            "t": self,
            "lang": self.language,
            "status_label": self.status,
            "channel_label": self.channel,
            "dossier_status": self.dossier_status,
            "when": self.when,
            "number": self.number,
            "percent": self.percent,
            "duration": self.duration,
        }
