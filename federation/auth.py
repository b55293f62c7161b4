"""Who is calling: the types of the one authentication path.

Every Federation and Query RPC (but the public `GetDescriptor`) is authenticated before its
handler runs: the caller's signed envelope is parsed, the caller must be a pinned peer or a
registered partner, the signature, audience, method and freshness must check, and the nonce
must be new. The handler then receives an `Authenticated` call and never sees an
unauthenticated request. A pinned peer whose signature does not verify under the key known for
it may have rotated its key: its descriptor is refreshed once, within a bound, and the request
checked again under the key its history then leads to (`check_signed`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from federation import envelope
from node import ids
from node.api.v1 import envelope_pb2
from node.audit import RefusalTally
from node.clock import Clock
from node.errors import Reason, Rejected
from node.storage import Storage


@dataclass(frozen=True)
class Caller:
    kind: str  # "hub" or "partner"
    id: str
    public_key: bytes  # the key its requests are signed with now
    name: str
    identity_key: bytes = b""  # a hub's genesis key, which agreements name (after rotations, not public_key)

    @property
    def agreement_key(self) -> bytes:
        return self.identity_key or self.public_key


@dataclass(frozen=True)
class Authenticated:
    """A request whose envelope passed every check, with the caller it was checked against."""

    caller: Caller
    request: envelope_pb2.Request  # the parsed envelope body
    signed: envelope_pb2.SignedRequest  # the exact bytes the caller signed
    retry: bool = False  # the same signed request came before (only for RETRYABLE_METHODS)


# Methods whose exact signed request may be sent again: a query whose first answer was lost
# (the entry hub was killed) is retried with the same bytes, and every hub answers it from
# the answer it kept, charging nothing again (federation/query/provider.py). Any other
# replayed request is refused.
RETRYABLE_METHODS = frozenset({"/smartregion.v1.Query/Run"})


class Authenticator:
    """The one authentication path. Deny by default: only a pinned caller's fresh, correctly
    signed, never-seen request passes. Refusals are counted per source and minute
    (node/audit.py RefusalTally), not written one by one: anyone can send them."""

    def __init__(self, storage: Storage, own_id: str, clock: Clock,
                 known_caller: Callable[[str], Awaitable[Caller | None]],
                 heard_from: Callable[[Caller], Awaitable[None]], refusals: RefusalTally,
                 former_caller: Callable[[str], Awaitable[tuple[Caller, str] | None]] | None = None,
                 follow: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._storage = storage
        self._follow = follow  # refresh a peer's descriptor now (bounded: federation/outbox.py `follow`)
        self._former_caller = former_caller
        self._own_id = own_id
        self._clock = clock
        self._known_caller = known_caller
        self._heard_from = heard_from
        self.refusals = refusals

    async def authenticate(self, signed: envelope_pb2.SignedRequest, method: str, source: str = "unknown") -> Authenticated:
        """`method` is the full gRPC method the request arrived on; `source` the network address
        it came from (for the refusal counts)."""
        try:
            request = envelope.parse(signed)
            ids.from_text(request.caller_id, "caller id")
        except (envelope.EnvelopeError, ValueError) as exc:
            message = str(exc)[:200]
            raise await self._refuse(source, "unknown", method, Reason.UNAUTHENTICATED, message) from None
        caller = await self._known_caller(request.caller_id)
        if caller is None:
            raise await self._refuse(source, f"unknown:{request.caller_id}", method, Reason.UNAUTHENTICATED,
                                     await self._unknown_caller_message(signed, request, method))
        at = self._clock.now_ms()
        try:
            caller = await self.check_signed(signed, request, caller, self._own_id, method, at)
        except envelope.EnvelopeError as exc:
            raise await self._refuse(source, caller.id, method, Reason.UNAUTHENTICATED, str(exc)) from None
        expires = request.issued_at_ms + 2 * envelope.MAX_CLOCK_SKEW_MS
        retry = False
        if not await self._storage.write(lambda s: s.remember_nonce(caller.id, request.nonce, expires, at)):
            if method not in RETRYABLE_METHODS:
                raise await self._refuse(source, caller.id, method, Reason.ALREADY_EXISTS,
                                         "this request was already received (replayed nonce)")
            retry = True
        await self._heard_from(caller)
        return Authenticated(caller, request, signed, retry)

    async def check_signed(self, signed: envelope_pb2.SignedRequest, request: envelope_pb2.Request, caller: Caller,
                           audience: str, method: str, now_ms: int) -> Caller:
        """envelope.check under the key known for `caller`. A peer hub whose signature does not
        verify may have rotated its key: its descriptor is refreshed (its key history followed
        only where it continues the one pinned) and the request checked once more, under the
        key then known. Returns the caller as checked; raises EnvelopeError."""
        try:
            envelope.check(signed, request, caller.public_key, audience, method, now_ms)
            return caller
        except envelope.SignatureMismatch:
            if caller.kind != "hub" or self._follow is None or not await self._follow(caller.id):
                raise
            followed = await self._known_caller(caller.id)
            if followed is None or followed.public_key == caller.public_key:
                raise  # its history leads to no other key: refused as before
        envelope.check(signed, request, followed.public_key, audience, method, now_ms)
        return followed

    async def _unknown_caller_message(self, signed: envelope_pb2.SignedRequest, request: envelope_pb2.Request,
                                      method: str) -> str:
        """A removed peer or partner is told so, but only if it proves to be that party (its
        request verifies under the key it had); anyone else learns nothing of who was known."""
        former = await self._former_caller(request.caller_id) if self._former_caller else None
        if former is not None:
            caller, message = former
            try:
                envelope.check(signed, request, caller.public_key, self._own_id, method, self._clock.now_ms())
                return message
            except envelope.EnvelopeError:
                pass
        return f"caller {request.caller_id!r} is not a peer or partner of this hub"

    async def _refuse(self, source: str, actor: str, method: str, reason: Reason, message: str) -> Rejected:
        outcome = "replayed" if reason is Reason.ALREADY_EXISTS else "unauthenticated"
        await self.refusals.count(source, actor, method, outcome, message)
        return Rejected(reason, message)


def source_address(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:127.0.0.1:5123" -> "ipv4:127.0.0.1")."""
    address, sep, port = peer.rpartition(":")
    return address if sep and port.isdigit() else peer
