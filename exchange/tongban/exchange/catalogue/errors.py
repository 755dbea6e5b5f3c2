"""Errors the catalogue's pure logic raises, each with a stable reason code.

All three are caller mistakes (bad input), so they map to ``INVALID_ARGUMENT``. Their
``metadata`` says what went wrong in machine-readable form; never match on the message.
Messages never quote a record's values, since those may be personal data.
"""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = ["InvalidSubjectId", "RecordInvalid", "SchemaInvalid"]


class InvalidSubjectId(TongbanError):
    """A subject identifier (统一社会信用代码, 公民身份号码 or other id) is malformed.

    Metadata: ``subject_id`` (as given, at most 40 characters), ``kind``, ``problem`` and,
    when only the check character is wrong, ``expected_check_character``.
    """

    reason = "INVALID_SUBJECT_ID"
    status = "INVALID_ARGUMENT"


class SchemaInvalid(TongbanError):
    """A dataset schema is malformed. Metadata: ``field`` where one field is at fault."""

    reason = "SCHEMA_INVALID"
    status = "INVALID_ARGUMENT"


class RecordInvalid(TongbanError):
    """A record does not match its dataset schema.

    Metadata: ``field`` and ``problem`` (``missing``, ``type``, ``too_long``,
    ``unknown_field``, ``out_of_range``, ``not_finite``, ``naive_datetime``,
    ``control_character``, ``unpaired_surrogate`` or ``format``).
    """

    reason = "RECORD_INVALID"
    status = "INVALID_ARGUMENT"
