"""Subject identifiers: 统一社会信用代码 (GB 32100-2015) and 公民身份号码 (GB 11643-1999).

Both standards end the code with a check character computed from the first 17 by a
weighted sum modulo a prime (31 and 11). Every weight is non-zero modulo that prime, so a
single mistyped character always changes the check: validation catches every single
substitution (and the check alone cannot say *which* character was mistyped).

The checks here are the standards' arithmetic and nothing more: a code that passes is
well formed, not necessarily issued. A few codes issued in Fujian in 2015-2016 (for
example ``91350211M0000XUF46``) fail the GB 32100 check; they are refused like any other
malformed code (fail closed) and have to be registered as ``SubjectKind.OTHER``.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from datetime import date

from tongban.exchange.catalogue.errors import InvalidSubjectId

__all__ = [
    "SubjectKind",
    "citizen_id_check_digit",
    "uscc_check_character",
    "validate_subject_id",
]


class SubjectKind(enum.StrEnum):
    """What a subject identifier identifies, and so which rules it follows."""

    ENTERPRISE = "enterprise"
    """A legal person or other organisation: an 18-character 统一社会信用代码."""
    PERSON = "person"
    """A citizen: an 18-character 公民身份号码."""
    OTHER = "other"
    """Anything else (foreign passports, legacy codes): 1-128 printable characters."""


# GB 32100-2015 table 1: digits and capitals without I, O, S, V, Z; a character's value
# is its index. The weights are 3**(i-1) mod 31 for positions i = 1..17.
_USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {c: v for v, c in enumerate(_USCC_CHARSET)}
_USCC_BODY = re.compile(f"[{_USCC_CHARSET}]{{17}}")
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
# The weights are 3**i mod 31, and 34 ≡ 3 (mod 31): written as base-34 digits (a
# character's value as the digit) and read last character first by int(), a code's body
# is Σ value·34**i ≡ Σ value·weight (mod 31), the sum GB 32100 takes, in one C call.
_USCC_DIGITS = str.maketrans(
    {c: "0123456789abcdefghijklmnopqrstu"[v] for c, v in _USCC_VALUE.items()}
)

# GB 11643-1999: weights 2**(18-i) mod 11 for positions i = 1..17 (ISO 7064 MOD 11-2).
_CITIZEN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CITIZEN_CHECK = "10X98765432"
_DIGITS = "0123456789"
_EARLIEST_BIRTH = date(1900, 1, 1)
_LATEST_BIRTH = date(2100, 12, 31)

_OTHER_MAX_LENGTH = 128
_METADATA_ID_LENGTH = 40


def uscc_check_character(first17: str) -> str:
    """Return the GB 32100 check character (position 18) for a code's first 17 characters.

    Raises ``ValueError`` unless ``first17`` is exactly 17 characters of the GB 32100
    character set (digits and upper-case letters other than I, O, S, V, Z).
    """
    if _USCC_BODY.fullmatch(first17) is None:
        raise ValueError("expected 17 characters from the GB 32100 character set")
    return _uscc_check(first17)


def _uscc_check(first17: str) -> str:
    """``uscc_check_character`` of 17 characters already checked to be in the set."""
    total = int(first17.translate(_USCC_DIGITS)[::-1], 34)
    return _USCC_CHARSET[(31 - total % 31) % 31]


def citizen_id_check_digit(first17: str) -> str:
    """Return the GB 11643 check character (``0``-``9`` or ``X``) for 17 leading digits.

    Raises ``ValueError`` unless ``first17`` is exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not all(c in _DIGITS for c in first17):
        raise ValueError("expected 17 ASCII digits")
    total = sum(int(c) * w for c, w in zip(first17, _CITIZEN_WEIGHTS, strict=True))
    return _CITIZEN_CHECK[total % 11]


