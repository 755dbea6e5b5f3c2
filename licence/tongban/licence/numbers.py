"""Licence numbers (证照编号): unique, readable, and carrying a check character.

Layout: ``<TYPE>-<DEPT>-<YEAR>-<SERIAL><C>``, for example ``YYZZ-SAMR-2026-000123X``:

- ``TYPE``: the licence type's number prefix, 1-8 upper-case letters and digits
  (``YYZZ`` 营业执照, ``JY`` 食品经营许可证);
- ``DEPT``: the issuing department's code, upper-cased; it may itself contain ``-``
  (``SAMR-COUNTY``), which parsing allows because no other part does;
- ``YEAR``: four digits, the year of issue;
- ``SERIAL``: 1-20 upper-case letters and digits; a sequence number is written with at
  least 6 digits (``000123``), a random serial comes from ``random_serial``. Uniqueness
  comes from the serial: sequential per type, department and year, or random with 50 bits;
- ``C``: the ISO/IEC 7064 MOD 37,36 check character (the hybrid system over the 36
  characters ``0-9A-Z``) of every letter and digit before it, hyphens left out.

MOD 37,36 detects every single-character substitution. It detects almost, but not
quite, every transposition of two adjacent characters: of the 45,360 combinations of
running state and ordered pair of distinct characters, 72 (1 in 630) leave the check
unchanged: for example ``7RYQ7IHF`` and ``7RYQ7HIF`` share the check character ``7``.
(ISO/IEC 7064's pure system MOD 37-2 catches them all, at the price of a 37th check
character ``*``; the hybrid system was chosen so that a number is letters and digits
only.) The tests check both properties exhaustively.

The hyphens are separators and carry no value, so the check does not cover where they
stand; the only part whose hyphens can move is the department code, which a verifier
compares with the issuing department of the credential anyway.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from tongban.licence.errors import LicenceNumberInvalid

__all__ = [
    "LicenceNumber",
    "check_licence_number",
    "make_licence_number",
    "mod37_36_check_character",
    "parse_licence_number",
    "random_serial",
]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE = {c: v for v, c in enumerate(_ALPHABET)}
_M = 36  # ISO/IEC 7064 hybrid system MOD M+1, M with M = 36

_PREFIX = re.compile(r"[A-Z0-9]{1,8}")
_DEPT = re.compile(r"[a-z][a-z0-9-]{1,62}")  # as tongban.signing department codes
_YEAR = re.compile(r"[0-9]{4}")
_SERIAL = re.compile(r"[A-Z0-9]{1,20}")
_MIN_SEQUENCE_DIGITS = 6
_MAX_LENGTH = 8 + 1 + 63 + 1 + 4 + 1 + 20 + 1
# Crockford's base32 digits: no I, L, O or U, so a random serial is easy to read aloud.
_SERIAL_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_METADATA_NUMBER_LENGTH = 100


def mod37_36_check_character(text: str) -> str:
    """Return the ISO/IEC 7064 MOD 37,36 check character for ``text`` (characters
    ``0-9A-Z``), such that ``text`` followed by it passes the check.

    Raises ValueError for an empty ``text`` or a character outside ``0-9A-Z``.
    """
    if not text or any(c not in _VALUE for c in text):
        raise ValueError("MOD 37,36 needs one or more characters from 0-9 and A-Z.")
    return _ALPHABET[(_M + 1 - _product(text)) % _M]


def _product(text: str) -> int:
    # ISO/IEC 7064 hybrid system: P starts at M; for each character S = (P + value) mod M
    # (0 read as M), then P = 2S mod (M+1). The string with its check character is
    # valid when the final S is 1, i.e. the check character c solves (P + c) mod M = 1.
    product = _M
    for char in text:
        product = ((product + _VALUE[char]) % _M or _M) * 2 % (_M + 1)
    return product


def _check_passes(text: str) -> bool:
    return (_product(text[:-1]) + _VALUE[text[-1]]) % _M == 1


@dataclass(frozen=True)
class LicenceNumber:
    """The parts of a licence number."""

    type_prefix: str
    """The licence type's number prefix (``YYZZ``)."""
    department: str
    """The issuing department's code, in its usual lower case (``samr``)."""
    year: int
    serial: str
    """The serial as written (``000123``)."""
    check_character: str

    def __str__(self) -> str:
        """Return the number in its normal form."""
        return (
            f"{self.type_prefix}-{self.department.upper()}-{self.year:04d}-"
            f"{self.serial}{self.check_character}"
        )


