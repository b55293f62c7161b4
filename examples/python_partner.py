"""Ask a smartregion hub one federated query as a partner, and print the answer as JSON.

Uses only the code generated from proto/ (grpcio-tools), grpcio and `cryptography` — none of
the hub's own modules — so it shows everything a partner's client has to do
(docs/querying.md, "A client in Python"):

    SMARTREGION_PASSPHRASE=... python examples/python_partner.py --key uis.key \
        --hub hub.example:7443 --hub-id 3f2a... --dataset air_quality --metric pm25 \
        --aggregate mean --from 2019-01-01 --to 2020-01-01 --bucket month \
        --group-by municipality --purpose research

Prints {"rows": [...], "partial", "missing_hubs", "provenance": [...], "answered_by"}, after
checking the entry hub's signature over the statuses (by a key of the entry hub's key history,
as its signed descriptor shows it: a hub that rotated its identity key is followed), that the
answer lists exactly the hubs
(and municipalities) asked and is marked partial exactly when a hub did not answer, opening
every hub's partial (sealed to a fresh X25519 key of this one query, HPKE), checking each
provider's signature and that it speaks for the municipality of the agreement you co-signed
with it, and merging. The entry hub's key history must continue the one remembered in
`<key>.known-hubs.json` (written beside the key, 0600).
Exit 1 on a refusal or an answer that does not verify, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import math
import os
import secrets
import ssl
import struct
import sys
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509.oid import NameOID

try:  # modules generated from proto/:  python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. proto/smartregion/v1/*.proto
    from smartregion.v1 import agreement_pb2, envelope_pb2, federation_pb2, federation_pb2_grpc, query_pb2, query_service_pb2_grpc
except ImportError:  # the same modules, as shipped in the smartregion package
    from node.api.v1 import agreement_pb2, envelope_pb2, federation_pb2, federation_pb2_grpc, query_pb2, query_service_pb2_grpc

RUN_METHOD = "/smartregion.v1.Query/Run"
REQUEST_DOMAIN = b"smartregion/v1/request\x00"
PARTIAL_DOMAIN = b"smartregion/v1/partial-result\x00"
ANSWER_DOMAIN = b"smartregion/v1/query-answer\x00"
AGREEMENT_DOMAIN = b"smartregion/v1/agreement\x00"
HUB_ID_DOMAIN = b"smartregion/v1/hub-id\x00"
PARTNER_ID_DOMAIN = b"smartregion/v1/partner-id\x00"
TLS_BINDING_DOMAIN = b"smartregion/v1/tls-binding\x00"
DESCRIPTOR_DOMAIN = b"smartregion/v1/descriptor\x00"
SEAL_INFO_PREFIX = b"smartregion/v1/sealed-partial\x00"  # HPKE info = prefix || query digest || hub id
HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)  # RFC 9180 base mode
TLS_BINDING_OID = x509.ObjectIdentifier("2.25.203920180945178712633153802452796473511")


class ClientError(Exception):
    pass


def raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def hub_id_of(public_key: bytes) -> str:
    return hashlib.sha256(HUB_ID_DOMAIN + public_key).digest()[:16].hex()


KEY_ROTATION_DOMAIN = b"smartregion/v1/key-rotation\x00"


def keys_of_hub(hub_id: str, history) -> list[bytes]:
    """Every identity key of hub `hub_id` by its key history (rotation statements, oldest first,
    docs/protocol.md 14 "Key rotation statements"): the genesis key, whose hash is the hub id,
    then each statement's new key. Raise ClientError at the first break. Each 220-byte
    statement is hub_id (16) || sequence (u32) || old key (32) || new key (32) || rotated_at_ms
    (u64), then the old key's and the new key's signature over those 92 bytes."""
    keys: list[bytes] = []
    previous_at_ms = 0
    for position, statement in enumerate(history, start=1):
        where = f"rotation {position} of hub {hub_id}"
        if len(statement) != 220:
            raise ClientError(f"{where} is not 220 bytes")
        payload, old_key, new_key = statement[:92], statement[20:52], statement[52:84]
        if position == 1:
            if hub_id_of(old_key) != hub_id:
                raise ClientError(f"the key history does not start at the genesis key of hub {hub_id}")
            keys.append(old_key)
        at_ms = int.from_bytes(statement[84:92], "big")
        if statement[:16].hex() != hub_id or int.from_bytes(statement[16:20], "big") != position:
            raise ClientError(f"{where} names another hub or sequence number")
        if old_key != keys[-1] or new_key in keys or at_ms < previous_at_ms:
            raise ClientError(f"{where} does not continue the history (another old key, a key used before, or an earlier date)")
        try:
            Ed25519PublicKey.from_public_bytes(old_key).verify(statement[92:156], KEY_ROTATION_DOMAIN + payload)
            Ed25519PublicKey.from_public_bytes(new_key).verify(statement[156:220], KEY_ROTATION_DOMAIN + payload)
        except (InvalidSignature, ValueError):
            raise ClientError(f"{where} is not signed by both its old and its new key") from None
        keys.append(new_key)
        previous_at_ms = at_ms
    return keys


def is_key_of_hub(hub_id: str, key: bytes, history) -> bool:
    """`key` is hub `hub_id`'s: it hashes to the id, or a valid key history leads from the key
    that does to it."""
    if not history:
        return len(key) == 32 and hub_id_of(key) == hub_id
    try:
        return key in keys_of_hub(hub_id, history)
    except ClientError:
        return False


def partner_id_of(public_key: bytes) -> str:
    return hashlib.sha256(PARTNER_ID_DOMAIN + public_key).digest()[:16].hex()


# -- 1. the partner key: a keystore file, scrypt + AES-256-GCM ---------------------------------

def passphrase() -> bytes:
    if os.environ.get("SMARTREGION_PASSPHRASE"):
        return os.environ["SMARTREGION_PASSPHRASE"].encode()
    if os.environ.get("SMARTREGION_PASSPHRASE_FILE"):
        lines = Path(os.environ["SMARTREGION_PASSPHRASE_FILE"]).read_text(encoding="utf-8").splitlines()
        if lines and lines[0]:
            return lines[0].encode()
    raise ClientError("no passphrase: set SMARTREGION_PASSPHRASE, or SMARTREGION_PASSPHRASE_FILE to a file holding it")


def load_partner_key(path: Path, secret: bytes) -> Ed25519PrivateKey:
    doc = json.loads(path.read_bytes())
    if doc.get("format") != "smartregion-keystore" or doc.get("version") != 1 or doc["kdf"].get("name") != "scrypt":
        raise ClientError(f"{path} is not a smartregion keystore (version 1, scrypt)")
    kdf = doc["kdf"]
    key = Scrypt(salt=base64.b64decode(kdf["salt"]), length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(secret)
    # The associated data binds the format and the KDF parameters exactly as they stand in the file.
    aad = json.dumps({"format": "smartregion-keystore", "version": 1, "kdf": kdf}, sort_keys=True).encode()
    try:
        plaintext = AESGCM(key).decrypt(base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), aad)
    except InvalidTag:
        raise ClientError("wrong passphrase, or the keystore was altered") from None
    values = json.loads(plaintext)
    if "partner_key" not in values:
        raise ClientError(f"{path} is a keystore, but not a partner key")
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(values["partner_key"]))


# -- 2. pinning the hub: its certificate must be bound to the hub id you were given ---------------
#
# A hub that rotated its identity key keeps its hub id (the hash of its FIRST key) and signs with
# a newer key; its descriptor (Federation.GetDescriptor, signed by the current key) carries the
# key history that links the two. The certificate is trusted when it is bound to that current key.

def served_certificate(address: str, hub_id: str) -> tuple[bytes, bytes]:
    """The certificate the server at `address` presents, and the identity key it is bound to
    (checked: the binding signature, and that it names hub `hub_id`). Whether that key is the
    hub's is for `pinned_hub` to check, by the hub's descriptor."""
    host, _, port = address.rpartition(":")
    try:
        pem = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=10).encode()
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot reach {address} over TLS: {exc}") from None
    cert = x509.load_pem_x509_certificate(pem)
    try:
        binding = cert.extensions.get_extension_for_oid(TLS_BINDING_OID).value.value
    except x509.ExtensionNotFound:
        raise ClientError("the server's certificate carries no smartregion identity binding") from None
    if len(binding) != 98 or binding[:2] != b"\x04\x60":
        raise ClientError("malformed identity binding in the certificate")
    identity_key, signature = binding[2:34], binding[34:]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        Ed25519PublicKey.from_public_bytes(identity_key).verify(signature, TLS_BINDING_DOMAIN + spki)
    except InvalidSignature:
        raise ClientError("the certificate's identity binding signature is invalid") from None
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names or common_names[0].value != hub_id:
        named = common_names[0].value if common_names else "no hub"
        raise ClientError(f"the server at {address} is {named}, not hub {hub_id}")
    return pem, identity_key


def pinned_hub(address: str, hub_id: str, known: Path) -> tuple[bytes, list[bytes]]:
    """The certificate to pin and every identity key of hub `hub_id` (genesis first, current
    last). For a hub that rotated, from its signed descriptor: the history must lead from the key hashing to the hub id
    to the key the descriptor is signed with, which the certificate must be bound to. The history must continue
    the one remembered in the `known` file (see `remember_history`)."""
    pem, bound_key = served_certificate(address, hub_id)
    if hub_id_of(bound_key) == hub_id:  # its genesis key: it never rotated, or it is a copy from before its rotations
        remember_history(known, hub_id, bound_key, [])
        return pem, [bound_key]
    with open_channel(address, hub_id, pem) as channel:
        signed = federation_pb2_grpc.FederationStub(channel).GetDescriptor(federation_pb2.GetDescriptorRequest(), timeout=10)
    descriptor = federation_pb2.NodeDescriptor.FromString(signed.descriptor)
    if descriptor.hub_id != hub_id:
        raise ClientError(f"the descriptor names hub {descriptor.hub_id}, not {hub_id}")
    keys = keys_of_hub(hub_id, descriptor.key_history) if descriptor.key_history else [descriptor.identity_public_key]
    if descriptor.identity_public_key != keys[-1] or hub_id_of(keys[0]) != hub_id:
        raise ClientError(f"the descriptor's key is not the current key of hub {hub_id} by its history")
    try:
        Ed25519PublicKey.from_public_bytes(keys[-1]).verify(signed.signature, DESCRIPTOR_DOMAIN + signed.descriptor)
    except (InvalidSignature, ValueError):
        raise ClientError(f"the descriptor of hub {hub_id} is not signed by its current key") from None
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    if bound_key != keys[-1] or hashlib.sha256(der).digest() != descriptor.tls_certificate_sha256:
        raise ClientError(f"the server's certificate is not the one hub {hub_id}'s descriptor names, bound to its key")
    if descriptor.valid_until_ms <= time.time() * 1000:
        raise ClientError(f"the descriptor of hub {hub_id} has expired")
    remember_history(known, hub_id, keys[0], list(descriptor.key_history))
    return pem, list(keys)


# The hubs' key histories this partner verified before, in a small file beside the key
# (`<key>.known-hubs.json`, the same file and format as `smartregion query run` keeps). Without
# it a stolen copy of a hub's data directory from before a key rotation could answer as the hub:
# its shorter history is valid too. A shorter or different history than the one remembered is
# refused (docs/querying.md, "Partners remember hub key histories").
KNOWN_FORMAT = "smartregion-known-hubs"


def remember_history(known: Path, hub_id: str, genesis: bytes, history: list[bytes]) -> None:
    """Refuse `history` unless it continues the one remembered for `hub_id`; remember it if longer."""
    try:
        document = json.loads(known.read_bytes())
    except FileNotFoundError:
        document = {"format": KNOWN_FORMAT, "version": 1, "hubs": {}}
    except ValueError as exc:
        raise ClientError(f"the known-hubs file {known} is damaged: {exc}") from None
    if document.get("format") != KNOWN_FORMAT or not isinstance(document.get("hubs"), dict):
        raise ClientError(f"{known} is not a known-hubs file")
    entry = document["hubs"].get(hub_id, {"genesis": genesis.hex(), "history": []})
    try:
        remembered, remembered_genesis = [bytes.fromhex(h) for h in entry["history"]], bytes.fromhex(entry["genesis"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"the known-hubs file {known} is damaged at hub {hub_id}: {exc!r}") from None
    if remembered_genesis != genesis or history[:len(remembered)] != remembered:
        raise ClientError(f"hub {hub_id} shows a key history of {len(history)} rotations that does not continue the "
                          f"{len(remembered)} remembered in {known}: a replayed older history or a fork (a stolen copy "
                          "of the hub, or a leaked key); ask the hub's admin")
    if hub_id in document["hubs"] and len(history) == len(remembered):
        return
    document["hubs"][hub_id] = {"genesis": genesis.hex(), "history": [h.hex() for h in history]}
    temporary = known.with_name(f".{known.name}.{secrets.token_hex(8)}.tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(json.dumps(document, indent=1).encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, known)  # atomic: a crash leaves the old file or the new one


def open_channel(address: str, hub_id: str, cert_pem: bytes) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)  # trust exactly this certificate
    return grpc.secure_channel(address, credentials, options=[
        ("grpc.ssl_target_name_override", hub_id),  # ... under the name it carries: the hub id
        ("grpc.default_authority", hub_id),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ])


# -- 3. the signed request ----------------------------------------------------------------------

def sign_query(key: Ed25519PrivateKey, hub_id: str, spec: query_pb2.QuerySpec) -> envelope_pb2.SignedRequest:
    partner_id = partner_id_of(raw(key.public_key()))
    request = envelope_pb2.Request(caller_id=partner_id, audience_hub_id=hub_id, method=RUN_METHOD,
                                   issued_at_ms=int(time.time() * 1000), nonce=secrets.token_bytes(16), query=spec)
    payload = request.SerializeToString()  # serialize ONCE; these exact bytes are signed and sent
    return envelope_pb2.SignedRequest(payload=payload, signature=key.sign(REQUEST_DOMAIN + payload))


# -- 4. the answer: the entry hub relays each hub's partial SEALED to your one-query key -----------

def verify_summary(answer, digest: bytes, entry_hub_id: str, entry_keys: list[bytes]) -> None:
    """The entry hub signed what every hub it asked answered (docs/querying.md 7.4), with a key
    of its history as its descriptor shows it (`entry_keys`)."""
    key = answer.answered_by_public_key
    if len(key) != 32 or not is_key_of_hub(answer.answered_by, key, answer.answered_by_key_history):
        raise ClientError("the answer names an entry hub whose key it does not carry")
    if answer.answered_by != entry_hub_id:
        raise ClientError(f"the answer was signed by hub {answer.answered_by}, not by hub {entry_hub_id}")
    if key not in entry_keys:
        raise ClientError(f"the answer is signed by a key that is not in hub {entry_hub_id}'s key history")
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(answer.summary_signature, ANSWER_DOMAIN + answer.summary)
    except InvalidSignature:
        raise ClientError("the entry hub's signature over the answer does not verify") from None
    signed = query_pb2.AnswerSummary.FromString(answer.summary)
    expected = query_pb2.AnswerSummary(
        query_digest=digest, answered_by=answer.answered_by, partial=answer.partial,
        missing_hubs=answer.missing_hubs, merged_at_ms=signed.merged_at_ms,
        provenance=[query_pb2.ProvenanceSummary(
            hub_id=p.hub_id, municipality=p.municipality, status=p.status, reason=p.reason, agreement_id=p.agreement_id,
            partial_digest=hashlib.sha256(p.sealed_partial).digest() if p.sealed_partial else b"",
            agreement_digest=hashlib.sha256(p.agreement).digest() if p.agreement else b"",
        ) for p in answer.provenance])
    if signed.merged_at_ms <= 0 or signed != expected:
        raise ClientError("the answer differs from what the entry hub signed")


def check_complete(answer, spec: query_pb2.QuerySpec) -> None:
    """The answer accounts for every hub and municipality you named, and `partial`/`missing_hubs`
    are exactly the hubs that did not answer (docs/querying.md 7.4): otherwise the entry hub could
    drop a hub you asked, or hide one that did not answer, and the merge would look complete."""
    listed = [p.hub_id for p in answer.provenance]
    if spec.hub_ids and not spec.municipalities and set(listed) != set(spec.hub_ids):
        absent = sorted(set(spec.hub_ids) - set(listed))
        raise ClientError(f"the answer does not list exactly the hubs asked; not listed: {', '.join(absent)}")
    if spec.hub_ids and set(listed) - set(spec.hub_ids):
        raise ClientError(f"the answer lists hubs not asked: {', '.join(sorted(set(listed) - set(spec.hub_ids)))}")
    if spec.municipalities:
        named = {p.municipality for p in answer.provenance}
        if named - set(spec.municipalities):
            raise ClientError(f"the answer lists municipalities not asked: {', '.join(sorted(named - set(spec.municipalities)))}")
        if set(spec.municipalities) - named:
            raise ClientError(f"the answer lists no hub of municipality {', '.join(sorted(set(spec.municipalities) - named))}")
    not_answered = [p.hub_id for p in answer.provenance if p.status != "answered"]
    if answer.partial != bool(not_answered) or list(answer.missing_hubs) != not_answered:
        raise ClientError("the answer's partial flag and missing hubs are not the hubs that did not answer")


def check_agreement(p, partial, partner_id: str) -> None:
    """The partial speaks for the municipality YOU co-signed for this provider (docs/querying.md
    7.5 step 6): the entry hub relays the agreement, signed by the provider and by you, that
    binds the provider's hub id to its kommunenummer; the provenance's municipality is only the
    entry hub's word."""
    try:
        signed = agreement_pb2.SignedTerms.FromString(p.agreement)
        terms = agreement_pb2.AgreementTerms.FromString(signed.terms)
    except Exception:
        raise ClientError(f"hub {p.hub_id}: the agreement it answered under does not parse") from None
    provider, consumer = terms.provider, terms.consumer
    if not p.agreement or terms.agreement_id != partial.agreement_id or provider.id != partial.provider_hub_id \
            or hub_id_of(provider.public_key) != provider.id or not partner_id_of(consumer.public_key) == consumer.id == partner_id:
        raise ClientError(f"hub {p.hub_id}: the answer does not carry its agreement {partial.agreement_id} with you")
    keys = {provider.id: provider.public_key, consumer.id: consumer.public_key}
    if sorted(s.signer_id for s in signed.signatures) != sorted(keys):
        raise ClientError(f"hub {p.hub_id}: agreement {terms.agreement_id} is not signed by both parties")
    for s in signed.signatures:
        try:
            Ed25519PublicKey.from_public_bytes(keys[s.signer_id]).verify(s.signature, AGREEMENT_DOMAIN + signed.terms)
        except (InvalidSignature, ValueError):
            raise ClientError(f"hub {p.hub_id}: a signature over agreement {terms.agreement_id} does not verify") from None
    if provider.municipality != partial.municipality:
        raise ClientError(f"hub {p.hub_id}: the partial speaks for municipality {partial.municipality}, "
                          f"agreement {terms.agreement_id} names {provider.municipality or 'none'}")


