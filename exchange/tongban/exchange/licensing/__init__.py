"""The licence service of an exchange node: custodial seals, issuance, status lists,
trust lists, fetching for approvals, verification, sealing PDFs and resolving an
application's materials (免提交). Pure licence logic lives in ``tongban.licence``; this
package adds the storage (asyncpg), the access log and the change events.
"""

from tongban.exchange.licensing.custody import Seal, SealVault
from tongban.exchange.licensing.errors import (
    LicenceNotFound,
    LicenceNotPermitted,
    SealNotEnrolled,
    ServiceItemUnknown,
    StatusChangeInvalid,
)
from tongban.exchange.licensing.issuance import IssueInput, StatusAction
from tongban.exchange.licensing.register import LicenceView
from tongban.exchange.licensing.service import Licensing

__all__ = [
    "IssueInput",
    "LicenceNotFound",
    "LicenceNotPermitted",
    "LicenceView",
    "Licensing",
    "Seal",
    "SealNotEnrolled",
    "SealVault",
    "ServiceItemUnknown",
    "StatusAction",
    "StatusChangeInvalid",
]
