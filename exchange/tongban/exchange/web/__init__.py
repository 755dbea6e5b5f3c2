"""The web console: licence verification for anyone, the access log for auditors, the
subject view, and the catalogue, served by the node's HTTP listener (docs/web.md)."""

from tongban.exchange.web.app import WebConsole
from tongban.exchange.web.sessions import LinkStore, SessionStore

__all__ = ["LinkStore", "SessionStore", "WebConsole"]
