"""Live identity-key rotation and following a peer's new key at once, in one process: two real
hubs (grpc.aio, TLS, SQLite files). Bergen runs on a ManualClock, so it never refreshes a
descriptor on its schedule: whatever it learns of Stavanger's keys comes from the
follow-at-once path (federation/outbox.py `follow`), whose bound the test moves by hand.

The region of hub processes, with a partner and queries across the rotation, is
tests/test_live_rotation.py."""

from __future__ import annotations

import json

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import descriptors, envelope, peers
from federation.outbox import EXCHANGE_METHOD, FOLLOW_INTERVAL_S
from node import hubdir, identity, keychain, keystore
from node.api.v1 import admin_pb2, agreement_pb2, federation_pb2_grpc
from node.clock import SYSTEM_CLOCK, ManualClock
from tests.conftest import PASSPHRASE, LiveHub, make_hub_dir, start_live_hub
from tests.query_helpers import terms_toml
from tests.region_helpers import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("key-follow")
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    stavanger = await start_live_hub(make_hub_dir(base / "stavanger", "1103"))
    bergen = await start_live_hub(make_hub_dir(base / "bergen", "4601"), clock=clock)
    for a, b in ((stavanger, bergen), (bergen, stavanger)):
        await a.admin.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                              metadata=a.admin_metadata)
    yield stavanger, bergen, clock
    await bergen.stop()
    await stavanger.stop()


async def stored_peer(hub: LiveHub, peer_id: str):
    peer = await hub.hub.storage.read(lambda s: s.get_peer(peer_id))
    assert peer is not None
    return peer


async def followed_key(hub: LiveHub, peer_id: str) -> bytes:
    peer = await stored_peer(hub, peer_id)
    chain = descriptors.stored_chain(peer.descriptor)
    return chain.current if chain else peer.public_key


async def exchange(sender_key: Ed25519PrivateKey, sender_id: str, to: LiveHub):
    """ExchangeAgreements with nothing in it, signed by `sender_key` in `sender_id`'s name."""
    signed = envelope.make(sender_key, sender_id, to.hub.config.hub_id, EXCHANGE_METHOD,
                           agreement_exchange=agreement_pb2.AgreementExchange())
    channel = peers.channel_to(to.hub.endpoint.grpc_address, to.hub.config.hub_id, to.hub.identity.tls_cert_pem)
    async with channel:
        return await federation_pb2_grpc.FederationStub(channel).ExchangeAgreements(signed, timeout=10)


async def test_a_forger_is_refused_and_cannot_make_the_hub_fetch_more_than_once_per_interval(pair):
    stavanger, bergen, clock = pair
    stavanger_id = stavanger.hub.config.hub_id
    thief = Ed25519PrivateKey.generate()

    async def forged_batch() -> None:
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await exchange(thief, stavanger_id, bergen)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "does not verify under the key pinned" in refused.value.details()

    async def last_fetched() -> int:  # a refresh records when it reached the peer (Bergen's clock)
        return (await stored_peer(bergen, stavanger_id)).last_contact_ms

    clock.set_now_ms(clock.now_ms() + 1)
    first = clock.now_ms()
    await forged_batch()  # the first one makes Bergen fetch Stavanger's descriptor: unchanged, still refused
    assert await last_fetched() == first
    clock.advance(FOLLOW_INTERVAL_S / 2)
    await forged_batch()  # within the bound: refused without asking Stavanger again
    assert await last_fetched() == first
    clock.advance(FOLLOW_INTERVAL_S)
    await forged_batch()
    assert await last_fetched() == clock.now_ms()
    assert await followed_key(bergen, stavanger_id) == stavanger.hub.identity.public_key_raw
    # Every refusal is in the audit log, counted per source and minute.
    export = await bergen.admin.ExportAudit(admin_pb2.ExportAuditRequest(), metadata=bergen.admin_metadata)
    entries = [json.loads(json.loads(line)["entry"]) for line in export.jsonl.decode().splitlines()[1:-1]]
    refused = sum(int(e["detail"].split()[0]) for e in entries if e["action"] == "auth.refused")
    assert refused >= 15


async def test_the_running_hub_rotates_and_its_peer_follows_at_once(pair):
    stavanger, bergen, clock = pair
    stavanger_id = stavanger.hub.config.hub_id
    old = stavanger.hub.identity
    clock.advance(FOLLOW_INTERVAL_S)  # past the bound the forger's requests set
    done = await stavanger.admin.RotateIdentityKey(admin_pb2.RotateIdentityKeyRequest(), metadata=stavanger.admin_metadata)
    new = stavanger.hub.identity
    assert done.hub_id == stavanger_id == new.hub_id_text and done.rotation == 1
    assert done.old_public_key == old.public_key_raw and done.new_public_key == new.public_key_raw != old.public_key_raw
    assert keychain.KeyChain.verify(stavanger_id, done.key_history, current_key=done.new_public_key).genesis == old.public_key_raw
    # Written first: keys.json holds the new identity, under the passphrase the hub started with.
    assert hubdir.HubDir(stavanger.data_dir).identity(PASSPHRASE.encode()).public_key_raw == new.public_key_raw
    # Served from the next handshake: a certificate bound to the new key, the one the descriptor names.
    served = await peers.fetch_certificate(stavanger.hub.endpoint.grpc_address)
    assert descriptors.cert_sha256(served).hex() == done.certificate_sha256
    assert identity.verify_tls_binding(x509.load_pem_x509_certificate(served), new.key_history) == new.public_key_raw
    assert await followed_key(bergen, stavanger_id) == old.public_key_raw  # Bergen does not know yet

    # Stavanger proposes an agreement: its outbox delivers it in a request signed by the new key.
    # Bergen does not know that key, follows the history (which continues the genesis key it
    # pinned), and takes the proposal, at once.
    view = await stavanger.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(
        terms_toml=terms_toml(), to=bergen.hub.config.hub_id), metadata=stavanger.admin_metadata)
    aid = view.terms.agreement_id

    async def arrived() -> bool:
        held = await bergen.admin.ListAgreements(admin_pb2.ListAgreementsRequest(), metadata=bergen.admin_metadata)
        return aid in {a.terms.agreement_id for a in held.agreements}
    await eventually(arrived, timeout=15)
    assert await followed_key(bergen, stavanger_id) == new.public_key_raw
    peer = await stored_peer(bergen, stavanger_id)
    assert peer.tls_cert_pem.encode() == served and peer.public_key == old.public_key_raw  # the pin stays the genesis key
    # Now the old key is refused: the history was followed, and only the current key signs requests.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await exchange(old.identity_key, stavanger_id, bergen)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_live_rotation_is_refused_when_keys_json_no_longer_opens_with_the_start_passphrase(pair):
    stavanger, _, _ = pair
    keys_file = hubdir.HubDir(stavanger.data_dir).file(hubdir.KEYS_FILE)
    genuine = keys_file.read_bytes()
    before = stavanger.hub.identity
    keystore.write(keys_file, keystore.read(keys_file, PASSPHRASE.encode()), b"another passphrase entirely")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stavanger.admin.RotateIdentityKey(admin_pb2.RotateIdentityKeyRequest(), metadata=stavanger.admin_metadata)
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        assert "cannot rotate the identity key" in refused.value.details()
        assert "does not open with the passphrase the hub started with" in refused.value.details()
        assert stavanger.hub.identity is before  # nothing changed
        assert keystore.read(keys_file, b"another passphrase entirely")  # and the file was not rewritten
    finally:
        keys_file.write_bytes(genuine)
