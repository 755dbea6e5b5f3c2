"""Dataset schemas, record validation, and the JSON storage form of values.

A schema is a tuple of typed fields with one key field. ``validate_record`` checks a
record (a mapping of Python values) against it and returns the record in canonical form,
so that equal data always compares, stores and signs the same:

- strings are NFC-normalised; lengths count code points after normalisation;
- datetimes are converted to UTC;
- decimals are exact ``Decimal`` values with no trailing fractional zeros and no
  positive exponent (``Decimal("1.50")`` → ``1.5``, ``Decimal("1E+2")`` → ``100``,
  ``-0`` → ``0``); their storage form is always plain notation (``format(d, "f")``),
  never exponent notation.

Error messages name the field and the problem but never quote the value: fields may hold
personal data, and error messages end up in logs.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType

from tongban.exchange.catalogue.errors import RecordInvalid, SchemaInvalid

__all__ = [
    "DECIMAL_MAX_DIGITS",
    "DEFAULT_STRING_MAX_LENGTH",
    "REFUSED_BUT_UNIT_SEPARATOR",
    "DatasetSchema",
    "FieldSpec",
    "FieldType",
    "build_schema",
    "canonical_to_json",
    "schema_from_json",
    "schema_to_json",
    "validate_record",
    "value_from_json",
    "value_to_json",
]

DEFAULT_STRING_MAX_LENGTH = 4_000
"""The limit on a string field whose ``max_length`` is ``None``."""
DECIMAL_MAX_DIGITS = 38
"""At most this many digits in a decimal's plain notation (leading zeros not counted)."""

_MAX_FIELDS = 200
_MAX_LENGTH_LIMIT = 100_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Category Cc except \t, \n and \r: CRLF text from Windows-based department systems is kept.
# Written without U+001F, the unit separator, and with it, so that a scan of values joined
# by it can use the same class (``REFUSED_BUT_UNIT_SEPARATOR``).
_CONTROL_BUT_US = r"\x00-\x08\x0B\x0C\x0E-\x1E\x7F-\x9F"
_SURROGATES = r"\uD800-\uDFFF"
_CONTROL = re.compile(f"[{_CONTROL_BUT_US}\\x1F]")
_SURROGATE = re.compile(f"[{_SURROGATES}]")
REFUSED_BUT_UNIT_SEPARATOR = _CONTROL_BUT_US + _SURROGATES
"""The characters a text value may not hold (controls and lone surrogates), as the body
of a regular expression's character class, all but U+001F."""
# Plain notation, no leading zeros, no trailing fractional zeros, not -0: str() of a
# decimal that is its own canonical form.
_CANONICAL_DECIMAL = re.compile(r"0|-?(?:0\.[0-9]*[1-9]|[1-9][0-9]*(?:\.[0-9]*[1-9])?)")
_REFUSED = re.compile(f"[{REFUSED_BUT_UNIT_SEPARATOR}\\x1F]")  # either
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


class FieldType(enum.StrEnum):
    """The type of a field, and so the Python type of its values."""

    STRING = "string"
    """``str``."""
    INTEGER = "integer"
    """``int`` (not ``bool``) within the signed 64-bit range."""
    DECIMAL = "decimal"
    """A finite ``decimal.Decimal`` (or ``int``) of at most 38 digits."""
    BOOLEAN = "boolean"
    """``bool``."""
    DATE = "date"
    """``datetime.date`` (not ``datetime``)."""
    DATETIME = "datetime"
    """A timezone-aware ``datetime.datetime``; stored in UTC."""


@dataclass(frozen=True)
class FieldSpec:
    """One field of a dataset."""

    name: str
    """Lower-case identifier: a letter, then letters, digits or ``_``; at most 63."""
    type: FieldType
    """The type every non-null value must have."""
    description: str = ""
    """What the field holds, for people reading the catalogue."""
    personal: bool = False
    """Whether the field holds personal information (个人信息)."""
    required: bool = False
    """Whether every record must carry a non-null value."""
    max_length: int | None = None
    """String fields only: at most this many characters (1-100000); ``None`` means 4000."""


@dataclass(frozen=True)
class DatasetSchema:
    """The fields of a dataset and the field that keys its records.

    Constructing one validates it (see ``build_schema``), so every instance is valid.
    """

    fields: tuple[FieldSpec, ...]
    """The fields, in order."""
    key_field: str
    """The name of a required string field that identifies a record."""
    _by_name: Mapping[str, FieldSpec] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        _check_schema(self.fields, self.key_field)
        object.__setattr__(self, "_by_name", MappingProxyType({f.name: f for f in self.fields}))

    def field(self, name: str) -> FieldSpec | None:
        """Return the field called ``name``, or ``None`` if the schema has none."""
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in self.fields)


