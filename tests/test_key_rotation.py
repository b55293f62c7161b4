"""Identity-key rotation without processes: the statement's exact bytes, chain verification and
every way a history can be broken, the keystore after a rotation, the TLS binding to the new
key, descriptors followed (or refused) by a peer, and the offline verifiers (agreement export,
audit export) accepting signatures by any key of a valid history.

The live region test (peers and a partner querying across a rotation) is
tests/test_key_rotation_region.py."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import agreements as ag
from federation import descriptors, export
from federation import terms as terms_mod
from node import audit, catalog, hubdir, identity, ids, keychain, keystore, rotation
from node.api.v1 import agreement_pb2, federation_pb2
from node.clock import ManualClock
from node.keychain import ChainError, KeyChain, RotationStatement
from node.signing import Domain, verify
from tests.conftest import PASSPHRASE, make_hub_dir

DAY_S = 86400.0


def rotated_chain(times: int, clock: ManualClock | None = None) -> list[identity.HubIdentity]:
    """An identity and each of its rotations, oldest first."""
    clock = clock or ManualClock()
    chain = [identity.generate(clock=clock)]
    for _ in range(times):
        clock.advance(DAY_S)
        chain.append(chain[-1].rotated(clock))
    return chain


# -- the statement's bytes -------------------------------------------------------------------
def test_statement_layout_is_the_documented_one():
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hub_id = ids.hub_id_from_public_key(keychain._raw(old))
    statement = keychain.sign_rotation(hub_id, 1, old, new, 1_700_000_000_123)
    data = statement.to_bytes()
    assert len(data) == keychain.STATEMENT_LENGTH == 220
    assert data[:16] == hub_id
    assert struct.unpack(">I", data[16:20]) == (1,)
    assert data[20:52] == keychain._raw(old) and data[52:84] == keychain._raw(new)
    assert struct.unpack(">Q", data[84:92]) == (1_700_000_000_123,)
    # Each key signs DOMAIN || the 92-byte payload (docs/protocol.md, "Key rotation statements").
    assert Domain.KEY_ROTATION.value == b"smartregion/v1/key-rotation\x00"
    assert verify(keychain._raw(old), Domain.KEY_ROTATION, data[:92], data[92:156])
    assert verify(keychain._raw(new), Domain.KEY_ROTATION, data[:92], data[156:220])


@settings(max_examples=60, deadline=None)
@given(sequence=st.integers(0, 2**32 - 1), at_ms=st.integers(0, 2**64 - 1), hub_id=st.binary(min_size=16, max_size=16),
       old=st.binary(min_size=32, max_size=32), new=st.binary(min_size=32, max_size=32),
       sigs=st.binary(min_size=128, max_size=128))
def test_statement_bytes_round_trip(sequence, at_ms, hub_id, old, new, sigs):
    statement = RotationStatement(hub_id, sequence, old, new, at_ms, sigs[:64], sigs[64:])
    assert RotationStatement.from_bytes(statement.to_bytes()) == statement


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=400).filter(lambda b: len(b) != keychain.STATEMENT_LENGTH))
def test_a_statement_of_the_wrong_length_is_refused(data):
    with pytest.raises(ChainError, match="220 bytes"):
        RotationStatement.from_bytes(data)


# -- chains ----------------------------------------------------------------------------------
def test_a_chain_of_three_rotations_verifies_and_keeps_the_hub_id():
    idents = rotated_chain(3)
    last = idents[-1]
    assert {i.hub_id_text for i in idents} == {idents[0].hub_id_text}
    chain = KeyChain.verify(last.hub_id_text, last.key_history, current_key=last.public_key_raw)
    assert chain.keys == tuple(i.public_key_raw for i in idents)
    assert chain.genesis == idents[0].public_key_raw == last.genesis_public_key
    assert chain.current == last.public_key_raw
    assert len({i.public_key_raw for i in idents}) == 4


def _statement(ident: identity.HubIdentity, n: int) -> RotationStatement:
    return RotationStatement.from_bytes(ident.key_history[n])


def _resign(s: RotationStatement, old: Ed25519PrivateKey | None, new: Ed25519PrivateKey | None) -> bytes:
    payload = s.payload
    return replace(s, old_signature=old.sign(Domain.KEY_ROTATION.value + payload) if old else s.old_signature,
                   new_signature=new.sign(Domain.KEY_ROTATION.value + payload) if new else s.new_signature).to_bytes()


def test_each_break_in_a_chain_is_refused_with_a_precise_message():
    a, b, c = rotated_chain(2)
    hub = a.hub_id_text
    good = list(c.key_history)
    first, second = _statement(c, 0), _statement(c, 1)

    def refused(history, fragment, current=None):
        with pytest.raises(ChainError, match=fragment):
            KeyChain.verify(hub, history, current_key=current)

    # Signed by only one key: the new key's signature missing, then the old key's.
    refused([replace(first, new_signature=bytes(64)).to_bytes(), good[1]], "rotation 1 .* not signed by the new key")
    refused([good[0], replace(second, old_signature=bytes(64)).to_bytes()], "rotation 2 .* not signed by the old key")
    # Wrong sequence numbers (re-signed by both keys, so only the number is wrong).
    renumbered = replace(second, sequence=3)
    refused([good[0], _resign(renumbered, b.identity_key, c.identity_key)], "sequence number 3, expected 2")
    # A statement left out: the next no longer continues from the key before it.
    refused([good[1]], "does not start at the genesis key")
    # Statements of another hub.
    other = rotated_chain(1)[-1]
    refused(list(other.key_history), "does not start at the genesis key")
    # Back to an earlier key (both signatures valid: a's key signs again as the successor).
    back = keychain.sign_rotation(a.hub_id, 2, b.identity_key, a.identity_key, second.rotated_at_ms)
    refused([good[0], back.to_bytes()], "returns to a key the hub used before")
    # A rotation dated before the one it follows.
    early = keychain.sign_rotation(a.hub_id, 2, b.identity_key, c.identity_key, first.rotated_at_ms - 1)
    refused([good[0], early.to_bytes()], "dated before the rotation it follows")
    # The chain ends elsewhere than the key the hub signs with.
    refused(good, "ends at another key", current=b.public_key_raw)
    # No history: the key must hash to the hub id.
    refused([], "not its genesis key", current=c.public_key_raw)
    # Bounded.
    refused([good[0]] * (keychain.MAX_ROTATIONS + 1), "at most 1000")
    assert KeyChain.verify(hub, good).current == c.public_key_raw


def test_a_peer_refuses_a_replayed_older_history_and_a_fork():
    a, b, c = rotated_chain(2)
    followed = KeyChain.verify(a.hub_id_text, c.key_history)
    older = KeyChain.verify(a.hub_id_text, b.key_history)
    with pytest.raises(ChainError, match=r"fewer than the 2 already followed .*replayed"):
        followed.check_successor(older)
    # A leaked key b signs a different successor: a valid chain on its own, but a fork.
    thief = Ed25519PrivateKey.generate()
    forked = [c.key_history[0], keychain.sign_rotation(a.hub_id, 2, b.identity_key, thief, 2_000_000_000_000).to_bytes()]
    fork = KeyChain.verify(a.hub_id_text, forked)
    with pytest.raises(ChainError, match=r"rotation 2 differs .*fork"):
        followed.check_successor(fork)
    followed.check_successor(followed)  # the same history again is fine
    older.check_successor(followed)      # and a longer one that continues it


# -- the keystore and the certificate after a rotation ------------------------------------------
def test_rotate_keeps_the_hub_id_encrypts_the_new_key_and_rebinds_the_certificate(tmp_path):
    path = make_hub_dir(tmp_path / "hub")
    hub_dir = hubdir.HubDir(path)
    before = hub_dir.identity(PASSPHRASE.encode())
    clock = ManualClock()
    old, new = rotation.rotate_identity(hub_dir, PASSPHRASE.encode(), clock)
    assert old.public_key_raw == before.public_key_raw != new.public_key_raw
    loaded = hub_dir.identity(PASSPHRASE.encode())  # the config's hub id still matches
    assert loaded.hub_id_text == before.hub_id_text == hub_dir.config().hub_id
    assert loaded.public_key_raw == new.public_key_raw and loaded.key_history == new.key_history
    # keys.json holds the new private key encrypted as before: not in the file, 0600, same format.
    raw = (path / hubdir.KEYS_FILE).read_bytes()
    private = new.to_secrets()["identity_key"]
    assert private not in raw and private.hex().encode() not in raw
    assert json.loads(raw)["format"] == keystore.FORMAT
    assert (path / hubdir.KEYS_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(keystore.KeystoreError, match="wrong passphrase"):
        keystore.read(path / hubdir.KEYS_FILE, b"another-passphrase-xyz")
    # The certificate (file and keystore) names the same hub id and is bound to the NEW key.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(hub_dir.tls_cert_pem())
    assert identity.read_tls_binding(cert) == (before.hub_id_text, new.public_key_raw)
    assert identity.verify_tls_binding(cert, new.key_history) == new.public_key_raw
    with pytest.raises(identity.IdentityError, match="common name is not the hub id"):
        identity.verify_tls_binding(cert)  # without the history it proves nothing
    with pytest.raises(identity.IdentityError, match="not bound to the current key"):
        identity.verify_tls_binding(before.tls_cert, new.key_history)  # the old certificate
    # The rotation is in the audit log.
    entries = [json.loads(r.entry) for r in _audit_rows(path)]
    assert any(e["action"] == "key.rotate" and e["detail"].startswith("rotation 1") for e in entries)


def test_rotate_refuses_while_the_hub_is_served(tmp_path):
    path = make_hub_dir(tmp_path / "hub")
    hub_dir = hubdir.HubDir(path)
    lock = hub_dir.lock_for_serving()  # what a serving hub holds
    try:
        before = (path / hubdir.KEYS_FILE).read_bytes()
        with pytest.raises(rotation.RotationError, match="is running, and an identity-key rotation needs it stopped: stop it"):
            rotation.rotate_identity(hub_dir, PASSPHRASE.encode(), ManualClock())
        assert (path / hubdir.KEYS_FILE).read_bytes() == before  # nothing changed
    finally:
        lock.close()


def _audit_rows(path):
    from node.storage.sqlite import SqliteStore

    store = SqliteStore(path / hubdir.DB_FILE)
    try:
        return store.audit_rows()
    finally:
        store.close()


def test_init_certificate_validity_comes_from_the_injected_clock(tmp_path):
    clock = ManualClock(now_ms=1_500_000_000_000)
    _, ident = hubdir.init_hub(tmp_path / "hub", "1103", PASSPHRASE.encode(), clock=clock)
    assert int(ident.tls_cert.not_valid_before_utc.timestamp() * 1000) == 1_500_000_000_000 - 5 * 60 * 1000
    assert ident.certificate_expires_ms == 1_500_000_000_000 + int(identity.CERT_VALIDITY.total_seconds() * 1000)


def test_certificate_state_warns_from_thirty_days_before():
    clock = ManualClock()
    ident = identity.generate(clock=clock)
    state = rotation.certificate_state(ident, clock)
    assert not state.renewal_due and "valid for 1095 more days" in state.describe()
    clock.advance((3 * 365 - 31) * DAY_S)
    assert not rotation.certificate_state(ident, clock).renewal_due
    clock.advance(2 * DAY_S)
    state = rotation.certificate_state(ident, clock)
    assert state.renewal_due and state.describe() == "the TLS certificate expires in 29 days: run `smartregion cert renew`"
    clock.advance(30 * DAY_S)
    assert "EXPIRED 1 days ago" in rotation.certificate_state(ident, clock).describe()
    renewed = ident.with_renewed_certificate(clock)
    assert renewed.identity_key is ident.identity_key and renewed.tls_cert_pem != ident.tls_cert_pem
    assert not rotation.certificate_state(renewed, clock).renewal_due
    assert identity.verify_tls_binding(renewed.tls_cert) == ident.public_key_raw


# -- descriptors ------------------------------------------------------------------------------
def _descriptor(ident: identity.HubIdentity, now_ms: int) -> federation_pb2.SignedDescriptor:
    return descriptors.issue(ident, "1103", "127.0.0.1:1", "https://127.0.0.1:2", now_ms, datasets=catalog.DEFAULT)


def test_a_peer_follows_a_rotated_descriptor_and_refuses_forks_and_replays():
    clock = ManualClock()
    a, b, c = rotated_chain(2, clock)
    now = clock.now_ms()
    known = descriptors.verify_descriptor(_descriptor(a, now), a.hub_id_text, a.tls_cert_pem, now).chain
    followed = descriptors.verify_descriptor(_descriptor(c, now), a.hub_id_text, c.tls_cert_pem, now, known)
    assert followed.chain.current == c.public_key_raw and followed.descriptor.identity_public_key == c.public_key_raw
    # The rotated hub's descriptor also verifies on its own (relayed, without its certificate).
    assert descriptors.verify_signature(_descriptor(c, now)).hub_id == a.hub_id_text
    # A replay of b's older descriptor after c was followed.
    with pytest.raises(descriptors.DescriptorError, match=r"refused: .*fewer than the 2 already followed"):
        descriptors.verify_descriptor(_descriptor(b, now), a.hub_id_text, b.tls_cert_pem, now, followed.chain)
    # A fork by someone holding b's leaked key, with a certificate bound to the thief's key.
    thief_key = Ed25519PrivateKey.generate()
    statement = keychain.sign_rotation(a.hub_id, 2, b.identity_key, thief_key, now)
    thief = identity.HubIdentity(thief_key, c.tls_key, identity.issue_tls_certificate(
        thief_key, c.tls_key, hub_id_text=a.hub_id_text, clock=clock), c.key_encryption_key,
        (b.key_history[0], statement.to_bytes()))
    with pytest.raises(descriptors.DescriptorError, match="fork"):
        descriptors.verify_descriptor(_descriptor(thief, now), a.hub_id_text, thief.tls_cert_pem, now, followed.chain)
    # A descriptor signed by the new key but carrying no history: not the pinned hub's key.
    bare = replace(c, key_history=())
    signed = _descriptor(bare, now)
    with pytest.raises(descriptors.DescriptorError, match="is not the key of hub"):
        descriptors.verify_descriptor(signed, a.hub_id_text, c.tls_cert_pem, now, followed.chain)
    # A broken history (the new key's signature of rotation 2 removed).
    broken = replace(c, key_history=(c.key_history[0], replace(_statement(c, 1), new_signature=bytes(64)).to_bytes()))
    with pytest.raises(descriptors.DescriptorError, match=r"key history is broken: .*not signed by the new key"):
        descriptors.verify_descriptor(_descriptor(broken, now), a.hub_id_text, c.tls_cert_pem, now, known)
    # The certificate of before the rotation with the rotated descriptor: bound to another key.
    with pytest.raises(descriptors.DescriptorError, match=r"TLS certificate other than|bound"):
        descriptors.verify_descriptor(_descriptor(c, now), a.hub_id_text, a.tls_cert_pem, now, known)


# -- offline verifiers: agreements and audit exports ------------------------------------------------
TERMS_TOML = """
[purpose]
code = "environmental_monitoring"
description = "Regional overview of fine particulate matter"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = 366
min_group_size = 3
queries_per_day = 50
[validity]
from = "now"
until = 2099-01-01T00:00:00Z
"""


def _terms(provider: identity.HubIdentity, consumer: identity.HubIdentity, now_ms: int) -> agreement_pb2.AgreementTerms:
    def party(i: identity.HubIdentity) -> agreement_pb2.Party:
        # A hub's Party names its genesis key (its id derives from it), however often it rotated.
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=i.hub_id_text, public_key=i.genesis_public_key,
                                   name="x")
    return terms_mod.from_toml(terms_mod.parse_toml(TERMS_TOML), party(provider), party(consumer), now_ms=now_ms)


def test_agreements_signed_before_and_after_a_rotation_verify_offline():
    clock = ManualClock()
    provider = identity.generate(clock=clock)
    consumer = identity.generate(clock=clock)
    now = clock.now_ms()
    before = ag.countersign(ag.propose(_terms(provider, consumer, now), provider.hub_id_text, provider.identity_key),
                            consumer.hub_id_text, consumer.identity_key)
    old_export = export.export(before, ag.state(before, now), provider.hub_id_text, now, provider.identity_key)
    rotated = provider.rotated(clock)
    rotated_twice = rotated.rotated(clock)
    # An agreement proposed under key 0, countersigned... and a new one signed with key 2 after two rotations.
    after = ag.countersign(ag.propose(_terms(rotated_twice, consumer, now), rotated_twice.hub_id_text,
                                      rotated_twice.identity_key, rotated_twice.key_history),
                           consumer.hub_id_text, consumer.identity_key)
    revoked = ag.revoke(before, provider.hub_id_text, rotated_twice.identity_key, "ended", now + 1, rotated_twice.key_history)
    for evidence in (after, revoked):
        again = ag.from_document(evidence.to_document())  # every signature checked again
        assert again.to_document() == evidence.to_document()
    new_export = export.export(after, ag.state(after, now), rotated_twice.hub_id_text, now, rotated_twice.identity_key,
                               rotated_twice.key_history)
    for data in (old_export, new_export):
        assert export.verify(data, now).evidence.fully_signed()
    # The exported history is what lets the rotated key's signatures verify: without it, refused.
    doc = json.loads(new_export)
    del doc["exporter_key_history"]
    with pytest.raises(export.ExportError, match="exporter's signature does not verify"):
        export.verify(export.canonical(doc), now)
    stripped = after.to_document()
    del stripped.signed_terms.signatures[[s.signer_id for s in stripped.signed_terms.signatures].index(provider.hub_id_text)].key_history[:]
    with pytest.raises(ag.AgreementError, match=f"signature of {provider.hub_id_text} does not verify"):
        ag.from_document(stripped)
    # A history that is not the provider's (another hub's chain) does not vouch for the key either.
    stranger = rotated_chain(1)[-1]
    forged = after.to_document()
    sig = next(s for s in forged.signed_terms.signatures if s.signer_id == provider.hub_id_text)
    del sig.key_history[:]
    sig.key_history.extend(stranger.key_history)
    with pytest.raises(ag.AgreementError, match="does not verify"):
        ag.from_document(forged)


def test_audit_exports_before_and_after_a_rotation_verify_offline(tmp_path):
    old, new = rotated_chain(1)
    rows = []
    from node.storage.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "a.db")
    store.append_audit([audit.AuditEntry("admin", "x", "y", "ok", "", at_ms=1).canonical()])
    rows = store.audit_rows()
    store.close()

    def exported(ident: identity.HubIdentity, history=None) -> bytes:
        return audit.export_lines(rows, ident.hub_id_text, ident.public_key_raw,
                                  lambda head: ident.identity_key.sign(Domain.AUDIT_HEAD.value + head), 5,
                                  key_history=ident.key_history if history is None else history)

    assert audit.verify_export(exported(old))["seq"] == 1
    assert audit.verify_export(exported(new))["seq"] == 1
    audit.verify_extension(exported(old), exported(new))  # an export after the rotation extends one before it
    with pytest.raises(audit.AuditError, match="not derived from the public key"):
        audit.verify_export(exported(new, history=()))
    broken = (replace(RotationStatement.from_bytes(new.key_history[0]), old_signature=bytes(64)).to_bytes(),)
    with pytest.raises(audit.AuditError, match=r"signing key is not the hub's: .*not signed by the old key"):
        audit.verify_export(exported(new, history=broken))


def test_the_python_example_client_checks_histories_as_the_hub_does():
    """examples/python_partner.py (standalone, no smartregion imports) accepts exactly the keys
    node/keychain.py accepts, for a valid history and for each kind of break."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("python_partner", Path(__file__).parents[1] / "examples" / "python_partner.py")
    assert spec and spec.loader
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    a, b, c = rotated_chain(2)
    first, second = _statement(c, 0), _statement(c, 1)
    histories = {
        "valid": list(c.key_history),
        "none": [],
        "old signature missing": [first.to_bytes(), replace(second, old_signature=bytes(64)).to_bytes()],
        "new signature missing": [replace(first, new_signature=bytes(64)).to_bytes(), second.to_bytes()],
        "renumbered": [first.to_bytes(), _resign(replace(second, sequence=3), b.identity_key, c.identity_key)],
        "gap": [second.to_bytes()],
        "truncated": [first.to_bytes()[:-1]],
    }
    for name, history in histories.items():
        for key in (a.public_key_raw, b.public_key_raw, c.public_key_raw, Ed25519PrivateKey.generate().public_key().public_bytes_raw()):
            expected = keychain.signer_key_ok(a.hub_id_text, key, history)
            assert client.is_key_of_hub(a.hub_id_text, key, history) == expected, name
    assert client.is_key_of_hub(a.hub_id_text, c.public_key_raw, histories["valid"])