def unpad(padded: bytes, hub_id: str) -> bytes:
    """Strip the ISO/IEC 7816-4 padding: trailing 0x00 bytes, then one 0x80."""
    body = padded.rstrip(b"\x00")
    if not body.endswith(b"\x80"):
        raise ClientError(f"hub {hub_id}: the opened partial is not padded (no 0x80 marker)")
    return body[:-1]


def open_partials(answer, digest: bytes, answer_key: X25519PrivateKey, spec: query_pb2.QuerySpec, partner_id: str) -> list:
    """Open each sealed partial (HPKE), check its signature, query, municipality, agreement and cells."""
    opened, seen = [], set()
    starts = set(bucket_starts(spec))
    for p in answer.provenance:
        if p.hub_id in seen:  # its figures would be counted twice
            raise ClientError(f"hub {p.hub_id} is listed twice in the answer")
        seen.add(p.hub_id)
        if p.status != "answered":
            continue
        try:
            padded = HPKE.decrypt(p.sealed_partial, answer_key, info=SEAL_INFO_PREFIX + digest + p.hub_id.encode())
        except Exception:
            raise ClientError(f"hub {p.hub_id}: the sealed partial does not open with this query's key") from None
        signed = query_pb2.SignedPartial.FromString(unpad(padded, p.hub_id))
        try:
            Ed25519PublicKey.from_public_bytes(signed.provider_public_key).verify(signed.signature, PARTIAL_DOMAIN + signed.partial)
        except (InvalidSignature, ValueError):
            raise ClientError(f"hub {p.hub_id}: the partial result's signature does not verify") from None
        partial = query_pb2.PartialResult.FromString(signed.partial)
        if partial.provider_hub_id != p.hub_id or not is_key_of_hub(p.hub_id, signed.provider_public_key,
                                                                      signed.provider_key_history):
            raise ClientError(f"hub {p.hub_id}: the partial result names another provider than its signer")
        if partial.query_digest != digest:
            raise ClientError(f"hub {p.hub_id}: the partial result answers another query")
        if partial.municipality != p.municipality or partial.agreement_id != p.agreement_id:
            raise ClientError(f"hub {p.hub_id}: the partial's municipality or agreement is not the one the entry hub signed")
        check_agreement(p, partial, partner_id)
        group = p.municipality if spec.group_by == "municipality" else "region"
        cells = [c.bucket_start_ms for c in partial.cells]
        if any(c.group != group for c in partial.cells) or not set(cells) <= starts or len(cells) != len(set(cells)):
            raise ClientError(f"hub {p.hub_id}: the partial holds a cell outside the query")
        opened.append(partial)
    return opened


