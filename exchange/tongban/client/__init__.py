"""The public Python client of a Tongban exchange node.

Department systems and adapters use it to call an exchange over mutual TLS with their
credential bundle::

    async with ExchangeClient(Bundle.load(Path("bundles/samr"))) as client:
        me = await client.who_am_i()
"""

from tongban.client.bundle import Bundle, BundleInvalid, write_bundle
from tongban.client.client import ExchangeClient, Identity
from tongban.client.errors import ExchangeError

__all__ = ["Bundle", "BundleInvalid", "ExchangeClient", "ExchangeError", "Identity", "write_bundle"]