def build_schema(fields: Sequence[FieldSpec], key_field: str) -> DatasetSchema:
    """Return a schema of ``fields`` keyed by ``key_field``.

    Raises ``SchemaInvalid`` unless there are 1-200 fields with unique, well-formed names,
    ``max_length`` appears only on string fields and lies in 1-100000, and ``key_field``
    names a required string field.
    """
    return DatasetSchema(tuple(fields), key_field)


def _check_schema(fields: tuple[FieldSpec, ...], key_field: str) -> None:
    if not 1 <= len(fields) <= _MAX_FIELDS:
        raise SchemaInvalid(
            f"A dataset schema needs 1 to {_MAX_FIELDS} fields but this one has {len(fields)}."
        )
    seen: set[str] = set()
    for spec in fields:
        name = spec.name
        meta = {"field": name[:64]}
        if not _NAME.fullmatch(name):
            raise SchemaInvalid(
                f"Field name {name[:64]!r} is not allowed; use a lower-case letter followed "
                f"by lower-case letters, digits or '_', at most 63 characters.",
                metadata=meta,
            )
        if name in seen:
            raise SchemaInvalid(
                f"Field {name} appears twice; give each field a unique name.", metadata=meta
            )
        seen.add(name)
        if spec.max_length is None:
            continue
        if spec.type is not FieldType.STRING:
            raise SchemaInvalid(
                f"Field {name} is of type {spec.type} and sets max_length; only string "
                f"fields take a max_length.",
                metadata=meta,
            )
        if not 1 <= spec.max_length <= _MAX_LENGTH_LIMIT:
            raise SchemaInvalid(
                f"Field {name} has max_length {spec.max_length}; choose a value from 1 "
                f"to {_MAX_LENGTH_LIMIT}.",
                metadata=meta,
            )
    key = next((f for f in fields if f.name == key_field), None)
    meta = {"field": key_field[:64]}
    if key is None:
        raise SchemaInvalid(
            f"The key field {key_field[:64]!r} is not a field of the schema; name one of "
            f"its string fields.",
            metadata=meta,
        )
    if key.type is not FieldType.STRING or not key.required:
        raise SchemaInvalid(
            f"The key field {key_field} must be a required string field, but it is "
            f"{'a required' if key.required else 'an optional'} {key.type} field.",
            metadata=meta,
        )


def validate_record(schema: DatasetSchema, data: Mapping[str, object]) -> dict[str, object]:
    """Return ``data`` in canonical form with every field of ``schema`` present.

    Missing or null optional fields become ``None``; values are canonicalised as the
    module docstring describes. Raises ``RecordInvalid`` (metadata ``field`` and
    ``problem``) for an unknown field, a missing required field, or a bad value.
    """
    keys: Iterable[object] = data.keys()
    known = schema._by_name
    for key in keys:
        if key not in known:  # also every key that is not a str
            shown = str(key)[:64]
            raise _record_error(
                shown,
                "unknown_field",
                f"Field {shown!r} is not in the dataset's schema; remove it or add it to "
                f"the schema.",
            )
    record: dict[str, object] = {}
    for spec in schema.fields:
        value = data.get(spec.name)
        if value is None:
            if spec.required:
                raise _record_error(
                    spec.name,
                    "missing",
                    f"Field {spec.name} is required but missing or null; supply a value.",
                )
            record[spec.name] = None
            continue
        limit = spec.max_length or DEFAULT_STRING_MAX_LENGTH
        if spec.type is FieldType.STRING:  # most fields: skip _canonical's dispatch
            record[spec.name] = _canonical_string(value, spec.name, limit)
        else:
            record[spec.name] = _canonical(spec.type, value, spec.name, limit)
    return record


def schema_to_json(schema: DatasetSchema) -> dict[str, object]:
    """Return ``schema`` as a JSON-compatible dict (for a jsonb column)."""
    return {
        "key_field": schema.key_field,
        "fields": [
            {
                "name": f.name,
                "type": str(f.type),
                "description": f.description,
                "personal": f.personal,
                "required": f.required,
                "max_length": f.max_length,
            }
            for f in schema.fields
        ],
    }


def schema_from_json(obj: object) -> DatasetSchema:
    """Return the schema that ``schema_to_json`` wrote as ``obj``.

    ``description``, ``personal``, ``required`` and ``max_length`` may be left out
    (defaults ``""``, false, false, null). Raises ``SchemaInvalid`` for anything
    malformed: a missing or unknown key, a value of the wrong JSON type, an unknown field
    type, or a schema that ``build_schema`` refuses.
    """
    if not isinstance(obj, Mapping) or set(obj) != {"fields", "key_field"}:
        raise SchemaInvalid(
            "A stored schema must be a JSON object with exactly the keys 'fields' and "
            "'key_field'; check what was written to the catalogue."
        )
    fields, key_field = obj["fields"], obj["key_field"]
    if not isinstance(fields, list) or not isinstance(key_field, str):
        raise SchemaInvalid(
            "A stored schema's 'fields' must be a list and its 'key_field' a string; check "
            "what was written to the catalogue."
        )
    return build_schema([_field_from_json(i, item) for i, item in enumerate(fields)], key_field)


