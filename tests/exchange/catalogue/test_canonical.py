"""RFC 8785 canonical JSON: the RFC's examples, the reference test data, and properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.exchange.catalogue import MAX_SAFE_INTEGER, canonical_json


def test_rfc8785_sorting_of_object_properties() -> None:
    # RFC 8785 section 3.2.3. By code point U+1F600 would sort after U+FB33; by UTF-16 code
    # units its lead surrogate D83D sorts before FB33.
    source = r"""{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"""
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(json.loads(source)) == expected.encode()


def test_rfc8785_string_and_literal_serialisation() -> None:
    # RFC 8785 section 3.2.2, less its "numbers" member (we refuse floats).
    source = r"""{
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""
    expected = r"""{"literals":[null,true,false],"string":"€$\u000f\nA'B\"\\\\\"/"}"""
    assert canonical_json(json.loads(source)) == expected.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # cyberphone/json-canonicalization testdata: weird.json
        (
            {
                "\u20ac": "Euro Sign",
                "1": "One",
                "\u0080": "Control\u007f",
                "\U0001f602": "Smiley",
                "\u00f6": "Latin Small Letter O With Diaeresis",
                "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "</script>": "Browser Challenge",
            },
            '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
            '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
            '"\U0001f602":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
        ),
        # french.json: sorting ignores locale
        (
            {"peach": "1", "p\u00e9ch\u00e9": "2", "p\u00eache": "3", "sin": "4"},
            '{"peach":"1","p\u00e9ch\u00e9":"2","p\u00eache":"3","sin":"4"}',
        ),
        # structures.json, with 56 for its 56.0
        (
            {"1": {"f": {"f": "hi", "F": 5}, "\n": 56}, "10": {}, "": "empty", "a": {}},
            '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"a":{}}',
        ),
        # unicode.json: no normalisation of strings
        ({"Unnormalized Unicode": "A\u030a"}, '{"Unnormalized Unicode":"A\u030a"}'),
        ([56, {"d": True, "10": None, "1": []}], '[56,{"1":[],"10":null,"d":true}]'),
        (("tuple", -0, MAX_SAFE_INTEGER), f'["tuple",0,{MAX_SAFE_INTEGER}]'),
        ("\u2028\u2029/\x7f", '"\u2028\u2029/\x7f"'),
    ],
)
def test_reference_vectors(value: object, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_control_characters_use_short_escapes_or_lower_case_hex() -> None:
    escaped = canonical_json("".join(chr(c) for c in range(0x20))).decode()
    assert escaped == (
        '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r'
        "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018"
        '\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"'
    )


def test_integers_must_be_exact_as_ieee_doubles() -> None:
    assert (
        canonical_json([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])
        == b"[9007199254740991,-9007199254740991]"
    )
    for beyond in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 10**400):
        with pytest.raises(ValueError, match="2\\*\\*53"):
            canonical_json({"n": beyond})


@pytest.mark.parametrize(
    "value", [1.0, {"x": 0.5}, {1: "x"}, {None: "x"}, b"bytes", {"set"}, object()]
)
def test_unsupported_values_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


@pytest.mark.parametrize("value", ["\ud800", {"\udfff": 1}, ["a\ud83d"]])
def test_unpaired_surrogates_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json(value)


def _utf16_units(text: str) -> list[int]:
    units: list[int] = []
    for char in text:
        point = ord(char)
        if point > 0xFFFF:
            point -= 0x10000
            units += [0xD800 + (point >> 10), 0xDC00 + (point & 0x3FF)]
        else:
            units.append(point)
    return units


text = st.text(st.characters(exclude_categories=["Cs"]))
bmp_text = st.text(st.characters(exclude_categories=["Cs"], max_codepoint=0xFFFF))


def json_values(strings: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | strings
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(strings, inner, max_size=5),
        max_leaves=25,
    )


@given(json_values(text))
def test_output_parses_back_to_the_value_and_is_a_fixed_point(value: object) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    assert canonical_json(json.loads(encoded)) == encoded


@given(st.dictionaries(text, st.integers(0, 9), max_size=12))
def test_members_are_ordered_by_utf16_code_units(value: dict[str, int]) -> None:
    keys = list(json.loads(canonical_json(value)))
    assert keys == sorted(value, key=_utf16_units)


@given(json_values(bmp_text))
def test_matches_pythons_sorted_compact_json_on_the_bmp(value: object) -> None:
    # Within the BMP, code point order is UTF-16 order, and the json module's escaping
    # with ensure_ascii=False is exactly RFC 8785's: an independent oracle.
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    assert canonical_json(value) == expected.encode("utf-8")


# The fast path (json.dumps) must give exactly what the reference writer gives.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=4), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_json_values)
def test_fast_path_equals_the_reference_writer(value: object) -> None:
    from tongban.exchange.catalogue.canonical import _write

    reference: list[str] = []
    _write(value, reference)
    assert canonical_json(value) == "".join(reference).encode("utf-8")
