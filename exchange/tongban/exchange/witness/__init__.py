"""A C2SP tlog-witness (c2sp.org/tlog-witness) and the node's side of witnessing.

- ``service.Witness``: the protocol, bytes in, cosignature out; ``server.WitnessServer``
  its HTTP listener (``tongban witness serve``); ``state.WitnessState`` the SQLite file it
  remembers the latest cosigned checkpoint of each log in; ``keys`` its name and key.
- ``collector.Cosigner``: a node asking its witnesses to cosign each checkpoint it signs,
  and keeping their cosignatures.
- ``protocol``: the request and answer bodies and the refusals with their HTTP codes.

See docs/audit-log.md, "Witnesses".
"""

from tongban.exchange.witness.collector import (
    Cosigner,
    HttpWitnessTransport,
    WitnessEndpoint,
    parse_witness_endpoints,
)
from tongban.exchange.witness.keys import WitnessIdentity, init_witness, load_witness
from tongban.exchange.witness.protocol import WitnessRefusal
from tongban.exchange.witness.server import WitnessServer
from tongban.exchange.witness.service import Witness, log_keys
from tongban.exchange.witness.state import WitnessState

__all__ = [
    "Cosigner",
    "HttpWitnessTransport",
    "Witness",
    "WitnessEndpoint",
    "WitnessIdentity",
    "WitnessRefusal",
    "WitnessServer",
    "WitnessState",
    "init_witness",
    "load_witness",
    "log_keys",
    "parse_witness_endpoints",
]
