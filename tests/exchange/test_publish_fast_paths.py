"""The publish path's quick forms give exactly what the general code gives."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tongban.exchange.catalogue import schema
from tongban.exchange.errors import TongbanError
from tongban.exchange.sharing import records

_TEXT = st.text(max_size=12)
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), _TEXT)


def _slow_decimal(value: Decimal) -> Decimal | str:
    """``_canonical_decimal`` without its fast path: the digit-by-digit rebuild."""
    saved = schema._CANONICAL_DECIMAL
    schema._CANONICAL_DECIMAL = re.compile(r"(?!)")  # matches nothing
    try:
        return schema._canonical_decimal(value, "d")
    except TongbanError as e:
        return e.reason
    finally:
        schema._CANONICAL_DECIMAL = saved


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_a_canonical_decimal_is_the_digit_by_digit_one(value: Decimal) -> None:
    try:
        fast: Decimal | str = schema._canonical_decimal(value, "d")
    except TongbanError as e:
        fast = e.reason
    slow = _slow_decimal(value)
    assert str(fast) == str(slow)
    if isinstance(fast, Decimal) and isinstance(slow, Decimal):
        assert fast.as_tuple() == slow.as_tuple()


@given(st.dictionaries(_TEXT, _VALUES, max_size=6), st.lists(_TEXT, max_size=6))
def test_the_storage_json_is_what_json_dumps_writes(
    values: dict[str, object], names: list[str]
) -> None:
    expected = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    members = {name: json.dumps(name, ensure_ascii=False) + ":" for name in [*values, *names]}
    assert records._json(values, members) == expected
    assert records._json(values, {n: m for n, m in members.items() if n in names}) == expected
