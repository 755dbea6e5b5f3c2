"""统一社会信用代码 and 公民身份号码: published examples and the check arithmetic's guarantees."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.exchange.catalogue import (
    InvalidSubjectId,
    SubjectKind,
    citizen_id_check_digit,
    uscc_check_character,
    validate_subject_id,
)

USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"

# Codes of registered enterprises, as printed on their business licences and cited in
# validators' test data; the first is GB 32100's worked example.
PUBLISHED_USCCS = [
    "91350100M000100Y43",
    "91310110666007217T",
    "91330101589882738D",
    "91350200776049653A",
    "91440101MA5CJQ4N59",
    "913502000728319549",
    "123502001549897397",
    "9135021359498494XQ",
    "91350213678251743X",
    "9131000063159284XQ",
]

# GB 11643's example numbers.
PUBLISHED_CITIZEN_IDS = ["11010519491231002X", "53010219200508011X"]


def _problem(kind: SubjectKind, value: str) -> InvalidSubjectId:
    with pytest.raises(InvalidSubjectId) as caught:
        validate_subject_id(kind, value)
    assert caught.value.reason == "INVALID_SUBJECT_ID"
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.metadata["kind"] == kind.value
    assert caught.value.metadata["subject_id"] == value[:40]
    return caught.value


@pytest.mark.parametrize("code", PUBLISHED_USCCS)
def test_published_unified_social_credit_codes_are_valid(code: str) -> None:
    assert uscc_check_character(code[:17]) == code[17]
    assert validate_subject_id(SubjectKind.ENTERPRISE, code) == code


def test_the_gb32100_worked_example_names_the_expected_check_character() -> None:
    error = _problem(SubjectKind.ENTERPRISE, "91350100M000100Y4Z")
    assert error.metadata["problem"] == "check_character"
    assert error.metadata["expected_check_character"] == "3"
    assert "'3'" in error.message


def _full_width(text: str) -> str:
    """Return ``text`` as a Chinese input method types it in full-width mode."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


def test_full_width_lower_case_and_padded_codes_are_normalised() -> None:
    assert _full_width("9a") == "\uff19\uff41"
    code = f" {_full_width('91350100m000100y43')}\u3000"
    assert validate_subject_id(SubjectKind.ENTERPRISE, code) == "91350100M000100Y43"
    number = _full_width("11010519491231002x")
    assert validate_subject_id(SubjectKind.PERSON, number) == "11010519491231002X"
    assert validate_subject_id(SubjectKind.PERSON, " 11010519491231002x\n") == (
        "11010519491231002X"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "length"),
        ("91350100M000100Y4", "length"),
        ("91350100M000100Y433", "length"),
        ("91350100M000100I43", "character"),  # I is never used
        ("91350100O000100Y43", "character"),
        ("91350100M000100Y4-", "check_character"),  # the 18th is judged by the check
        ("91350100M000100Y4Z", "check_character"),
    ],
)
def test_malformed_unified_social_credit_codes(value: str, problem: str) -> None:
    error = _problem(SubjectKind.ENTERPRISE, value)
    assert error.metadata["problem"] == problem
    assert ("expected_check_character" in error.metadata) == (problem == "check_character")


@pytest.mark.parametrize("number", PUBLISHED_CITIZEN_IDS)
def test_published_citizen_ids_are_valid(number: str) -> None:
    assert citizen_id_check_digit(number[:17]) == number[17]
    assert validate_subject_id(SubjectKind.PERSON, number) == number


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("110105491231002", "length"),  # a 15-digit number from before 1999
        ("1101051949123100X2", "character"),
        ("11010519491231002Y", "check_character"),
        ("110105194913310027", "birth_date"),  # month 13
        ("110105194902300020", "birth_date"),  # 30 February
        ("110105189912310020", "birth_date"),  # before 1900
        ("11010519491231002_", "check_character"),
        ("110105194912310021", "check_character"),
    ],
)
def test_malformed_citizen_ids(value: str, problem: str) -> None:
    error = _problem(SubjectKind.PERSON, value)
    assert error.metadata["problem"] == problem
    if problem == "check_character":
        assert error.metadata["expected_check_character"] == "X"