def test_the_documented_statement_vector_is_what_the_code_signs():
    """docs/protocol.md 14: the test vector is recomputed from its seeds, and verifies as a history."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    block = re.search(r"## 14\. Key rotation statements.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/protocol.md has no section 14 with a test vector"
    fields: dict[str, str] = {}
    name = ""
    for line in block.group(1).splitlines():
        if "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            fields[name] = value
        elif line.strip():
            fields[name] += line.strip()
    old = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(fields["old_seed"]))
    new = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(fields["new_seed"]))
    assert keychain._raw(old).hex() == fields["old_key"] and keychain._raw(new).hex() == fields["new_key"]
    hub_id = ids.hub_id_from_public_key(keychain._raw(old))
    assert hub_id.hex() == fields["hub_id"]
    statement = keychain.sign_rotation(hub_id, int(fields["sequence"]), old, new, int(fields["rotated_at"]))
    assert statement.to_bytes().hex() == fields["statement"]
    assert KeyChain.verify(fields["hub_id"], [statement.to_bytes()]).current.hex() == fields["new_key"]


def test_the_documented_cert_commands_on_a_stopped_hub(tmp_path):
    """`smartregion cert status` and `cert renew` on a stopped hub (docs/operations.md): the
    renewal is offline, bound to the same identity key, and audited."""
    import os
    import subprocess
    import sys

    from cryptography import x509

    path = make_hub_dir(tmp_path / "hub")
    hub_dir = hubdir.HubDir(path)
    before = hub_dir.identity(PASSPHRASE.encode())
    env = dict(os.environ, SMARTREGION_PASSPHRASE=PASSPHRASE, COLUMNS="200")

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "node.app.cli.main", *args], capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    status = json.loads(cli("cert", "status", "--data-dir", str(path), "--json"))
    assert status["not_after_ms"] == before.certificate_expires_ms and not status["renewal_due"]
    assert "the hub serves it when it starts" in cli("cert", "renew", "--data-dir", str(path))
    after = hub_dir.identity(PASSPHRASE.encode())
    assert after.tls_cert_pem != before.tls_cert_pem and after.tls_cert_pem == hub_dir.tls_cert_pem()
    assert identity.verify_tls_binding(x509.load_pem_x509_certificate(hub_dir.tls_cert_pem())) == before.public_key_raw
    assert after.identity_key.private_bytes_raw() == before.identity_key.private_bytes_raw()
    assert any(json.loads(r.entry)["action"] == "cert.renew" for r in _audit_rows(path))


def test_partials_and_answer_summaries_signed_by_a_rotated_key_verify_only_with_its_history():
    from federation import partials
    from node.api.v1 import query_pb2, query_service_pb2

    a, b = rotated_chain(1)
    digest = bytes(32)
    partial = query_pb2.PartialResult(query_digest=digest, provider_hub_id=a.hub_id_text, municipality="1103")
    signed = partials.sign_partial(b, partial)
    assert list(signed.provider_key_history) == list(b.key_history)
    assert partials.verify_partial(signed, digest, expected_hub_id=a.hub_id_text).provider_hub_id == a.hub_id_text
    # Without the history, or with a history that does not hold the signing key: refused.
    bare = query_pb2.SignedPartial(partial=signed.partial, signature=signed.signature, provider_public_key=signed.provider_public_key)
    stranger = identity.generate()
    foreign = partials.sign_partial(replace(stranger, key_history=()), partial)
    foreign.provider_key_history.extend(b.key_history)  # a's genuine history, a stranger's key
    for refused in (bare, foreign):
        with pytest.raises(partials.PartialError, match="names another provider than its signer"):
            partials.verify_partial(refused, digest)

    answer = query_service_pb2.QueryAnswer(answered_by=a.hub_id_text)
    partials.sign_answer(b, answer, digest, merged_at_ms=5)
    assert list(answer.answered_by_key_history) == list(b.key_history)
    partials.verify_answer_summary(answer, digest)
    del answer.answered_by_key_history[:]
    with pytest.raises(partials.PartialError, match="whose key it does not carry"):
        partials.verify_answer_summary(answer, digest)


def test_online_only_the_current_key_counts_or_the_one_retired_minutes_ago():
    """KeyChain.signs_now, the online rule (federation/query/asker.py check_current_keys): an
    answer signed partly before a live rotation still counts for ROTATION_GRACE_MS; an older
    key, or the retired one later, does not (it may have leaked)."""
    clock = ManualClock()
    a, b, c = rotated_chain(2, clock)
    chain = c.chain()
    rotated_at = RotationStatement.from_bytes(c.key_history[-1]).rotated_at_ms
    assert chain.signs_now(c.public_key_raw, rotated_at + 10**9)
    assert chain.signs_now(b.public_key_raw, rotated_at) and chain.signs_now(b.public_key_raw, rotated_at + keychain.ROTATION_GRACE_MS)
    assert not chain.signs_now(b.public_key_raw, rotated_at + keychain.ROTATION_GRACE_MS + 1)
    assert not chain.signs_now(a.public_key_raw, rotated_at)  # two rotations back: never online
    assert chain.signs_now(b.public_key_raw, rotated_at - 1000)  # the rotating hub's clock a second ahead of ours
    assert not chain.signs_now(b.public_key_raw, rotated_at - keychain.ROTATION_GRACE_MS - 1)
    assert not keychain.KeyChain.genesis_only(a.public_key_raw).signs_now(b.public_key_raw, rotated_at)


def test_a_rotation_beyond_the_bound_a_peer_accepts_is_refused_before_anything_is_signed():
    ident = identity.generate(clock=ManualClock())
    full = replace(ident, key_history=(bytes(keychain.STATEMENT_LENGTH),) * keychain.MAX_ROTATIONS)
    with pytest.raises(identity.IdentityError, match="already holds 1000 rotations"):
        full.rotated()


def test_the_online_asker_check_follows_an_unknown_key_once_and_refuses_a_retired_one():
    """federation/query/asker.py check_current_keys, on the fields it reads: a pinned hub's
    summary and partial must be signed by its current key (or the one retired minutes ago); an
    unknown key makes the asker refresh once; an old key, or a key the refresh does not reach, is
    refused; a hub the asker does not pin is left to the offline checks."""
    import asyncio

    from federation.query import asker
    from node.api.v1 import query_pb2, query_service_pb2

    clock = ManualClock()
    a, b, c = rotated_chain(2, clock)
    known = {"chain": b.chain()}  # what the asker followed so far: one rotation
    fetches: list[str] = []

    async def followed(hub_id: str):
        return known["chain"] if hub_id == a.hub_id_text else None

    async def follow(hub_id: str) -> bool:
        fetches.append(hub_id)
        known["chain"] = c.chain()  # the descriptor now shows the second rotation
        return True

    def answer(summary_key: bytes, partial_key: bytes) -> query_service_pb2.QueryAnswer:
        return query_service_pb2.QueryAnswer(
            answered_by=a.hub_id_text, answered_by_public_key=summary_key,
            provenance=[query_pb2.Provenance(hub_id=a.hub_id_text, status="answered",
                                             partial=query_pb2.SignedPartial(provider_public_key=partial_key)),
                        query_pb2.Provenance(hub_id="0" * 32, status="answered",
                                             partial=query_pb2.SignedPartial(provider_public_key=bytes(32)))])

    def check(summary_key: bytes, partial_key: bytes, now_ms: int) -> None:
        asyncio.run(asker.check_current_keys(answer(summary_key, partial_key), followed, follow, now_ms))

    now = clock.now_ms()
    check(b.public_key_raw, b.public_key_raw, now)  # the key known: no fetch
    assert fetches == []
    check(c.public_key_raw, b.public_key_raw, now)  # a new key: one fetch, then the retired one within its grace
    assert fetches == [a.hub_id_text] and known["chain"].current == c.public_key_raw
    with pytest.raises(asker.AnswerRefused, match="not its current one"):
        check(c.public_key_raw, a.public_key_raw, now)  # two rotations back: refused, after one more fetch
    with pytest.raises(asker.AnswerRefused, match="its partial"):
        check(c.public_key_raw, b.public_key_raw, now + keychain.ROTATION_GRACE_MS + 1)  # the grace is over
    thief = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(asker.AnswerRefused, match="its signature over the answer"):
        check(thief, c.public_key_raw, now)
