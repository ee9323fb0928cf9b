"""notifier.phones and notifier.text, which the SMS adapters stand on: the phone forms
citizens actually write, and Vietnamese text made fit for GSM-7 SMS."""

from __future__ import annotations

import re
import unicodedata

import pytest

from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.text import is_gsm7, sms_length, strip_diacritics

# -- phone numbers ---------------------------------------------------------------------------

# (as written, national form): every form must give the same number.
ACCEPTED_FORMS = [
    ("0901888484", "0901888484"),
    ("+84 90 188 8484", "0901888484"),
    ("+84901888484", "0901888484"),
    ("84901888484", "0901888484"),
    ("090.188.8484", "0901888484"),
    ("(090) 188-8484", "0901888484"),
    ("090-188-8484", "0901888484"),
    ("  0901 888 484 ", "0901888484"),
    ("+84 (0) 90 188 8484", "0901888484"),  # trunk 0 kept after the country code
    ("+84-90-188-8484", "0901888484"),
    ("0084901888484", "0901888484"),  # international call prefix 00
    ("0981234567", "0981234567"),
    ("0333 123 456", "0333123456"),
]


@pytest.mark.parametrize(("written", "national"), ACCEPTED_FORMS)
def test_written_forms_of_a_mobile_number(written: str, national: str) -> None:
    number = parse_mobile(written)
    assert number.format(PhoneFormat.NATIONAL) == national
    assert number.format(PhoneFormat.INTERNATIONAL) == "84" + national[1:]
    assert number.format(PhoneFormat.E164) == "+84" + national[1:]
    assert number.national_number == national[1:]


REFUSED_FORMS = [
    "024 3825 3215",  # Hanoi landline
    "028 3829 5555",  # Ho Chi Minh City landline
    "1080",  # short code (directory enquiries)
    "113",  # emergency short code
    "1900 1234",  # shared-cost service number
    "01688888888",  # 11-digit mobile prefix retired in 2018 (now 038...)
    "0123 456 7890",  # same, Vinaphone's old 012x
    "+1 202 555 0143",  # United States
    "+86 138 0013 8000",  # China mobile
    "090188848",  # one digit short
    "09018884841",  # one digit long
    "09O1888484",  # letter O for zero
    "0901888484 ext 2",
    "",
]


@pytest.mark.parametrize("written", REFUSED_FORMS)
def test_numbers_that_cannot_take_an_sms_are_refused(written: str) -> None:
    with pytest.raises(InvalidPhone) as caught:
        parse_mobile(written)
    digits = "".join(ch for ch in written if ch.isdigit())
    if len(digits) >= 6:
        assert digits not in str(caught.value)  # the reason never repeats the number


@pytest.mark.parametrize(
    ("written", "carrier"),
    [
        ("0981234567", "viettel"),
        ("0971234567", "viettel"),
        ("0961234567", "viettel"),
        ("0861234567", "viettel"),
        ("0321234567", "viettel"),
        ("0331234567", "viettel"),
        ("0391234567", "viettel"),
        ("0911234567", "vinaphone"),
        ("0941234567", "vinaphone"),
        ("0811234567", "vinaphone"),
        ("0831234567", "vinaphone"),
        ("0851234567", "vinaphone"),
        ("0881234567", "vinaphone"),
        ("0901234567", "mobifone"),
        ("0931234567", "mobifone"),
        ("0701234567", "mobifone"),
        ("0761234567", "mobifone"),
        ("0791234567", "mobifone"),
        ("0921234567", "vietnamobile"),
        ("0561234567", "vietnamobile"),
    ],
)
def test_carriers_by_prefix(written: str, carrier: str) -> None:
    assert parse_mobile(written).carrier == carrier


# The mobile blocks of the published numbering plan (shared/providers.md), by carrier;
# iTel's 087 besides.
PUBLISHED_BLOCKS = {
    "viettel": ["032", "033", "034", "035", "036", "037", "038", "039", "086", "096", "097", "098"],
    "mobifone": ["070", "076", "077", "078", "079", "089", "090", "093"],
    "vinaphone": ["081", "082", "083", "084", "085", "088", "091", "094"],
    "vietnamobile": ["052", "056", "058", "092"],
    "gmobile": ["059", "099"],
    "reddi": ["055"],
    "itel": ["087"],
}


@pytest.mark.parametrize(
    ("block", "carrier"),
    [(block, carrier) for carrier, blocks in PUBLISHED_BLOCKS.items() for block in blocks],
)
def test_every_published_mobile_block_is_accepted(block: str, carrier: str) -> None:
    for written in (f"{block}0000000", f"{block}5551234", f"{block}9999999"):
        number = parse_mobile(written)
        assert number.format(PhoneFormat.NATIONAL) == written
        assert number.carrier == carrier


@pytest.mark.parametrize("block", ["0890", "0891", "0892", "0893", "0894", "0895"])
def test_mobifone_0890_to_0895_numbers_are_accepted(block: str) -> None:
    # libphonenumber's 2026 metadata knows only 0896-0899 of MobiFone's 089 block; the
    # published plan gives MobiFone the whole block, and refusing a real number means a
    # citizen never told.
    number = parse_mobile(f"{block} 123 456")
    assert number.national_number == f"{block[1:]}123456"
    assert number.carrier == "mobifone"
    assert parse_mobile(f"+84 {block[1:]} 123 456") == number


