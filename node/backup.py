"""Backups of a hub's data directory, made while it serves, and their restore.

An archive (tar, gzip) holds exactly:

    manifest.json   format, hub id, time, schema version, and the SHA-256 and size of each file
    hub.toml        the configuration (no secrets)
    keys.json       the keystore exactly as on disk: still encrypted under the passphrase
    tls-cert.pem    the hub's certificate
    hub.db          a consistent snapshot taken with SQLite's online backup API

tls-issuer.pem is not in it: keys.json holds the issuer, and a restore writes the public copy.

It holds no plaintext secret: the admin token is left out (a restore issues a new one), and the
sensor keys in hub.db are wrapped under the key-encryption key inside keys.json. The archive
file is 0600 all the same. A backup is refused when the passphrase does not open keys.json,
since such a backup could never be restored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from node import __version__, audit, keystore
from node.fileio import write_private_file
from node.hubdir import (
    ADMIN_TOKEN_FILE,
    CERT_FILE,
    CONFIG_FILE,
    DB_FILE,
    KEYS_FILE,
    HubDir,
    HubDirError,
    hash_token,
    new_admin_token,
    write_public_certificates,
)

FORMAT = "smartregion-backup"
MANIFEST = "manifest.json"
FILES = (CONFIG_FILE, KEYS_FILE, CERT_FILE, DB_FILE)
MAX_MEMBER_BYTES = 64 * 1024**3  # a restore refuses members larger than this (a hostile archive)


class BackupError(HubDirError):
    pass


@dataclass(frozen=True)
class Manifest:
    hub_id: str
    created_at_ms: int
    schema_version: int
    smartregion_version: str
    files: dict[str, dict[str, int | str]]  # name -> {"sha256", "size"}

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": 1, "hub_id": self.hub_id, "created_at_ms": self.created_at_ms,
                           "schema_version": self.schema_version, "smartregion_version": self.smartregion_version,
                           "files": self.files}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("version") != 1:
                raise BackupError("not a smartregion backup (version 1)")
            manifest = cls(doc["hub_id"], int(doc["created_at_ms"]), int(doc["schema_version"]), str(doc["smartregion_version"]),
                           {name: {"sha256": str(f["sha256"]), "size": int(f["size"])} for name, f in doc["files"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"the backup's manifest is damaged: {exc}") from None
        if sorted(manifest.files) != sorted(FILES):
            raise BackupError(f"the backup must hold exactly {', '.join(FILES)}; it lists {', '.join(sorted(manifest.files))}")
        return manifest


def _snapshot_database(source: Path, target: Path) -> int:
    """Copy a live SQLite database with the online backup API; return its schema version."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # one consistent snapshot, even while the hub writes
        dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the database snapshot fails SQLite's integrity check: {check}")
        return int(dst.execute("PRAGMA user_version").fetchone()[0])
    finally:
        dst.close()
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None, mtime: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o600, mtime
    if path is not None:
        info.size = path.stat().st_size
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        assert data is not None
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def create(hub_dir: HubDir, out: Path, passphrase: bytes, now_ms: int) -> Manifest:
    """Write a backup of the hub in `hub_dir` (running or not) to `out` (0600, atomically)."""
    config = hub_dir.config()
    try:
        hub_dir.identity(passphrase)
    except HubDirError as exc:
        raise BackupError(f"refusing to back up: the passphrase given does not open this hub's keys ({exc}); "
                          "a backup is only useful with the passphrase that restores it") from None
    out = Path(out)
    if out.is_dir():
        raise BackupError(f"{out} is a directory; give the archive's file name")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory")
    # Recorded before the snapshot, so the backup holds the record that it was made.
    audit.record_in_database(hub_dir.file(DB_FILE), audit.AuditEntry("admin", "backup.create", config.hub_id, "ok", f"to {out}", now_ms))
    with tempfile.TemporaryDirectory(prefix=".smartregion-backup-", dir=out.parent) as staging:
        snapshot = Path(staging) / DB_FILE
        schema = _snapshot_database(hub_dir.file(DB_FILE), snapshot)
        sources = {name: hub_dir.file(name) for name in FILES if name != DB_FILE} | {DB_FILE: snapshot}
        files: dict[str, dict[str, int | str]] = {name: {"sha256": _sha256(p), "size": p.stat().st_size} for name, p in sources.items()}
        manifest = Manifest(config.hub_id, now_ms, schema, __version__, files)
        archive = Path(staging) / "archive.tar.gz"
        fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add(tar, MANIFEST, manifest.to_json(), mtime=now_ms // 1000)
            for name, path in sources.items():
                _add(tar, name, path=path, mtime=now_ms // 1000)
        with open(archive, "rb") as f:
            os.fsync(f.fileno())
        os.replace(archive, out)
    return manifest


def read_manifest(archive: Path) -> Manifest:
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            if handle is None:
                raise BackupError("the backup's manifest is not a file")
            return Manifest.from_json(handle.read(1 << 20))
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise BackupError(f"{archive} is not a readable smartregion backup: {exc}") from None


def restore(archive: Path, target: Path, passphrase: bytes) -> Manifest:
    """Restore `archive` into `target` (which must not hold a hub, nor anything else). Checks
    every file's hash and that the passphrase opens the keys before anything is in place; writes
    a new admin token. Nothing is left behind on failure."""
    target = Path(target)
    if HubDir(target).exists:
        raise BackupError(f"{target} already holds a hub; restore into a new directory (nothing changed)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not an empty directory; restore into a new one (nothing changed)")
    manifest = read_manifest(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        os.chmod(staging, 0o700)
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.name == MANIFEST:
                    continue
                if member.name not in manifest.files or not member.isfile():
                    raise BackupError(f"the backup holds an unexpected entry {member.name!r}; refusing it")
                if member.size > MAX_MEMBER_BYTES or member.size != manifest.files[member.name]["size"]:
                    raise BackupError(f"{member.name} in the backup has the wrong size")
                handle = tar.extractfile(member)
                assert handle is not None
                dest = staging / member.name
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(handle, f)
                    f.flush()
                    os.fsync(f.fileno())
        for name, expected in manifest.files.items():
            if not (staging / name).exists():
                raise BackupError(f"the backup lacks {name}")
            if _sha256(staging / name) != expected["sha256"]:
                raise BackupError(f"{name} in the backup does not match its manifest hash (damaged or altered)")
        staged = HubDir(staging)
        if staged.config().hub_id != manifest.hub_id:
            raise BackupError("the backup's hub.toml names another hub than its manifest")
        try:
            keystore.read(staged.file(KEYS_FILE), passphrase)
        except keystore.KeystoreError as exc:
            raise BackupError(f"the passphrase does not open the backup's keys ({exc}); nothing restored") from None
        # The keys are this hub's; tls-issuer.pem (a public copy of what keys.json holds) is written from them.
        write_public_certificates(staged, staged.identity(passphrase))
        token = new_admin_token()
        write_private_file(staged.file(ADMIN_TOKEN_FILE), (token + "\n").encode())
        config = staged.config()
        config.admin_token_sha256 = hash_token(token)
        staged.write_config(config)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
