"""The quick writers of the tagged JSON give exactly the text ``dumps`` gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tongban.adapters import _tagged_json

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.datetimes(),
    st.uuids(),
    st.binary(max_size=8),
)


@given(st.dictionaries(st.text(max_size=8), _SCALARS), st.lists(st.text(max_size=8)))
def test_a_record_writer_writes_what_dumps_writes(
    record: dict[str, object], other_names: list[str]
) -> None:
    # Fingerprints are SHA-256 of this text: the writer must never change a stored one.
    assert _tagged_json.record_writer(record)(record) == _tagged_json.dumps(record)
    # A record whose fields are not the writer's is written by dumps.
    assert _tagged_json.record_writer(other_names)(record) == _tagged_json.dumps(record)


@given(_SCALARS)
def test_scalar_dumps_is_dumps(value: object) -> None:
    assert _tagged_json.scalar_dumps(value) == _tagged_json.dumps(value)