def test_a_wrong_birth_date_gets_its_own_message() -> None:
    date_error = _problem(SubjectKind.PERSON, "110105194902300020")
    check_error = _problem(SubjectKind.PERSON, "110105194912310021")
    assert "birth date" in date_error.message
    assert date_error.message != check_error.message


def test_other_ids_are_stripped_printable_text_of_at_most_128_characters() -> None:
    assert validate_subject_id(SubjectKind.OTHER, "  护照 E12345678 ") == "护照 E12345678"
    assert validate_subject_id(SubjectKind.OTHER, "x" * 128) == "x" * 128
    assert _problem(SubjectKind.OTHER, "   ").metadata["problem"] == "length"
    assert _problem(SubjectKind.OTHER, "x" * 129).metadata["problem"] == "length"
    assert _problem(SubjectKind.OTHER, "a\tb").metadata["problem"] == "character"


def test_metadata_truncates_the_id_as_given() -> None:
    error = _problem(SubjectKind.ENTERPRISE, "9" * 100)
    assert error.metadata["subject_id"] == "9" * 40


def test_check_functions_refuse_malformed_input() -> None:
    with pytest.raises(ValueError, match="17"):
        uscc_check_character("91350100M000100Y")
    with pytest.raises(ValueError, match="17"):
        uscc_check_character("91350100I000100Y4")
    with pytest.raises(ValueError, match="17"):
        citizen_id_check_digit("1101051949123100X")


uscc_first17 = st.text(alphabet=USCC_CHARSET, min_size=17, max_size=17)


@st.composite
def citizen_first17(draw: st.DrawFn) -> str:
    region = draw(st.text(alphabet="0123456789", min_size=6, max_size=6))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)))
    sequence = draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    return f"{region}{born:%Y%m%d}{sequence}"


@settings(max_examples=300)
@given(first17=uscc_first17, position=st.integers(0, 17), data=st.data())
def test_any_single_substitution_in_a_uscc_is_caught(
    first17: str, position: int, data: st.DataObject
) -> None:
    code = first17 + uscc_check_character(first17)
    assert validate_subject_id(SubjectKind.ENTERPRISE, code) == code
    other = data.draw(st.sampled_from(USCC_CHARSET.replace(code[position], "")))
    mistyped = code[:position] + other + code[position + 1 :]
    error = _problem(SubjectKind.ENTERPRISE, mistyped)
    assert error.metadata["problem"] == "check_character"
    assert error.metadata["expected_check_character"] == uscc_check_character(mistyped[:17])


@settings(max_examples=300)
@given(first17=citizen_first17(), position=st.integers(0, 17), data=st.data())
def test_any_single_substitution_in_a_citizen_id_is_caught(
    first17: str, position: int, data: st.DataObject
) -> None:
    number = first17 + citizen_id_check_digit(first17)
    assert validate_subject_id(SubjectKind.PERSON, number) == number
    alphabet = "0123456789X" if position == 17 else "0123456789"
    other = data.draw(st.sampled_from(alphabet.replace(number[position], "")))
    mistyped = number[:position] + other + number[position + 1 :]
    error = _problem(SubjectKind.PERSON, mistyped)
    # A substitution inside the birth date may also make the date impossible.
    assert error.metadata["problem"] in {"check_character", "birth_date"}
    if error.metadata["problem"] == "check_character":
        assert error.metadata["expected_check_character"] == citizen_id_check_digit(mistyped[:17])


@given(first17=uscc_first17, data=st.data())
def test_the_expected_check_character_is_the_computed_one(
    first17: str, data: st.DataObject
) -> None:
    expected = uscc_check_character(first17)
    wrong = data.draw(st.sampled_from(USCC_CHARSET.replace(expected, "")))
    error = _problem(SubjectKind.ENTERPRISE, first17 + wrong)
    assert error.metadata["expected_check_character"] == expected
    assert f"{expected!r}" in error.message


@given(st.text(alphabet=USCC_CHARSET, min_size=17, max_size=17))
def test_the_uscc_check_character_is_gb32100_weighted_sum(first17: str) -> None:
    # The check is computed in one int() call (subject_ids._USCC_DIGITS); this is the
    # standard's arithmetic written out.
    weights = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
    total = sum(USCC_CHARSET.index(c) * w for c, w in zip(first17, weights, strict=True))
    assert uscc_check_character(first17) == USCC_CHARSET[(31 - total % 31) % 31]
