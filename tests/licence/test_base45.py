from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tongban.licence.base45 import ALPHABET, b45decode, b45encode
from tongban.licence.errors import LicenceFormatInvalid

# RFC 9285 sections 4.3 and 4.4.
RFC_VECTORS = [
    (b"AB", "BB8"),
    (b"Hello!!", "%69 VD92EX0"),
    (b"base-45", "UJCLQE7W581"),
    (b"ietf!", "QED8WEX0"),
]


@pytest.mark.parametrize(("data", "text"), RFC_VECTORS)
def test_rfc9285_examples(data: bytes, text: str) -> None:
    assert b45encode(data) == text
    assert b45decode(text) == data


def test_empty() -> None:
    assert b45encode(b"") == ""
    assert b45decode("") == b""


def test_extremes() -> None:
    assert b45encode(b"\xff\xff") == "FGW"
    assert b45decode("FGW") == b"\xff\xff"
    assert b45encode(b"\xff") == "U5"
    assert b45decode("U5") == b"\xff"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bb8", "not in the base45 alphabet"),  # lower case is not base45
        ("BB8!", "not in the base45 alphabet"),
        ("BB8\n", "not in the base45 alphabet"),
        ("A", "truncated"),
        ("BB8A", "truncated"),
        ("GGW", "65536"),  # RFC 9285 section 4.4: decodes to 65536, too large
        (":::", "more than 65535"),
        ("V5", "more than 255"),
        ("::", "more than 255"),
    ],
)
def test_invalid_text_is_refused(text: str, match: str) -> None:
    with pytest.raises(LicenceFormatInvalid, match=match) as info:
        b45decode(text)
    assert info.value.check == "format"


@given(st.binary(max_size=300))
def test_round_trip(data: bytes) -> None:
    text = b45encode(data)
    assert set(text) <= set(ALPHABET)
    assert len(text) == len(data) // 2 * 3 + len(data) % 2 * 2
    assert b45decode(text) == data


@given(st.text(alphabet=ALPHABET, max_size=60))
def test_decode_either_succeeds_canonically_or_refuses(text: str) -> None:
    try:
        data = b45decode(text)
    except LicenceFormatInvalid:
        return
    # Base45 has one spelling per byte string: decoding then encoding is the identity.
    assert b45encode(data) == text
