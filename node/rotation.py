"""Changing a hub's identity key and renewing its TLS certificate (docs/operations.md).

Both happen while the hub serves: node/app/certificates.py (`ServedCertificate.rotate_key`,
`renew`) writes the new identity, swaps it in and serves the new certificate from the next
handshake; every signer reads the hub's identity when it signs. The functions here are the
offline paths for a STOPPED hub: they hold the serving lock while they work, so the hub cannot
start half-way through.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from node import audit, hubdir
from node.clock import Clock
from node.identity import HubIdentity

RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000  # renew (and warn) when fewer than 30 days remain
DAY_MS = 24 * 3600 * 1000


class RotationError(Exception):
    pass


@dataclass(frozen=True)
class CertificateState:
    expires_at_ms: int
    now_ms: int

    @property
    def days_left(self) -> float:
        return (self.expires_at_ms - self.now_ms) / DAY_MS

    @property
    def expired(self) -> bool:
        return self.now_ms >= self.expires_at_ms

    @property
    def renewal_due(self) -> bool:
        return self.expires_at_ms - self.now_ms < RENEW_BEFORE_MS

    def describe(self) -> str:
        if self.expired:
            return f"the TLS certificate EXPIRED {-self.days_left:.0f} days ago: run `smartregion cert renew`"
        if self.renewal_due:
            return f"the TLS certificate expires in {self.days_left:.0f} days: run `smartregion cert renew`"
        return f"the TLS certificate is valid for {self.days_left:.0f} more days"


def certificate_state(identity: HubIdentity, clock: Clock) -> CertificateState:
    return CertificateState(identity.certificate_expires_ms, clock.now_ms())


def issuer_created_advice(data_dir: object) -> str:
    """What the admin must do once, when a hub made before the TLS issuer gets one."""
    return (
        "This hub now has a TLS issuer (tls-issuer.pem, valid ~25 years): credential files issued from now on trust "
        "it, and those sensors keep connecting across certificate renewals and identity-key rotations. Sensors "
        "enrolled BEFORE pin the certificate just replaced and cannot open new connections: re-issue each one's "
        f"credential file once, with the same key, by `smartregion sensor credential --data-dir {data_dir} "
        "SENSOR_ID --out FILE` (the hub running), and install it on the sensor (`smartregion sensor list` shows "
        "the ids). Peers and partners need nothing: they re-pin by the identity binding."
    )


def _audit_issuer_created(hub_dir: hubdir.HubDir, before: HubIdentity, after: HubIdentity, clock: Clock, how: str) -> bool:
    """Audit the creation of the TLS issuer (`cert.issuer`), if `after` is the first identity with one."""
    if before.tls_issuer is not None or after.tls_issuer is None:
        return False
    audit.record_in_database(hub_dir.file(hubdir.DB_FILE), audit.AuditEntry(
        "admin", "cert.issuer", after.hub_id_text, "ok",
        f"{how}: TLS issuer created, valid until {after.tls_issuer.cert.not_valid_after_utc:%Y-%m-%d}; "
        "sensors enrolled before need their credential re-issued once", at_ms=clock.now_ms()))
    return True


def _locked(hub_dir: hubdir.HubDir, what: str):
    try:
        return hub_dir.lock_for_serving()
    except hubdir.HubDirError:
        raise RotationError(
            f"the hub in {hub_dir.path} is running, and {what} needs it stopped: stop it (Ctrl-C, or "
            f"`systemctl stop smartregion`), run this command again, then start it with "
            f"`smartregion serve --data-dir {hub_dir.path}`."
        ) from None


ISSUER_REPLACED_ADVICE = ("every sensor's credential file trusts the old TLS issuer, and reaches this hub again only "
                          "with a new one: `smartregion sensor rekey` each sensor and install its new credential file "
                          "(docs/operations.md, \"Compromise\")")


def issuer_replaced_detail(new: HubIdentity) -> str:
    """What the audit log says (`cert.issuer`) when a rotation replaced the TLS issuer."""
    assert new.tls_issuer is not None
    fingerprint = new.tls_issuer.cert.fingerprint(hashes.SHA256()).hex()
    return f"key rotation: TLS issuer replaced, sha256 {fingerprint[:16]}…; {ISSUER_REPLACED_ADVICE}"


def rotate_identity(hub_dir: hubdir.HubDir, passphrase: bytes, clock: Clock,
                    new_issuer: bool = False) -> tuple[HubIdentity, HubIdentity]:
    """Rotate the identity key of the STOPPED hub in `hub_dir`: a new key, a statement signed
    by old and new key, a new TLS certificate bound to the new key (by the same TLS issuer; a
    hub made before the issuer gets one, audited as `cert.issuer`); the keystore is rewritten
    encrypted under the same passphrase and the rotation is audited. Returns (old, new)."""
    lock = _locked(hub_dir, "an identity-key rotation")
    try:
        old = hub_dir.identity(passphrase)
        new = old.rotated(clock, new_issuer)
        hub_dir.write_identity(new, passphrase)
        audit.record_in_database(hub_dir.file(hubdir.DB_FILE), audit.AuditEntry(
            "admin", "key.rotate", old.hub_id_text, "ok",
            rotation_detail(old, new, "offline"), at_ms=clock.now_ms()))
        if new_issuer:
            audit.record_in_database(hub_dir.file(hubdir.DB_FILE), audit.AuditEntry(
                "admin", "cert.issuer", old.hub_id_text, "ok", issuer_replaced_detail(new), at_ms=clock.now_ms()))
        _audit_issuer_created(hub_dir, old, new, clock, "key rotation")
    finally:
        lock.close()
    return old, new


def rotation_detail(old: HubIdentity, new: HubIdentity, how: str) -> str:
    """What the audit log says of a rotation (the same for the live and the offline path)."""
    return (f"rotation {len(new.key_history)} ({how}): key {old.public_key_raw.hex()[:16]}... -> "
            f"{new.public_key_raw.hex()[:16]}...")


def renew_certificate(hub_dir: hubdir.HubDir, passphrase: bytes, clock: Clock) -> tuple[HubIdentity, HubIdentity]:
    """Renew the TLS certificate of the STOPPED hub in `hub_dir` (a running hub renews its own:
    the `RenewCertificate` admin call). A hub made before the TLS issuer gets one (audited as
    `cert.issuer`). Returns (before, renewed)."""
    lock = _locked(hub_dir, "renewing the certificate offline")
    try:
        before = hub_dir.identity(passphrase)
        renewed = before.with_renewed_certificate(clock)
        hub_dir.write_identity(renewed, passphrase)
        _audit_issuer_created(hub_dir, before, renewed, clock, "offline renewal")
        audit.record_in_database(hub_dir.file(hubdir.DB_FILE), audit.AuditEntry(
            "admin", "cert.renew", renewed.hub_id_text, "ok", f"offline; valid until {renewed.tls_cert.not_valid_after_utc:%Y-%m-%d}",
            at_ms=clock.now_ms()))
    finally:
        lock.close()
    return before, renewed
