"""Partner credentials: a partner makes its own key pair; hubs only ever see the public half.

The private file is a keystore (node/keystore.py) under the partner's passphrase
(SMARTREGION_PASSPHRASE or SMARTREGION_PASSPHRASE_FILE); the public file is plain JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node import keystore
from node.fileio import write_private_file
from node.signing import partner_id_from_public_key

PUBLIC_FORMAT = "smartregion-partner-public-key"
ORG_NUMBER = re.compile(r"\A[0-9]{9}\Z")  # ASCII digits only; \d and $ would admit others and a newline


class PartnerKeyError(ValueError):
    pass


@dataclass(frozen=True)
class PartnerKey:
    key: Ed25519PrivateKey
    name: str

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def partner_id(self) -> str:
        return partner_id_from_public_key(self.public_key)


def public_file_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub.json")


def public_document(partner: PartnerKey) -> bytes:
    return json.dumps({
        "format": PUBLIC_FORMAT, "version": 1, "partner_id": partner.partner_id,
        "public_key": partner.public_key.hex(), "name": partner.name,
    }, indent=2).encode()


def keygen(out: Path, name: str, passphrase: bytes) -> PartnerKey:
    """Write the encrypted private key to `out` and the public key to `out`.pub.json."""
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a key")
    partner = PartnerKey(Ed25519PrivateKey.generate(), name)
    raw = partner.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    keystore.write(out, {"partner_key": raw, "name": name.encode()}, passphrase)
    write_private_file(public_file_path(out), public_document(partner))
    return partner


def load_private(path: Path, passphrase: bytes) -> PartnerKey:
    try:
        values = keystore.read(Path(path), passphrase)
        return PartnerKey(Ed25519PrivateKey.from_private_bytes(values["partner_key"]), values.get("name", b"").decode())
    except FileNotFoundError:
        raise PartnerKeyError(f"no partner key at {path}") from None
    except (keystore.KeystoreError, KeyError, ValueError) as exc:
        raise PartnerKeyError(f"cannot open the partner key {path}: {exc}") from None


def parse_public(data: bytes) -> tuple[str, bytes]:
    """(partner id, public key) from a public key file; the id must match the key."""
    try:
        doc = json.loads(data)
        if doc.get("format") != PUBLIC_FORMAT or doc.get("version") != 1:
            raise PartnerKeyError("not a smartregion partner public key file (version 1)")
        key = bytes.fromhex(doc["public_key"])
        partner_id = partner_id_from_public_key(key)
    except PartnerKeyError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PartnerKeyError(f"the partner public key file is damaged: {exc}") from None
    if doc.get("partner_id") != partner_id:
        raise PartnerKeyError("the partner id in the file does not match its public key")
    return partner_id, key