def validate_subject_id(kind: SubjectKind, value: str) -> str:
    """Return ``value`` normalised if it is a well-formed identifier of ``kind``.

    Enterprise and person ids are NFKC-normalised (so full-width digits and letters, as
    Chinese input methods type them, read as ASCII), stripped of surrounding whitespace
    and upper-cased; ``other`` ids are only stripped.

    Raises ``InvalidSubjectId`` saying what is wrong; its metadata carries ``problem``
    (``length``, ``character``, ``birth_date`` or ``check_character``) and, for a wrong
    check character, ``expected_check_character``.
    """
    if kind is SubjectKind.OTHER:
        return _validate_other(value)
    # NFKC leaves ASCII as it is; ids arrive in ASCII but for the odd full-width digit.
    normalised = (value if value.isascii() else unicodedata.normalize("NFKC", value)).strip()
    normalised = normalised.upper()
    if kind is SubjectKind.ENTERPRISE:
        _check_uscc(normalised, value)
    else:
        _check_citizen_id(normalised, value)
    return normalised


def _check_uscc(code: str, given: str) -> None:
    kind = SubjectKind.ENTERPRISE
    if len(code) != 18:
        raise _invalid(
            kind,
            given,
            "length",
            f"A unified social credit code (统一社会信用代码) has 18 characters but this "
            f"one has {len(code)}; check that it was copied in full.",
        )
    if _USCC_BODY.fullmatch(code, 0, 17) is None:
        position, char = next(
            (i, c) for i, c in enumerate(code[:17], start=1) if c not in _USCC_VALUE
        )
        raise _invalid(
            kind,
            given,
            "character",
            f"Character {position} of the unified social credit code is {char!r}, "
            f"which such codes never contain; they use digits and the letters "
            f"A-Y except I, O, S and V.",
        )
    expected = _uscc_check(code[:17])  # the characters were checked just above
    if code[17] != expected:
        raise _invalid(
            kind,
            given,
            "check_character",
            f"The unified social credit code ends in {code[17]!r} but its first 17 "
            f"characters call for {expected!r}; one of its characters is mistyped.",
            expected=expected,
        )


def _check_citizen_id(number: str, given: str) -> None:
    kind = SubjectKind.PERSON
    if len(number) != 18:
        raise _invalid(
            kind,
            given,
            "length",
            f"A citizen identity number (公民身份号码) has 18 characters but this one has "
            f"{len(number)}; convert 15-digit numbers to 18 digits and check that it "
            f"was copied in full.",
        )
    for position, char in enumerate(number[:17], start=1):
        if char not in _DIGITS:
            raise _invalid(
                kind,
                given,
                "character",
                f"Character {position} of the citizen identity number is {char!r}; the "
                f"first 17 characters must be digits and the last a digit or X.",
            )
    if _birth_date(number[6:14]) is None:
        raise _invalid(
            kind,
            given,
            "birth_date",
            "Characters 7 to 14 of the citizen identity number are not a real birth date "
            "(YYYYMMDD) between 1900-01-01 and 2100-12-31; check those digits.",
        )
    expected = citizen_id_check_digit(number[:17])
    if number[17] != expected:
        raise _invalid(
            kind,
            given,
            "check_character",
            f"The citizen identity number ends in {number[17]!r} but its first 17 digits "
            f"call for {expected!r}; one of its characters is mistyped.",
            expected=expected,
        )


def _birth_date(yyyymmdd: str) -> date | None:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        return None
    return born if _EARLIEST_BIRTH <= born <= _LATEST_BIRTH else None


def _validate_other(value: str) -> str:
    stripped = value.strip()
    if not 1 <= len(stripped) <= _OTHER_MAX_LENGTH or not stripped.isprintable():
        problem = "character" if stripped and not stripped.isprintable() else "length"
        raise _invalid(
            SubjectKind.OTHER,
            value,
            problem,
            f"A subject id of kind 'other' must be 1 to {_OTHER_MAX_LENGTH} printable "
            f"characters (no control or line-break characters); this one is not.",
        )
    return stripped


def _invalid(
    kind: SubjectKind, given: str, problem: str, message: str, *, expected: str | None = None
) -> InvalidSubjectId:
    metadata = {"subject_id": given[:_METADATA_ID_LENGTH], "kind": str(kind), "problem": problem}
    if expected is not None:
        metadata["expected_check_character"] = expected
    return InvalidSubjectId(message, metadata=metadata)