_FIELD_KEYS = {"name", "type", "description", "personal", "required", "max_length"}
_TYPE_NAMES = {t.value for t in FieldType}


def _field_from_json(index: int, item: object) -> FieldSpec:
    if not isinstance(item, Mapping) or not set(item) <= _FIELD_KEYS:
        raise SchemaInvalid(
            f"Field {index + 1} of the stored schema must be a JSON object with only the "
            f"keys {', '.join(sorted(_FIELD_KEYS))}."
        )
    name = item.get("name")
    if not isinstance(name, str):
        raise SchemaInvalid(f"Field {index + 1} of the stored schema needs a string 'name'.")
    meta = {"field": name[:64]}
    type_name = item.get("type")
    if not isinstance(type_name, str) or type_name not in _TYPE_NAMES:
        choices = ", ".join(FieldType)
        raise SchemaInvalid(
            f"Field {name[:64]!r} of the stored schema has no valid 'type'; use one of {choices}.",
            metadata=meta,
        )
    description = item.get("description", "")
    personal = item.get("personal", False)
    required = item.get("required", False)
    max_length = item.get("max_length")
    if (
        not isinstance(description, str)
        or not isinstance(personal, bool)
        or not isinstance(required, bool)
        or not (max_length is None or type(max_length) is int)
    ):
        raise SchemaInvalid(
            f"Field {name[:64]!r} of the stored schema needs a string 'description', "
            f"boolean 'personal' and 'required', and an integer or null 'max_length'.",
            metadata=meta,
        )
    return FieldSpec(
        name=name,
        type=FieldType(type_name),
        description=description,
        personal=personal,
        required=required,
        max_length=max_length,
    )


# Storage forms that are strings to parse: their exact syntax, then the parser.
_PARSERS: dict[FieldType, tuple[re.Pattern[str], Callable[[str], object]]] = {
    FieldType.DECIMAL: (_DECIMAL_TEXT, Decimal),
    FieldType.DATE: (_DATE_TEXT, date.fromisoformat),
    FieldType.DATETIME: (_DATETIME_TEXT, datetime.fromisoformat),
}


def value_to_json(type: FieldType, value: object, *, field: str = "value") -> object:
    """Return the JSON storage form of ``value``, a value of a field of type ``type``.

    ``None`` → null; STRING → str, INTEGER → int, BOOLEAN → bool (as they are); DECIMAL
    → exact plain-notation string (``"-12.5"``); DATE → ``"YYYY-MM-DD"``; DATETIME →
    RFC 3339 in UTC ending in ``Z``, with microseconds only when non-zero. The value is
    canonicalised first. Raises ``RecordInvalid`` (naming ``field``) if it is not a valid
    value of ``type``; string length is not limited here (that is the schema's job).
    """
    if value is None:
        return None
    canonical = _canonical(type, value, field, None)
    if isinstance(canonical, Decimal):
        return format(canonical, "f")
    if isinstance(canonical, datetime):
        timespec = "microseconds" if canonical.microsecond else "seconds"
        return canonical.isoformat(timespec=timespec).removesuffix("+00:00") + "Z"
    if isinstance(canonical, date):
        return canonical.isoformat()
    return canonical


