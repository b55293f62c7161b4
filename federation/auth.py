"""Who is calling: the types of the one authentication path.

Every Federation and Query RPC (but the public `GetDescriptor`) is authenticated before its
handler runs: the caller's signed envelope is parsed, the caller must be a pinned peer or a
registered partner, the signature, audience, method and freshness must check, and the nonce
must be new. The handler then receives an `Authenticated` call and never sees an
unauthenticated request.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.api.v1 import envelope_pb2


@dataclass(frozen=True)
class Caller:
    kind: str  # "hub" or "partner"
    id: str
    public_key: bytes
    name: str


@dataclass(frozen=True)
class Authenticated:
    """A request whose envelope passed every check, with the caller it was checked against."""

    caller: Caller
    request: envelope_pb2.Request  # the parsed envelope body
    signed: envelope_pb2.SignedRequest  # the exact bytes the caller signed