def bucket_starts(spec: query_pb2.QuerySpec) -> list[int]:
    if spec.bucket == "window":
        return [spec.start_ms]
    out, at = [], dt.datetime.fromtimestamp(spec.start_ms / 1000, dt.UTC)
    while at.timestamp() * 1000 < spec.end_ms:
        out.append(int(at.timestamp() * 1000))
        if spec.bucket in ("hour", "day", "week"):
            at += {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}[spec.bucket]
        elif spec.bucket == "month":
            at = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
        else:
            at = at.replace(year=at.year + 1)
    return out


def label(bucket: str, start_ms: int) -> str:
    when = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC)
    iso = when.isocalendar()
    return {"hour": when.strftime("%Y-%m-%dT%H:00Z"), "day": when.strftime("%Y-%m-%d"), "week": f"{iso.year}-W{iso.week:02d}",
            "month": when.strftime("%Y-%m"), "year": when.strftime("%Y")}.get(bucket, "window")


GAMMA = (1 + 0.01) / (1 - 0.01)  # the sketch's accuracy alpha = 0.01


def ordinal_value(o: int) -> float:
    """A sketch ordinal's representative: 0, or +-2 gamma^k / (gamma + 1) with k = |o| - 2048."""
    return 0.0 if o == 0 else math.copysign(2 * GAMMA ** (abs(o) - 2048) / (GAMMA + 1), o)