def random_serial(
    random_bytes: Callable[[int], bytes] = secrets.token_bytes, length: int = 10
) -> str:
    """Return a random serial of ``length`` Crockford base32 characters (5 bits each; the
    default 10 give 50 bits, so collisions stay unlikely below millions per type,
    department and year; a registry still refuses a duplicate).

    Raises ValueError unless 1 <= ``length`` <= 20.
    """
    if not 1 <= length <= 20:
        raise ValueError("A serial has 1 to 20 characters.")
    raw = random_bytes(length)
    if len(raw) != length:
        raise ValueError(f"random_bytes returned {len(raw)} bytes, not {length}.")
    return "".join(_SERIAL_ALPHABET[b % 32] for b in raw)  # 256 = 8 * 32: no bias


def make_licence_number(type_code: str, dept: str, year: int, serial: int | str) -> str:
    """Return the licence number for licence type prefix ``type_code`` (``YYZZ``),
    department ``dept`` (``samr``), ``year`` and ``serial``: a sequence number (written
    with at least 6 digits) or a serial string such as ``random_serial()`` returns.

    Raises ValueError if a part is malformed: ``type_code`` not 1-8 of ``A-Z0-9``,
    ``dept`` not a department code, ``year`` outside 1000-9999, ``serial`` negative or
    not 1-20 of ``A-Z0-9``; TypeError for a bool serial.
    """
    if not _PREFIX.fullmatch(type_code):
        raise ValueError(f"Licence type prefix {type_code!r} must be 1-8 of A-Z and 0-9.")
    if not _DEPT.fullmatch(dept) or dept.endswith("-") or "--" in dept:
        raise ValueError(f"{dept!r} is not a department code.")
    if isinstance(year, bool) or not 1000 <= year <= 9999:
        raise ValueError(f"Year {year!r} is not a four-digit year.")
    if isinstance(serial, bool):
        raise TypeError("serial must be an int or a string, not a bool.")
    if isinstance(serial, int):
        if serial < 0:
            raise ValueError("A sequence number cannot be negative.")
        serial = f"{serial:0{_MIN_SEQUENCE_DIGITS}d}"
    if not _SERIAL.fullmatch(serial):
        raise ValueError(f"Serial {serial!r} must be 1-20 of A-Z and 0-9.")
    body = f"{type_code}-{dept.upper()}-{year:04d}-{serial}"
    return body + mod37_36_check_character(body.replace("-", ""))


def _invalid(text: str, problem: str, message: str, **extra: str) -> LicenceNumberInvalid:
    return LicenceNumberInvalid(
        message,
        metadata={"licence_number": text[:_METADATA_NUMBER_LENGTH], "problem": problem, **extra},
    )


def parse_licence_number(text: str) -> LicenceNumber:
    """Return the parts of licence number ``text`` after normalising it (NFKC, so
    full-width characters typed by Chinese input methods read as ASCII; surrounding
    whitespace stripped; upper case) and checking its check character.

    Raises LicenceNumberInvalid saying what is wrong; its metadata carries ``problem``
    (``format`` or ``check_character``) and, for a wrong check character,
    ``expected_check_character``.
    """
    normalised = unicodedata.normalize("NFKC", text).strip().upper()
    parts = normalised.split("-")
    dept = "-".join(parts[1:-2]).lower()
    if (
        len(normalised) > _MAX_LENGTH
        or len(parts) < 4
        or not _PREFIX.fullmatch(parts[0])
        or not all(parts[1:-2])
        or not _DEPT.fullmatch(dept)
        or not _YEAR.fullmatch(parts[-2])
        or not re.fullmatch(r"[A-Z0-9]{2,21}", parts[-1])
    ):
        raise _invalid(
            text,
            "format",
            f"{text[:_METADATA_NUMBER_LENGTH]!r} is not a licence number: expected "
            "TYPE-DEPARTMENT-YEAR-SERIAL followed by a check character, for example "
            "YYZZ-SAMR-2026-000123X.",
        )
    body = normalised[:-1].replace("-", "")
    given = normalised[-1]
    if not _check_passes(body + given):
        expected = mod37_36_check_character(body)
        raise _invalid(
            text,
            "check_character",
            f"The licence number ends in {given!r} but the characters before it call for "
            f"{expected!r}; one of its characters is mistyped.",
            expected_check_character=expected,
        )
    return LicenceNumber(
        type_prefix=parts[0],
        department=dept,
        year=int(parts[-2]),
        serial=parts[-1][:-1],
        check_character=given,
    )


def check_licence_number(text: str) -> str:
    """Return licence number ``text`` in its normal form (NFKC, stripped, upper case)
    once its format and MOD 37,36 check character are right.

    Raises LicenceNumberInvalid as ``parse_licence_number`` does, naming the expected
    check character when that is what is wrong.
    """
    return str(parse_licence_number(text))
