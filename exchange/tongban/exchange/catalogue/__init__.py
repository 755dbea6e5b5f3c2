"""The data catalogue's pure logic: subject ids, dataset schemas, canonical JSON, calendars.

Nothing here does I/O. ``subject_ids`` checks 统一社会信用代码 and 公民身份号码; ``schema``
defines datasets and validates records against them; ``canonical`` writes the RFC 8785
bytes that signatures cover; ``calendar`` counts working days for grant deadlines.
"""

from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.catalogue.canonical import MAX_SAFE_INTEGER, canonical_json
from tongban.exchange.catalogue.errors import InvalidSubjectId, RecordInvalid, SchemaInvalid
from tongban.exchange.catalogue.schema import (
    DECIMAL_MAX_DIGITS,
    DEFAULT_STRING_MAX_LENGTH,
    DatasetSchema,
    FieldSpec,
    FieldType,
    build_schema,
    canonical_to_json,
    schema_from_json,
    schema_to_json,
    validate_record,
    value_from_json,
    value_to_json,
)
from tongban.exchange.catalogue.subject_ids import (
    SubjectKind,
    citizen_id_check_digit,
    uscc_check_character,
    validate_subject_id,
)

__all__ = [
    "DECIMAL_MAX_DIGITS",
    "DEFAULT_STRING_MAX_LENGTH",
    "MAX_SAFE_INTEGER",
    "DatasetSchema",
    "FieldSpec",
    "FieldType",
    "InvalidSubjectId",
    "RecordInvalid",
    "SchemaInvalid",
    "SubjectKind",
    "WorkingCalendar",
    "build_schema",
    "canonical_json",
    "canonical_to_json",
    "citizen_id_check_digit",
    "schema_from_json",
    "schema_to_json",
    "uscc_check_character",
    "validate_record",
    "validate_subject_id",
    "value_from_json",
    "value_to_json",
]
