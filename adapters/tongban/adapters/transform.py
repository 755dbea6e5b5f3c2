"""Source row → dataset record, by a stream's mapping. Pure.

``StreamTransform.apply`` returns one of three outcomes for a row:

- ``Record``: the dataset record, its key and its fingerprint;
- ``Rejected``: the row cannot become a record; the reason code names the problem and
  ``field`` the dataset field at fault;
- ``Excluded``: the row does not pass the stream's filters (if it was published before,
  the record is deleted: the dataset is exactly the rows that pass).

Subject-id checks (USCC, citizen id) are injected as plain callables keyed by the name a
field's ``check:`` uses, so the SDK does not depend on the exchange. A validator returns
the value normalised, or raises ``ValueError`` or a ``TongbanError``.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType

from tongban.adapters import _tagged_json
from tongban.adapters._coerce import CoercionError, canonical_decimal, coercer
from tongban.adapters.errors import ValidatorMissing
from tongban.adapters.mapping import FieldSpec, Filter, StreamMapping
from tongban.adapters.sdk import RejectReason
from tongban.errors import TongbanError

__all__ = [
    "Excluded",
    "Record",
    "Rejected",
    "StreamTransform",
    "Validator",
    "fingerprint",
    "key_text",
]

Validator = Callable[[str], str]
"""Returns the value normalised, or raises ``ValueError`` or a ``TongbanError``."""


@dataclass(frozen=True)
class Record:
    """A row mapped into a dataset record."""

    key: str
    values: Mapping[str, object]
    fingerprint: str


@dataclass(frozen=True)
class Rejected:
    """A row that cannot become a record."""

    reason_code: str
    field: str | None
    """The dataset field at fault; ``None`` when the whole row is (a broken line)."""
    message: str
    key: str | None = None
    """The record key, when it could be read."""


@dataclass(frozen=True)
class Excluded:
    """A row the stream's filters leave out."""

    key: str | None


def fingerprint(values: Mapping[str, object]) -> str:
    """Return a stable hash of a record: SHA-256 over its canonical, type-tagged JSON.

    Equal records (same fields, same typed values) always have the same fingerprint,
    whatever the order of their fields; ``Decimal("1.5")`` and ``"1.5"`` differ.
    """
    return hashlib.sha256(_tagged_json.dumps(values).encode("utf-8")).hexdigest()


def key_text(value: object) -> str:
    """Return a key value as the text the exchange keys records by."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(canonical_decimal(value), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class StreamTransform:
    """A stream's mapping, ready to apply to rows."""

    def __init__(self, stream: StreamMapping, validators: Mapping[str, Validator]) -> None:
        """Raises ``ValidatorMissing`` if a field's ``check`` has no validator."""
        self.stream = stream
        self._validators: dict[str, Validator] = {}
        for name, spec in stream.fields.items():
            if spec.check is None:
                continue
            validator = validators.get(spec.check)
            if validator is None:
                raise ValidatorMissing(
                    f"Field {name} of stream {stream.name} asks for check {spec.check!r} "
                    f"but no validator of that name was supplied; supply it or remove the "
                    f"check.",
                    metadata={"stream": stream.name, "field": name, "check": spec.check},
                )
            self._validators[name] = validator
        self._key_spec = stream.fields[stream.key]
        self._others = [(n, s) for n, s in stream.fields.items() if n != stream.key]
        # Per field, what ``_value`` needs, looked up once rather than for every row.
        self._reads = {
            name: (
                spec.is_constant,
                spec.constant,
                spec.column or "",
                self._validators.get(name),
                coercer(spec),
            )
            for name, spec in stream.fields.items()
        }
        self._text = _tagged_json.record_writer(stream.fields)

    def apply(self, row: Mapping[str, object]) -> Record | Rejected | Excluded:
        """Map ``row`` (source column → value) to a record, a reject or an exclusion."""
        key_value = self._value(self.stream.key, self._key_spec, row)
        if isinstance(key_value, Rejected):
            if not self._passes(row):
                return Excluded(None)
            return key_value
        if key_value is None:
            if not self._passes(row):
                return Excluded(None)
            return Rejected(
                RejectReason.MISSING_VALUE,
                self.stream.key,
                f"the key field {self.stream.key} is empty; every row needs a key.",
            )
        key = key_text(key_value)
        if not self._passes(row):
            return Excluded(key)
        values: dict[str, object] = {self.stream.key: key_value}
        for name, spec in self._others:
            value = self._value(name, spec, row)
            if isinstance(value, Rejected):
                return Rejected(value.reason_code, value.field, value.message, key)
            values[name] = value
        text = self._text(values)  # the text ``fingerprint`` hashes, written faster
        return Record(
            key, MappingProxyType(values), hashlib.sha256(text.encode("utf-8")).hexdigest()
        )

    def key_of(self, row: Mapping[str, object]) -> str | None:
        """Return the record key of ``row`` if it can be read, else ``None``."""
        value = self._value(self.stream.key, self._key_spec, row)
        if value is None or isinstance(value, Rejected):
            return None
        return key_text(value)

    def _value(self, name: str, spec: FieldSpec, row: Mapping[str, object]) -> object:
        is_constant, constant, column, validator, convert = self._reads[name]
        try:
            value = convert(constant if is_constant else row.get(column))
        except CoercionError as e:
            return Rejected(e.reason, name, f"Field {name}: {e.message}")
        if value is None:
            if spec.required:
                return Rejected(
                    RejectReason.MISSING_VALUE,
                    name,
                    f"Field {name} is required but the source value is empty.",
                )
            return None
        if validator is not None:
            try:
                value = validator(key_text(value))
            except TongbanError as e:
                return Rejected(RejectReason.CHECK_FAILED, name, f"Field {name}: {e.message}")
            except ValueError as e:
                return Rejected(RejectReason.CHECK_FAILED, name, f"Field {name}: {e}")
        return value

    def _passes(self, row: Mapping[str, object]) -> bool:
        filters = self.stream.filters
        return not filters or all(_passes(f, row.get(f.column)) for f in filters)


def _filter_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Decimal) and value.is_finite():
        return format(canonical_decimal(value), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return unicodedata.normalize("NFC", str(value)).strip()


def _passes(rule: Filter, raw: object) -> bool:
    text = _filter_text(raw)
    if rule.not_null:
        return bool(text)
    if "equals" in rule.model_fields_set:
        return text is not None and text == _filter_text(rule.equals)
    if rule.in_ is not None:
        return text is not None and text in {_filter_text(v) for v in rule.in_}
    assert rule.not_in is not None
    return text is None or text not in {_filter_text(v) for v in rule.not_in}