LOWEST_EDGE, HIGHEST_EDGE = -1037, 35487  # bin edges gamma^x are clipped to where readings can be
MAX_INTERPOLATED_LEVEL = 8  # a wider bin gives its middle ordinal's value


MAX_SUBCELL_SKETCHES = 32  # a cell carries at most this many sub-cell sketches


def components(parts: list) -> list:
    """docs/querying.md 7.6: the sketches a region-wide quantile is read from: each hub's
    sub-cell sketches, or its one `coarse` sketch when it sent none."""
    out = []
    for c in parts:
        if len(c.subcells) > MAX_SUBCELL_SKETCHES:
            raise ClientError(f"a cell carries {len(c.subcells)} sub-cell sketches, more than {MAX_SUBCELL_SKETCHES}")
        out += list(c.subcells) if c.subcells else [c.coarse] if c.HasField("coarse") else []
    return out


def merged_bins(sketch) -> list[tuple[int, int, int]]:
    """docs/querying.md 7.6: one sketch's coarse bins (level, index, count). Dyadic bins are
    nested or disjoint: each bin inside no other takes the counts of the bins inside it.
    Sorted by first ordinal index * 2^level. The older uniform form (level, bins) is read too."""
    given = [(b.level, b.index, b.count) for b in sketch.intervals]
    given += [(sketch.level, index, n) for index, n in sketch.bins.items()]
    if any(not 3 <= level <= 13 for level, _, _ in given):
        raise ClientError("a partial holds a coarse bin outside levels 3 to 13")
    merged: dict[tuple[int, int], int] = {}
    for level, index, n in sorted(given, key=lambda b: -b[0]):  # the coarsest first
        outer = next(((up, index >> (up - level)) for up in range(level, 14) if (up, index >> (up - level)) in merged),
                     (level, index))
        merged[outer] = merged.get(outer, 0) + n
    return sorted(((level, index, n) for (level, index), n in merged.items()), key=lambda b: b[1] << b[0])


