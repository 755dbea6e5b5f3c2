"""Sharing: datasets in the catalogue, grants, the sharing policy, and queries.

The policy (``policy.decide``) is a pure function over plain data; the stores are thin
asyncpg layers; the gRPC services in ``tongban.exchange.server`` compose them.
"""
