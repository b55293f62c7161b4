"""Changing a hub's credentials without changing the hub: the admin token and the passphrase.

Admin token: a new random token is written to `admin.token.new`, its hash into hub.toml, and
then it is renamed to `admin.token`. A crash between the steps leaves `admin.token.new`
holding the token hub.toml accepts (docs/operations.md says to rename it by hand).

Passphrase: keys.json is decrypted with the old passphrase and re-encrypted under the new one
(new salt, new nonce) by one atomic rename, so the file is at every moment readable with
exactly one of the two passphrases. A running hub holds its keys in memory and is not
affected; it needs the new passphrase at its next start.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from node import keystore
from node.fileio import write_private_file
from node.hubdir import ADMIN_TOKEN_FILE, KEYS_FILE, HubConfig, HubDir, HubDirError, hash_token, new_admin_token

PENDING_TOKEN_FILE = ADMIN_TOKEN_FILE + ".new"


def rotate_admin_token(hub_dir: HubDir, config: HubConfig) -> HubConfig:
    """Write a new admin token and accept only it from now on (in hub.toml and in `config`,
    the object a running hub checks). Returns the updated config."""
    token = new_admin_token()
    pending = hub_dir.file(PENDING_TOKEN_FILE)
    write_private_file(pending, (token + "\n").encode())
    on_disk = hub_dir.config()  # keep any other change made to hub.toml meanwhile
    on_disk.admin_token_sha256 = hash_token(token)
    hub_dir.write_config(on_disk)
    config.admin_token_sha256 = on_disk.admin_token_sha256
    os.replace(pending, hub_dir.file(ADMIN_TOKEN_FILE))
    return config


def change_passphrase(hub_dir: HubDir, old: bytes, new: bytes) -> None:
    """Re-encrypt keys.json under `new`. Raises HubDirError (nothing changed) if `old` does
    not open it, or `new` is too short or the same."""
    path: Path = hub_dir.file(KEYS_FILE)
    hub_dir.config()  # a hub directory at all?
    if len(new) < keystore.MIN_PASSPHRASE_LENGTH:
        raise HubDirError(f"the new passphrase must be at least {keystore.MIN_PASSPHRASE_LENGTH} characters; nothing changed")
    if secrets.compare_digest(old, new):
        raise HubDirError("the new passphrase is the same as the current one; nothing changed")
    try:
        values = keystore.read(path, old)
    except FileNotFoundError:
        raise HubDirError(f"{path} is missing") from None
    except keystore.KeystoreError as exc:
        raise HubDirError(f"the current passphrase does not open {path} ({exc}); nothing changed") from None
    write_private_file(path, keystore.seal(values, new))
    if keystore.read(path, new) != values:  # read back before telling anyone it worked
        raise HubDirError(f"{path} did not read back under the new passphrase")
