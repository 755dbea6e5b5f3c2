"""The story's data, shared with ``tongban demo``."""

from tongban.exchange.cli.story_data import (
    APPROVAL_DECISION,
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    DECISION,
    DECISION_NO,
    ENTERPRISE,
    INSPECTION,
    INSPECTION_NO,
    INSPECTION_RESULT,
    OWNER,
    OWNER_ID,
    PERSON,
    PURPOSE,
)

__all__ = [
    "APPROVAL_DECISION",
    "CASE_ID",
    "COMPANY",
    "COMPANY_USCC",
    "DECISION",
    "DECISION_NO",
    "ENTERPRISE",
    "INSPECTION",
    "INSPECTION_NO",
    "INSPECTION_RESULT",
    "OWNER",
    "OWNER_ID",
    "PERSON",
    "PURPOSE",
]
