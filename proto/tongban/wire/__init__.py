"""Hand-written helpers for the ``tongban.v1`` messages that both ends share: the client
and the node's servicers import them from here, so neither imports the other."""
