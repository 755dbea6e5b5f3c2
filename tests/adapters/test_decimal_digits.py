"""Decimals of 29 to 38 digits are read exactly; longer ones are rejected, never crash."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tongban.adapters._coerce import CoercionError, canonical_decimal, coerce
from tongban.adapters.mapping import DecimalField
from tongban.adapters.sdk import RejectReason

_SPEC = DecimalField(type="decimal", column="x")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (Decimal("1" * 29), "1" * 29),  # one digit past the default context's precision
        ("9" * 38, "9" * 38),
        (Decimal("1234567890123456789012345678.950"), "1234567890123456789012345678.95"),
        (Decimal("1.5E+30"), "15" + "0" * 29),
        (Decimal("-0.000"), "0"),
        (Decimal("1.50"), "1.5"),
    ],
)
def test_long_decimals_are_exact(raw: object, expected: str) -> None:
    value = coerce(_SPEC, raw)
    assert isinstance(value, Decimal)
    assert format(value, "f") == expected


@pytest.mark.parametrize(
    "raw", [Decimal("1" * 39), "1" * 40, Decimal("1E+100000"), "0." + "1" * 39]
)
def test_too_many_digits_is_a_reject(raw: object) -> None:
    with pytest.raises(CoercionError) as error:
        coerce(_SPEC, raw)
    assert error.value.reason == RejectReason.BAD_DECIMAL


def _by_context(value: Decimal) -> Decimal:
    """The canonical form the way ``canonical_decimal`` once made it: ``quantize`` or
    ``normalize`` in a context of the value's own digits (exact, but slow)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    with localcontext() as context:
        context.prec = len(digits) + max(exponent, 0) + 1
        if value == value.to_integral_value():
            return value.quantize(Decimal(1)) + Decimal(0)
        return value.normalize()


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_the_canonical_form_moves_digits_as_a_context_would_round_them(value: Decimal) -> None:
    """Moving the digits (no context) gives the digits and exponent of ``quantize`` or
    ``normalize`` in a context wide enough to be exact, for either sign."""
    for number in (value, -value):
        assert canonical_decimal(number).as_tuple() == _by_context(number).as_tuple()
