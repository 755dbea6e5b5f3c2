"""Converting between aware datetimes and ``google.protobuf.Timestamp`` in the servicers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp

from tongban.exchange.errors import InvalidArgument

__all__ = ["instant", "timestamp"]


@overload
def timestamp(at: datetime) -> Timestamp: ...
@overload
def timestamp(at: None) -> None: ...
def timestamp(at: datetime | None) -> Timestamp | None:
    """The Timestamp of ``at`` (None stays None, i.e. the field is left unset)."""
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def instant(stamp: Timestamp, name: str) -> datetime | None:
    """The aware UTC datetime of a request field; None if unset; InvalidArgument if invalid."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{name} is not a valid instant.", metadata={"field": name}) from None
