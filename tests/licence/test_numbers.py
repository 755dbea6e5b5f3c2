from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.licence.errors import LicenceNumberInvalid
from tongban.licence.numbers import (
    LicenceNumber,
    check_licence_number,
    make_licence_number,
    mod37_36_check_character,
    parse_licence_number,
    random_serial,
)

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.mark.parametrize(
    ("body", "check"),
    [
        # The GRid (Global Release Identifier) example, A1-2425G-ABC1234002-M.
        ("A12425GABC1234002", "M"),
        # ISAN root of Star Trek "Amok Time", 0000-0000-C36D-002B-K, and the full
        # ISAN's second check character over all 24 hexadecimal digits.
        ("00000000C36D002B", "K"),
        ("00000000C36D002B00000000", "E"),
    ],
)
def test_published_mod37_36_vectors(body: str, check: str) -> None:
    assert mod37_36_check_character(body) == check


@pytest.mark.parametrize("text", ["", "abc", "A-1", "营业"])
def test_mod37_36_refuses_characters_outside_the_alphabet(text: str) -> None:
    with pytest.raises(ValueError, match="0-9 and A-Z"):
        mod37_36_check_character(text)


def test_make_and_parse() -> None:
    number = make_licence_number("YYZZ", "samr", 2026, 123)
    assert number == "YYZZ-SAMR-2026-000123" + mod37_36_check_character("YYZZSAMR2026000123")
    parsed = parse_licence_number(number)
    assert parsed == LicenceNumber(
        type_prefix="YYZZ",
        department="samr",
        year=2026,
        serial="000123",
        check_character=number[-1],
    )
    assert str(parsed) == number
    assert check_licence_number(number) == number


def test_department_codes_with_hyphens() -> None:
    number = make_licence_number("JY", "samr-county", 2031, "7K3Q9")
    assert number.startswith("JY-SAMR-COUNTY-2031-7K3Q9")
    assert parse_licence_number(number).department == "samr-county"


def test_normalisation() -> None:
    number = make_licence_number("JY", "regulator", 2026, 42)
    # Every character full-width, as Chinese input methods type them (- becomes U+FF0D).
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in number.lower())
    assert check_licence_number(f"  {full_width}\n") == number
    assert check_licence_number(number.lower()) == number


def test_wrong_check_character_names_the_expected_one() -> None:
    number = make_licence_number("YYZZ", "samr", 2026, 123)
    wrong = "0" if number[-1] != "0" else "1"
    with pytest.raises(LicenceNumberInvalid) as caught:
        check_licence_number(number[:-1] + wrong)
    assert caught.value.metadata["problem"] == "check_character"
    assert caught.value.metadata["expected_check_character"] == number[-1]
    assert repr(number[-1]) in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        "",
        "YYZZ",
        "YYZZ-SAMR-2026",
        "YYZZ-SAMR-26-000123X",
        "YYZZ-SAMR-2026-X",  # serial missing: only the check character
        "YYZZ--2026-000123X",
        "YYZZ-SAMR--COUNTY-2026-000123X",
        "YYZZ-9SAMR-2026-000123X",
        "TOOLONGPREFIX-SAMR-2026-000123X",
        "YYZZ-SAMR-2026-000123_X",
        "YYZZ SAMR 2026 000123X",
        "营业执照-SAMR-2026-000123X",
        "YYZZ-" + "S" * 70 + "-2026-000123X",
    ],
)
def test_malformed_numbers(text: str) -> None:
    with pytest.raises(LicenceNumberInvalid) as caught:
        check_licence_number(text)
    assert caught.value.metadata["problem"] == "format"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("yyzz", "samr", 2026, 1), ValueError),
        (("", "samr", 2026, 1), ValueError),
        (("YYZZ", "SAMR", 2026, 1), ValueError),
        (("YYZZ", "samr-", 2026, 1), ValueError),
        (("YYZZ", "a--b", 2026, 1), ValueError),
        (("YYZZ", "samr", 26, 1), ValueError),
        (("YYZZ", "samr", 2026, -1), ValueError),
        (("YYZZ", "samr", 2026, 10**20), ValueError),
        (("YYZZ", "samr", 2026, "ab-1"), ValueError),
        (("YYZZ", "samr", 2026, ""), ValueError),
        (("YYZZ", "samr", 2026, True), TypeError),
    ],
)
def test_make_refuses_malformed_parts(args: tuple[str, str, int, int | str], error: type) -> None:
    with pytest.raises(error):
        make_licence_number(*args)


def test_random_serial() -> None:
    assert random_serial(lambda n: bytes(range(n))) == "0123456789"
    assert random_serial(lambda n: b"\xff" * n, length=4) == "ZZZZ"
    serials = {random_serial() for _ in range(1000)}
    assert len(serials) == 1000
    assert all(len(s) == 10 and set(s) <= set(ALPHABET) - set("ILOU") for s in serials)
    with pytest.raises(ValueError, match="1 to 20"):
        random_serial(length=0)
    with pytest.raises(ValueError, match="bytes"):
        random_serial(lambda n: b"", length=3)


numbers = st.builds(
    make_licence_number,
    st.from_regex(r"[A-Z0-9]{1,8}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{1,12}(-[a-z0-9]{1,8})?", fullmatch=True),
    st.integers(1000, 9999),
    st.one_of(st.integers(0, 10**12), st.from_regex(r"[A-Z0-9]{1,20}", fullmatch=True)),
)


@settings(max_examples=200)
@given(numbers)
def test_round_trip(number: str) -> None:
    assert check_licence_number(number) == number
    assert str(parse_licence_number(number)) == number


@settings(max_examples=100)
@given(numbers)
def test_every_single_substitution_is_detected(number: str) -> None:
    for i, original in enumerate(number):
        if original == "-":
            continue
        for replacement in ALPHABET:
            if replacement != original:
                with pytest.raises(LicenceNumberInvalid):
                    check_licence_number(number[:i] + replacement + number[i + 1 :])


def test_adjacent_transpositions_exhaustively() -> None:
    """MOD 37,36 (a hybrid system) misses 72 of the 45,360 combinations of running state
    and ordered pair of distinct characters: 1 in 630. Each one-character prefix puts the
    running state at a different one of its 36 values, so this covers every combination."""
    missed = [
        (p, a, b)
        for p in ALPHABET
        for a, b in itertools.permutations(ALPHABET, 2)
        if mod37_36_check_character(p + a + b) == mod37_36_check_character(p + b + a)
    ]
    assert len(missed) == 72
    # One of them, as the numbers module's docstring cites it.
    assert mod37_36_check_character("7RYQ7IHF") == mod37_36_check_character("7RYQ7HIF") == "7"
