"""The public Python client of a Tongban exchange node.

Department systems and adapters use it to call an exchange over mutual TLS with their
credential bundle::

    async with ExchangeClient(Bundle.load(Path("bundles/samr"))) as client:
        me = await client.who_am_i()
"""

from tongban.client.answers import verify_answer
from tongban.client.bundle import Bundle, BundleInvalid, write_bundle
from tongban.client.client import Answer, Event, ExchangeClient, Identity, PublishCounts, Record
from tongban.client.errors import ExchangeError

__all__ = [
    "Answer",
    "Bundle",
    "BundleInvalid",
    "Event",
    "ExchangeClient",
    "ExchangeError",
    "Identity",
    "PublishCounts",
    "Record",
    "verify_answer",
    "write_bundle",
]