def canonical_to_json(value: object) -> object:
    """Return the JSON storage form of a value that is already canonical (as
    ``validate_record`` returns it): what ``value_to_json`` returns, without checking
    the value again. Publishing converts every field of every record, so the second
    check would double the cost of the hot path."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        timespec = "microseconds" if value.microsecond else "seconds"
        return value.isoformat(timespec=timespec).removesuffix("+00:00") + "Z"
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a canonical field value")


def value_from_json(type: FieldType, value: object, *, field: str = "value") -> object:
    """Return the canonical Python value of ``value``, a JSON storage form of ``type``.

    The inverse of ``value_to_json``. DECIMAL takes a plain-notation string (no
    exponent); DATETIME takes RFC 3339 with ``Z`` or a numeric offset and returns UTC.
    Raises ``RecordInvalid`` (naming ``field``) for a JSON value of the wrong type or
    format, or one that is not a valid value of ``type``.
    """
    if value is None:
        return None
    parser = _PARSERS.get(type)
    if parser is not None:
        pattern, parse = parser
        if not isinstance(value, str):
            raise _type_error(field, f"a string holding a {type}", value)
        if not pattern.fullmatch(value):
            raise _record_error(
                field, "format", f"Field {field} does not hold a {type} in storage form."
            )
        try:
            value = parse(value)
        except ValueError:
            raise _record_error(
                field, "format", f"Field {field} holds a {type} that does not exist."
            ) from None
    return _canonical(type, value, field, None)


def _canonical(type_: FieldType, value: object, field: str, limit: int | None) -> object:
    """Return ``value`` canonicalised for ``type_`` or raise ``RecordInvalid``."""
    match type_:
        case FieldType.STRING:
            return _canonical_string(value, field, limit)
        case FieldType.INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(field, "an integer", value)
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise _record_error(
                    field,
                    "out_of_range",
                    f"Field {field} is outside the 64-bit integer range; store it as a "
                    f"decimal instead.",
                )
            return int(value)
        case FieldType.DECIMAL:
            return _canonical_decimal(value, field)
        case FieldType.BOOLEAN:
            if not isinstance(value, bool):
                raise _type_error(field, "a boolean", value)
            return value
        case FieldType.DATE:
            if isinstance(value, datetime) or not isinstance(value, date):
                raise _type_error(field, "a date (datetime.date, not datetime)", value)
            return value
        case FieldType.DATETIME:
            if not isinstance(value, datetime):
                raise _type_error(field, "a timezone-aware datetime", value)
            if value.utcoffset() is None:
                raise _record_error(
                    field,
                    "naive_datetime",
                    f"Field {field} is a datetime without a timezone; attach one "
                    f"(for Beijing time, UTC+08:00).",
                )
            try:
                return value.astimezone(UTC)
            except OverflowError:
                raise _record_error(
                    field, "out_of_range", f"Field {field} is a datetime outside years 1-9999 UTC."
                ) from None


def _canonical_string(value: object, field: str, limit: int | None) -> str:
    if not isinstance(value, str):
        raise _type_error(field, "a string", value)
    if _REFUSED.search(value) is None:  # one scan for the common case, either error below
        text = value if value.isascii() else unicodedata.normalize("NFC", value)
        if limit is not None and len(text) > limit:
            raise _too_long(field, text, limit)
        return text
    if _CONTROL.search(value):
        raise _record_error(
            field,
            "control_character",
            f"Field {field} contains a control character; only tab, line feed and "
            "carriage return are allowed (remove NUL and other control characters).",
        )
    if _SURROGATE.search(value):
        raise _record_error(
            field,
            "unpaired_surrogate",
            f"Field {field} contains an unpaired UTF-16 surrogate; it is not valid Unicode "
            f"text, so fix the text encoding where it was read.",
        )
    raise AssertionError("_REFUSED matches only what _CONTROL or _SURROGATE matches")


def _too_long(field: str, text: str, limit: int) -> RecordInvalid:
    return _record_error(
        field,
        "too_long",
        f"Field {field} is {len(text)} characters long; the schema allows at most {limit}.",
    )


def _canonical_decimal(value: object, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise _type_error(field, "a decimal (decimal.Decimal or int)", value)
    number = Decimal(value)
    if not number.is_finite():
        raise _record_error(
            field, "not_finite", f"Field {field} is NaN or infinite; supply a finite decimal."
        )
    text = str(number)
    if len(text) <= DECIMAL_MAX_DIGITS and _CANONICAL_DECIMAL.fullmatch(text):
        # Already canonical (what the code below would rebuild digit by digit), as
        # nearly every value sent is: no exponent, no trailing fractional zero, not -0.
        return number
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    text = "".join(map(str, digits))  # no leading zeros unless the value is zero
    if text.strip("0") == "":
        return Decimal(0)
    # Done on the digits rather than with normalize() or quantize(): those round to the
    # context precision (28 digits by default), and we accept up to 38.
    zeros = min(len(text) - len(text.rstrip("0")), max(-exponent, 0))
    text, exponent = text[: len(text) - zeros], exponent + zeros
    plain_digits = len(text) + exponent if exponent >= 0 else max(len(text), -exponent)
    if plain_digits > DECIMAL_MAX_DIGITS:
        raise _record_error(
            field,
            "out_of_range",
            f"Field {field} has {plain_digits} digits; decimals may have at most "
            f"{DECIMAL_MAX_DIGITS}.",
        )
    if exponent > 0:
        text, exponent = text + "0" * exponent, 0
    return Decimal(f"{'-' if sign else ''}{text}E{exponent}")


def _type_error(field: str, expected: str, value: object) -> RecordInvalid:
    return _record_error(
        field, "type", f"Field {field} must be {expected}, not {type(value).__name__}."
    )


def _record_error(field: str, problem: str, message: str) -> RecordInvalid:
    return RecordInvalid(message, metadata={"field": field, "problem": problem})
