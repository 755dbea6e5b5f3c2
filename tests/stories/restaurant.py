"""The story's data, shared with ``tongban demo``."""

from tongban.exchange.cli.story_data import (
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    OWNER,
    OWNER_ID,
    PERSON,
    PURPOSE,
)

__all__ = [
    "CASE_ID",
    "COMPANY",
    "COMPANY_USCC",
    "ENTERPRISE",
    "OWNER",
    "OWNER_ID",
    "PERSON",
    "PURPOSE",
]
