"""A hub's identity-key history: the genesis key (whose hash is the hub id, for ever) and the
rotation statements that lead from it to the key the hub signs with today.

A rotation statement is signed by BOTH the old and the new key over exact bytes
(docs/protocol.md, "Key rotation statements"):

    payload   = hub_id (16 bytes) || sequence (u32, big-endian, 1 for the first rotation)
                || old_key (32) || new_key (32) || rotated_at_ms (u64, big-endian)      92 bytes
    statement = payload || Ed25519(old_key, KEY_ROTATION || payload)
                        || Ed25519(new_key, KEY_ROTATION || payload)                   220 bytes

The old key's signature says "my successor is new_key"; the new key's says its holder agreed
(nobody can name someone else's key as theirs). A chain is valid when statement i carries
sequence i, continues from the key the previous one ended with, never returns to a key used
before, and both signatures verify. A hub id with no statements is its genesis key alone.

Which signatures a chain vouches for: a signature by ANY key of a valid chain is accepted by the
offline verifiers (agreements, answers, audit exports). The signed documents' own timestamps are
written by the signer, so checking "the key was current at that time" would stop nobody who holds
a leaked old key (they back-date); it only looks stricter. What stops a leaked key is online:
peers follow the chain and from then on accept requests only under the current key, and a fork
(the leaked key signing a different successor) is refused. docs/operations.md says what to do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node import ids
from node.signing import Domain, sign, verify

PAYLOAD_LENGTH = ids.ID_BYTES + 4 + 32 + 32 + 8
STATEMENT_LENGTH = PAYLOAD_LENGTH + 64 + 64
MAX_ROTATIONS = 1000  # a bound on what a peer parses from a descriptor (a rotation a week for 19 years)
# Online, a hub's signature counts only under the key it signs with now, or under the key its
# last rotation retired if that rotation is this recent: an answer signed partly before and
# partly after a live rotation (a partial, then the summary) is still accepted. The same bound
# as a request's freshness (federation/envelope.py MAX_CLOCK_SKEW_MS).
ROTATION_GRACE_MS = 5 * 60 * 1000
_LAYOUT = struct.Struct(f">{ids.ID_BYTES}sI32s32sQ")


class ChainError(ValueError):
    """A key history that does not hold together; the message says where and how."""


@dataclass(frozen=True)
class RotationStatement:
    hub_id: bytes
    sequence: int
    old_key: bytes
    new_key: bytes
    rotated_at_ms: int
    old_signature: bytes
    new_signature: bytes

    @property
    def payload(self) -> bytes:
        return _LAYOUT.pack(self.hub_id, self.sequence, self.old_key, self.new_key, self.rotated_at_ms)

    def to_bytes(self) -> bytes:
        return self.payload + self.old_signature + self.new_signature

    @classmethod
    def from_bytes(cls, data: bytes) -> RotationStatement:
        if len(data) != STATEMENT_LENGTH:
            raise ChainError(f"a rotation statement is {STATEMENT_LENGTH} bytes, got {len(data)}")
        hub_id, sequence, old_key, new_key, at_ms = _LAYOUT.unpack(data[:PAYLOAD_LENGTH])
        return cls(hub_id, sequence, old_key, new_key, at_ms,
                   data[PAYLOAD_LENGTH:PAYLOAD_LENGTH + 64], data[PAYLOAD_LENGTH + 64:])


def sign_rotation(hub_id: bytes, sequence: int, old_key: Ed25519PrivateKey, new_key: Ed25519PrivateKey,
                  rotated_at_ms: int) -> RotationStatement:
    old_raw, new_raw = _raw(old_key), _raw(new_key)
    payload = _LAYOUT.pack(hub_id, sequence, old_raw, new_raw, rotated_at_ms)
    return RotationStatement(hub_id, sequence, old_raw, new_raw, rotated_at_ms,
                             sign(old_key, Domain.KEY_ROTATION, payload), sign(new_key, Domain.KEY_ROTATION, payload))


def _raw(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class KeyChain:
    """A verified key history. Build one only through `KeyChain.verify` (or `genesis_only`)."""

    hub_id: bytes
    genesis: bytes
    statements: tuple[RotationStatement, ...]

    @property
    def current(self) -> bytes:
        return self.statements[-1].new_key if self.statements else self.genesis

    @property
    def keys(self) -> tuple[bytes, ...]:
        return (self.genesis, *(s.new_key for s in self.statements))

    @property
    def hub_id_text(self) -> str:
        return ids.to_text(self.hub_id)

    def encoded(self) -> list[bytes]:
        return [s.to_bytes() for s in self.statements]

    @classmethod
    def genesis_only(cls, genesis: bytes) -> KeyChain:
        return cls(ids.hub_id_from_public_key(genesis), genesis, ())

    @classmethod
    def verify(cls, hub_id: str | bytes, statements: Iterable[bytes], *, current_key: bytes | None = None) -> KeyChain:
        """Check a history for hub `hub_id`. With no statements the hub's key is the one that
        hashes to the id, which the caller passes as `current_key` (it is the genesis key)."""
        raw_id = ids.from_text(hub_id, "hub id") if isinstance(hub_id, str) else hub_id
        parsed = [RotationStatement.from_bytes(bytes(s)) for s in _bounded(statements)]
        if not parsed:
            if current_key is None or len(current_key) != 32 or ids.hub_id_from_public_key(current_key) != raw_id:
                raise ChainError(f"hub {ids.to_text(raw_id)} has no key history and the key given is not its genesis key")
            return cls(raw_id, bytes(current_key), ())
        genesis = parsed[0].old_key
        if ids.hub_id_from_public_key(genesis) != raw_id:
            raise ChainError(f"the key history does not start at the genesis key of hub {ids.to_text(raw_id)}")
        seen = {genesis}
        previous_at = 0
        for position, statement in enumerate(parsed, start=1):
            where = f"rotation {position} of hub {ids.to_text(raw_id)}"
            if statement.hub_id != raw_id:
                raise ChainError(f"{where} is a statement of hub {ids.to_text(statement.hub_id)}")
            if statement.sequence != position:
                raise ChainError(f"{where} carries sequence number {statement.sequence}, expected {position}")
            expected_old = parsed[position - 2].new_key if position > 1 else genesis
            if statement.old_key != expected_old:
                raise ChainError(f"{where} does not continue from the key the previous rotation ended with")
            if statement.new_key in seen:
                raise ChainError(f"{where} returns to a key the hub used before")
            if statement.rotated_at_ms < previous_at:
                raise ChainError(f"{where} is dated before the rotation it follows")
            if not verify(statement.old_key, Domain.KEY_ROTATION, statement.payload, statement.old_signature):
                raise ChainError(f"{where} is not signed by the old key")
            if not verify(statement.new_key, Domain.KEY_ROTATION, statement.payload, statement.new_signature):
                raise ChainError(f"{where} is not signed by the new key")
            seen.add(statement.new_key)
            previous_at = statement.rotated_at_ms
        chain = cls(raw_id, genesis, tuple(parsed))
        if current_key is not None and bytes(current_key) != chain.current:
            raise ChainError(f"the key history of hub {ids.to_text(raw_id)} ends at another key than the one given")
        return chain

    def signs_now(self, key: bytes, now_ms: int) -> bool:
        """Whether a signature by `key` counts online at `now_ms`: it is the current key, or the
        one the last rotation retired at most ROTATION_GRACE_MS from now (either way: the
        rotation's time is the rotating hub's clock, and only the holder of the NEW key can date
        a statement). Offline verifiers accept any key of the chain: see the module docstring."""
        if key == self.current:
            return True
        if not self.statements:
            return False
        last = self.statements[-1]
        return key == last.old_key and abs(now_ms - last.rotated_at_ms) <= ROTATION_GRACE_MS

    def check_successor(self, newer: KeyChain) -> None:
        """`newer` is this chain or continues it (what a peer checks at each refresh); raise
        ChainError for a replayed older history or a fork."""
        if newer.hub_id != self.hub_id:
            raise ChainError("the key history belongs to another hub")
        if len(newer.statements) < len(self.statements):
            raise ChainError(f"the key history has {len(newer.statements)} rotations, fewer than the "
                             f"{len(self.statements)} already followed (a replayed older history)")
        for mine, theirs in zip(self.statements, newer.statements, strict=False):
            if mine.to_bytes() != theirs.to_bytes():
                raise ChainError(f"rotation {mine.sequence} differs from the one already followed (a fork: "
                                 "an old key may have leaked; see docs/operations.md)")


def _bounded(statements: Iterable[bytes]) -> Sequence[bytes]:
    found = list(statements)
    if len(found) > MAX_ROTATIONS:
        raise ChainError(f"a key history holds at most {MAX_ROTATIONS} rotations, got {len(found)}")
    return found


def signer_key_ok(hub_id: str, key: bytes, history: Iterable[bytes]) -> bool:
    """Whether `key` is a key of hub `hub_id` by a valid history (the offline verifiers' rule)."""
    return key_of_hub(hub_id, key, history) is None


def key_of_hub(hub_id: str, key: bytes, history: Iterable[bytes]) -> str | None:
    """None if `key` belongs to hub `hub_id` by the (possibly empty) history; else why not."""
    statements = list(history)
    try:
        chain = KeyChain.verify(hub_id, statements, current_key=None if statements else key)
    except (ChainError, ValueError) as exc:
        return str(exc)
    if key not in chain.keys:
        return f"the key is not one of hub {hub_id}'s keys by its history"
    return None


def keys_of_hub(hub_id: str, genesis: bytes, history: Iterable[bytes]) -> tuple[bytes, ...]:
    """Every key of hub `hub_id` whose genesis key is `genesis`, by `history` (empty: the
    genesis key alone). Raise ChainError if the history is broken or starts elsewhere."""
    statements = list(history)
    chain = KeyChain.verify(hub_id, statements, current_key=None if statements else genesis)
    if chain.genesis != genesis:
        raise ChainError(f"the key history of hub {hub_id} starts at another key than the one named")
    return chain.keys


def verify_by_history(hub_id: str, genesis: bytes, history: Iterable[bytes], domain: Domain, message: bytes,
                      signature: bytes) -> bool:
    """A signature over `message` by any key of the hub's valid history (the offline rule)."""
    try:
        keys = keys_of_hub(hub_id, genesis, history)
    except (ChainError, ValueError):
        return False
    return any(verify(key, domain, message, signature) for key in keys)
