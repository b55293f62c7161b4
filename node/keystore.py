"""Secrets at rest: one file, encrypted under a key derived from the hub passphrase.

Format (JSON): {"format": "smartregion-keystore", "version": 1, "kdf": {"name": "scrypt",
"n", "r", "p", "salt"}, "nonce", "ciphertext"} with AES-256-GCM; the associated data binds the
format tag and the KDF parameters, so neither can be swapped without detection.

The passphrase comes from SMARTREGION_PASSPHRASE, or from the file named by
SMARTREGION_PASSPHRASE_FILE (first line), in that order.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from node.fileio import write_private_file

PASSPHRASE_ENV = "SMARTREGION_PASSPHRASE"
PASSPHRASE_FILE_ENV = "SMARTREGION_PASSPHRASE_FILE"
FORMAT = "smartregion-keystore"
MIN_PASSPHRASE_LENGTH = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class KeystoreError(Exception):
    pass


def passphrase_from_environment() -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    if path:
        try:
            first_line = Path(path).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise KeystoreError(f"cannot read a passphrase from {PASSPHRASE_FILE_ENV}={path}: {exc}") from exc
        if first_line:
            return first_line.encode()
    raise KeystoreError(
        f"no passphrase: set {PASSPHRASE_ENV}, or {PASSPHRASE_FILE_ENV} to a file holding it"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _aad(kdf: dict) -> bytes:
    return json.dumps({"format": FORMAT, "version": 1, "kdf": kdf}, sort_keys=True).encode()


MIN_DISTINCT_CHARACTERS = 6


def check_passphrase_strength(passphrase: bytes) -> None:
    """Refuse passphrases that are short or made of few characters ("aaaaaaaaaaaa",
    "abcabcabcabc"): a stolen keystore would fall to a quick guess. Length and variety only;
    the operator should use a generated passphrase (docs/operations.md)."""
    text = passphrase.decode("utf-8", errors="replace")
    if len(text) < MIN_PASSPHRASE_LENGTH:
        raise KeystoreError(f"the passphrase must be at least {MIN_PASSPHRASE_LENGTH} characters")
    distinct = len(set(text))
    if distinct < MIN_DISTINCT_CHARACTERS:
        raise KeystoreError(
            f"the passphrase uses only {distinct} different characters; use at least {MIN_DISTINCT_CHARACTERS} "
            "(a generated passphrase of several random words is best)"
        )
    most = max(text.count(c) for c in set(text))
    if most * 2 > len(text):
        raise KeystoreError("one character makes up more than half of the passphrase; choose a less repetitive one")


def seal(secrets_dict: dict[str, bytes], passphrase: bytes) -> bytes:
    check_passphrase_strength(passphrase)
    salt = secrets.token_bytes(16)
    kdf = {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)}
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = secrets.token_bytes(12)
    plaintext = json.dumps({k: _b64(v) for k, v in secrets_dict.items()}).encode()
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _aad(kdf))
    document = {"format": FORMAT, "version": 1, "kdf": kdf, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return json.dumps(document, indent=2).encode()


def unseal(blob: bytes, passphrase: bytes) -> dict[str, bytes]:
    try:
        document = json.loads(blob)
        if document.get("format") != FORMAT or document.get("version") != 1:
            raise KeystoreError("not a smartregion keystore (version 1)")
        kdf = document["kdf"]
        if kdf.get("name") != "scrypt":
            raise KeystoreError(f"unsupported key derivation {kdf.get('name')!r}")
        key = _derive(passphrase, base64.b64decode(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
        plaintext = AESGCM(key).decrypt(
            base64.b64decode(document["nonce"]), base64.b64decode(document["ciphertext"]), _aad(kdf)
        )
    except InvalidTag:
        raise KeystoreError("wrong passphrase, or the keystore was altered") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"the keystore is damaged: {exc}") from exc
    return {k: base64.b64decode(v) for k, v in json.loads(plaintext).items()}


def write(path: Path, secrets_dict: dict[str, bytes], passphrase: bytes) -> None:
    write_private_file(path, seal(secrets_dict, passphrase))


def read(path: Path, passphrase: bytes) -> dict[str, bytes]:
    return unseal(path.read_bytes(), passphrase)