def test_030_numbers_are_accepted_because_the_pinned_metadata_lists_them_as_mobile() -> None:
    # 030 is in no published plan we found, but libphonenumber's metadata lists it as
    # mobile: not certainly invalid, so the gateway judges (and its 108/105 is recorded).
    number = parse_mobile("030 123 4567")
    assert number.format(PhoneFormat.E164) == "+84301234567"
    assert number.carrier == "unknown"  # reports only: no published carrier for it


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("0801234567", "080 is not a mobile prefix block"),
        ("0601234567", "060 is not a mobile prefix block"),
        ("0401234567", "040 is not a mobile prefix block"),
        ("0571234567", "057 is not a mobile prefix block"),
        ("0891 234 56", "wrong length"),
        ("0891 234 5678", "wrong length"),
        ("1900 1234", "wrong length"),
        ("028 3829 5555", "landlines cannot receive SMS"),
        ("01688888888", "converted to 10 digits in 2018"),
        ("+86 138 0013 8000", "not a Vietnamese number (+84)"),
        ("0901-888-48a", "digits, spaces, dots, dashes and + only"),
    ],
)
def test_certainly_invalid_numbers_are_refused_with_the_reason(written: str, reason: str) -> None:
    with pytest.raises(InvalidPhone, match=re.escape(reason)):
        parse_mobile(written)


# -- Vietnamese without diacritics --------------------------------------------------------------

# Every vowel with every tone: none, huyền, hỏi, ngã, sắc, nặng.
VOWELS_LOWER = "aàảãáạ ăằẳẵắặ âầẩẫấậ eèẻẽéẹ êềểễếệ iìỉĩíị oòỏõóọ ôồổỗốộ ơờởỡớợ uùủũúụ ưừửữứự yỳỷỹýỵ"
PLAIN_LOWER = "aaaaaa aaaaaa aaaaaa eeeeee eeeeee iiiiii oooooo oooooo oooooo uuuuuu uuuuuu yyyyyy"
VOWELS_UPPER = "AÀẢÃÁẠ ĂẰẲẴẮẶ ÂẦẨẪẤẬ EÈẺẼÉẸ ÊỀỂỄẾỆ IÌỈĨÍỊ OÒỎÕÓỌ ÔỒỔỖỐỘ ƠỜỞỠỚỢ UÙỦŨÚỤ ƯỪỬỮỨỰ YỲỶỸÝỴ"
PLAIN_UPPER = "AAAAAA AAAAAA AAAAAA EEEEEE EEEEEE IIIIII OOOOOO OOOOOO OOOOOO UUUUUU UUUUUU YYYYYY"


@pytest.mark.parametrize(
    ("accented", "plain"),
    [
        (VOWELS_LOWER, PLAIN_LOWER),
        (VOWELS_UPPER, PLAIN_UPPER),
        ("đ Đ đường ĐỒNG", "d D duong DONG"),
        ("Hồ sơ đã được tiếp nhận", "Ho so da duoc tiep nhan"),
        (
            "Ủy ban nhân dân Thành phố Hà Nội, Sở Tư pháp",
            "Uy ban nhan dan Thanh pho Ha Noi, So Tu phap",
        ),
        ("Mã hồ sơ: 000.00.12.H29-231025-0001", "Ma ho so: 000.00.12.H29-231025-0001"),
    ],
)
def test_strip_diacritics(accented: str, plain: str) -> None:
    assert strip_diacritics(accented) == plain
    assert strip_diacritics(accented).isascii()


def test_strip_diacritics_of_decomposed_text() -> None:
    # Text pasted from some systems arrives decomposed (base letter + combining marks).
    decomposed = unicodedata.normalize("NFD", VOWELS_LOWER + " " + VOWELS_UPPER + " đĐ")
    assert decomposed != VOWELS_LOWER + " " + VOWELS_UPPER + " đĐ"
    assert strip_diacritics(decomposed) == PLAIN_LOWER + " " + PLAIN_UPPER + " dD"


# -- SMS length ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "gsm7", 160, 1),
        ("a" * 161, "gsm7", 161, 2),
        ("a" * 306, "gsm7", 306, 2),  # 2 x 153
        ("a" * 307, "gsm7", 307, 3),
        ("ạ" * 70, "ucs2", 70, 1),
        ("ạ" * 71, "ucs2", 71, 2),
        ("ạ" * 134, "ucs2", 134, 2),  # 2 x 67
        ("ạ" * 135, "ucs2", 135, 3),
        ("a" * 159 + "ơ", "ucs2", 160, 3),  # one diacritic forces UCS-2 for all
        ("{" * 80, "gsm7", 160, 1),  # extension-table characters count double
        ("{" * 81, "gsm7", 162, 2),
        ("€" * 80, "gsm7", 160, 1),
        ("a" * 159 + "€", "gsm7", 161, 2),
        ("éèà", "gsm7", 3, 1),  # these accents are in GSM-7's basic table
        ("", "gsm7", 0, 1),
    ],
)
def test_sms_length(text: str, encoding: str, units: int, segments: int) -> None:
    length = sms_length(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, segments)


def test_unaccented_vietnamese_is_gsm7() -> None:
    text = "Hồ sơ của ông/bà đã được tiếp nhận; hẹn trả ngày 27/10/2025."
    assert not is_gsm7(text)
    assert is_gsm7(strip_diacritics(text))
    assert sms_length(strip_diacritics(text)).encoding == "gsm7"