def value_in_bin(level: int, index: int, f: float) -> float:
    """The value at fraction f of the way through bin (level, index): geometric between its edges."""
    first, end = index << level, (index + 1) << level
    if level > MAX_INTERPOLATED_LEVEL:
        return ordinal_value((first + end) // 2)

    def clip(x: int) -> int:
        return min(max(x, LOWEST_EDGE), HIGHEST_EDGE)

    if first > 0:
        lo, hi = clip(first - 2049), clip(end - 2049)
        return float(GAMMA ** (lo + f * (hi - lo)))
    if end <= 0:
        lo, hi = clip(-end - 2048), clip(-first - 2048)
        return -float(GAMMA ** (hi - f * (hi - lo)))
    top = end - 2049  # the bin holding zero
    return 0.0 if top < LOWEST_EDGE else f * float(GAMMA ** clip(top))


def coarse_quantile(sketch, q: float) -> float:
    """One sketch's quantile: in the first bin whose cumulative count exceeds r = q * (n - 1),
    the value at fraction (r - before + 1) / (count + 1) of the way through it."""
    bins = merged_bins(sketch)
    total = sum(n for _, _, n in bins)
    if total == 0:
        return math.nan
    rank, before = q * (total - 1), 0
    for level, index, n in bins:
        if n and before + n > rank:
            return value_in_bin(level, index, (rank - before + 1) / (n + 1))
        before += n
    level, index, n = bins[-1]
    return value_in_bin(level, index, n / (n + 1))


def _order(x: float) -> int:  # doubles -> integers in the same order
    bits = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF)


def _double(k: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", k if k >= 0 else (-k) | (1 << 63)))[0]


def placed_at_rank(bins: list, rank: int) -> float:
    """The reading at 0-based `rank` when each bin's c readings are placed at fractions
    j / (c + 1), j = 1..c: the smallest double with more than `rank` placed at or below it."""
    def at_most_in(level: int, index: int, n: int, v: float) -> int:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if value_in_bin(level, index, mid / (n + 1)) <= v else (lo, mid - 1)
        return lo

    def at_most(v: float) -> int:
        return sum(at_most_in(level, index, n, v) for level, index, n in bins)

    lo = _order(min(value_in_bin(level, index, 1 / (n + 1)) for level, index, n in bins))
    hi = _order(max(value_in_bin(level, index, n / (n + 1)) for level, index, n in bins))
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at_most(_double(mid)) > rank else (mid + 1, hi)
    return _double(lo)


def mixture_quantile(sketches: list, q: float) -> float:
    """Region-wide quantile (docs/querying.md 7.6): one sketch is read as coarse_quantile; of
    several, the value at rank r = q * (n - 1) of all their bins' placed readings, between the
    two around a fractional rank geometrically (linearly across zero)."""
    if len(sketches) == 1:
        return coarse_quantile(sketches[0], q)
    bins = [b for sketch in sketches for b in merged_bins(sketch) if b[2]]
    total = sum(n for _, _, n in bins)
    if total == 0:
        return math.nan
    rank = q * (total - 1)
    i = min(int(rank), total - 1)
    t = rank - i
    a = placed_at_rank(bins, i)
    if t == 0 or i + 1 >= total:
        return a
    b = placed_at_rank(bins, i + 1)
    if a > 0 and b > 0:
        return a * (b / a) ** t
    if a < 0 and b < 0:
        return -(-a * (b / a) ** t)
    return a + t * (b - a)


def merge(partials: list, spec: query_pb2.QuerySpec) -> list[dict]:
    """docs/querying.md 7.6: per municipality the provider's value as is; region-wide the exact sums."""
    cells: dict[tuple[int, str], list] = {}
    for partial in partials:
        for c in partial.cells:
            cells.setdefault((c.bucket_start_ms, c.group), []).append(c)
    rows = []
    for (start, group), parts in sorted(cells.items()):
        if any(c.suppressed for c in parts):
            rows.append({"group": group, "bucket": label(spec.bucket, start), "bucket_start_ms": start, "value": None,
                         "readings": 0, "contributors": 0, "suppressed": True, "noisy": False})
            continue
        n, s, s2 = sum(c.count for c in parts), sum(c.sum for c in parts), sum(c.sum_squares for c in parts)
        if spec.group_by == "municipality":
            if len(parts) != 1:
                raise ClientError(f"two hubs answered for municipality {group}")
            value = parts[0].value
        elif spec.aggregate == "quantile":
            sketches = components(parts)
            value = mixture_quantile(sketches, spec.quantile) if sketches else math.nan
        else:
            value = {"count": float(n), "sum": s, "mean": s / n if n else 0.0,
                     "min": min(c.min for c in parts), "max": max(c.max for c in parts),
                     "stddev": math.sqrt(max(0.0, (s2 - s * s / n) / (n - 1))) if n > 1 else 0.0}[spec.aggregate]
        rows.append({"group": group, "bucket": label(spec.bucket, start), "bucket_start_ms": start, "value": value, "readings": n,
                     "contributors": sum(c.contributors for c in parts), "suppressed": False,
                     "noisy": any(c.noisy for c in parts)})
    return rows


def readable(answer, rows: list[dict]) -> dict:
    return {
        "rows": rows,
        "partial": answer.partial,
        "missing_hubs": list(answer.missing_hubs),
        "provenance": [{"hub_id": p.hub_id, "municipality": p.municipality, "status": p.status, "reason": p.reason,
                        "agreement_id": p.agreement_id, "signature_verified": p.status == "answered"} for p in answer.provenance],
        "answered_by": answer.answered_by,
    }


def utc_ms(day: str) -> int:
    d = dt.date.fromisoformat(day)
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", type=Path, required=True, help="the partner's private key file (smartregion partner keygen)")
    parser.add_argument("--hub", required=True, help="HOST:PORT of the hub to ask")
    parser.add_argument("--hub-id", required=True, help="that hub's id, obtained from its admin (the pin)")
    for name in ("dataset", "metric", "aggregate", "purpose"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--from", dest="start", required=True, help="first day of the window (UTC)")
    parser.add_argument("--to", dest="end", required=True, help="day after the window (UTC)")
    parser.add_argument("--quantile", type=float, default=0.0)
    parser.add_argument("--bucket", default="window")
    parser.add_argument("--group-by", default="region")
    parser.add_argument("--municipality", action="append", default=[])
    parser.add_argument("--ask-hub", action="append", default=[])
    parser.add_argument("--deadline-ms", type=int, default=0)
    args = parser.parse_args(argv)

    hub_id = args.hub_id.strip().lower()
    spec = query_pb2.QuerySpec(
        dataset=args.dataset, metric=args.metric, aggregate=args.aggregate, quantile=args.quantile,
        start_ms=utc_ms(args.start), end_ms=utc_ms(args.end), bucket=args.bucket, group_by=args.group_by,
        municipalities=args.municipality, hub_ids=args.ask_hub, purpose_code=args.purpose, deadline_ms=args.deadline_ms,
    )
    answer_key = X25519PrivateKey.generate()  # for this one query: only this process can open the partials
    spec.answer_key = answer_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        key = load_partner_key(args.key, passphrase())
        cert_pem, entry_keys = pinned_hub(args.hub, hub_id, args.key.with_name(args.key.name + ".known-hubs.json"))
        signed = sign_query(key, hub_id, spec)
        with open_channel(args.hub, hub_id, cert_pem) as channel:
            timeout_s = (args.deadline_ms or 10_000) / 1000 + 5  # the hubs' deadline, plus merging
            answer = query_service_pb2_grpc.QueryStub(channel).Run(signed, timeout=timeout_s)
        if answer.query.payload != signed.payload:
            raise ClientError("the hub answered a different query than the one signed")
        digest = hashlib.sha256(signed.payload).digest()
        verify_summary(answer, digest, hub_id, entry_keys)
        check_complete(answer, spec)
        rows = merge(open_partials(answer, digest, answer_key, spec, partner_id_of(raw(key.public_key()))), spec)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        reason = dict(exc.trailing_metadata() or ()).get("smartregion-reason")
        print(f"error: the hub answered {exc.code().name}{f' ({reason})' if reason else ''}: {exc.details()}", file=sys.stderr)
        return 1
    json.dump(readable(answer, rows), sys.stdout, indent=2)
    print()
    if answer.partial:
        print(f"warning: partial answer, missing {', '.join(answer.missing_hubs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
