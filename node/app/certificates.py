"""The TLS certificate and identity key a running hub serves: the certificate renewed and the
identity key rotated without a restart, the certificate watched for expiry.

gRPC takes the certificate through `dynamic_ssl_server_credentials`: its fetcher is asked at
every new TLS handshake and returns a new configuration once after a renewal (None otherwise:
keep the current one). The HTTP side's SSLContext is reloaded in place. Connections already
open keep the certificate they began with, so peers mid-query are not cut off; new ones get the
renewed certificate, which peers re-pin at their next descriptor refresh because it is bound to
the hub's identity key (federation/outbox.py `refresh`). A key rotation also re-signs the
descriptor with the new key, whose history peers follow at once: the first request, partial or
answer signed by the new key makes them refresh the descriptor (federation/outbox.py `Outbox.follow`).

The certificate is signed by the hub's TLS issuer (node/identity.py TlsIssuer), served with
it; a renewal keeps the issuer, so sensors (which trust the issuer) are not affected. A hub made
before the issuer gets one at its first renewal (audited `cert.issuer`, with advice).

Expiry monitoring: the gauge smartregion_tls_certificate_expiry_timestamp_seconds (and
smartregion_tls_issuer_expiry_timestamp_seconds, 0 without an issuer), a log line a
day ("certificate", with days_left), the dashboard's warning from 30 days before, and an
automatic renewal when fewer than 30 days remain (node/rotation.py RENEW_BEFORE_MS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable

import grpc

from federation.descriptors import cert_sha256
from federation.service import Federation
from node import audit, keystore, rotation
from node.api.v1 import admin_pb2
from node.errors import Reason, Rejected
from node.hub import Hub
from node.hubdir import KEYS_FILE
from node.identity import HubIdentity, IdentityError
from node.tlsfiles import load_certificate

log = logging.getLogger("smartregion.certificates")
CHECK_INTERVAL_S = 24 * 3600.0


class ServedCertificate:
    def __init__(self, hub: Hub, federation: Federation) -> None:
        self.hub = hub
        self.federation = federation
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._pending_lock = threading.Lock()  # the fetcher runs on a gRPC thread
        self._changing = asyncio.Lock()  # one renewal or rotation at a time: each starts from the identity served
        self._ssl_contexts: list[ssl.SSLContext] = []
        self._publish_metrics()

    # -- serving -------------------------------------------------------------------------
    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._configuration(self.hub.identity), self._fetch,
                                                   require_client_authentication=False)

    def serve_http_with(self, context: ssl.SSLContext) -> None:
        self._ssl_contexts.append(context)

    @staticmethod
    def _configuration(identity: HubIdentity) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(identity.tls_key_pem, identity.tls_chain_pem)])

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        return pending

    def _serve(self, identity: HubIdentity) -> None:
        with self._pending_lock:
            self._pending = self._configuration(identity)
        for context in self._ssl_contexts:
            load_certificate(context, identity.tls_chain_pem, identity.tls_key_pem)

    # -- renewal -------------------------------------------------------------------------
    def status(self) -> admin_pb2.CertificateStatus:
        identity = self.hub.identity
        state = rotation.certificate_state(identity, self.hub.clock)
        return admin_pb2.CertificateStatus(
            certificate_sha256=cert_sha256(identity.tls_cert_pem).hex(), not_after_ms=state.expires_at_ms,
            days_left=state.days_left, renewal_due=state.renewal_due, message=state.describe(),
            key_rotations=len(identity.key_history),
            issuer_not_after_ms=identity.issuer_expires_ms or 0,
            issuer_sha256=cert_sha256(identity.tls_issuer.cert_pem).hex() if identity.tls_issuer else "")

    async def renew(self, why: str) -> admin_pb2.CertificateStatus:
        """A new TLS key and certificate bound to the identity key: written to keys.json (under
        the passphrase the hub started with, which must still open it: a passphrase changed
        meanwhile is not silently reverted), served from the next handshake, announced in the
        descriptor, audited."""
        async with self._changing:
            before = self.hub.identity
            renewed = await self._replace_identity("cert.renew", "renew the certificate", "smartregion cert renew",
                                                   lambda current: current.with_renewed_certificate(self.hub.clock))
            status = self.status()
            await audit.admin_action(self.hub.storage, self.hub.clock.now_ms(), "cert.renew", self.hub.config.hub_id,
                                     f"{why}; sha256 {status.certificate_sha256[:16]}…, {status.message}")
            log.info("certificate renewed", extra={"why": why, "sha256": status.certificate_sha256,
                                                   "not_after_ms": renewed.certificate_expires_ms})
            status.issuer_created = await self._issuer_created(why, before, renewed)
            return status

    async def rotate_key(self, new_issuer: bool = False) -> tuple[HubIdentity, HubIdentity]:
        """Rotate the identity key of this running hub (node/rotation.py `rotate_identity` is the
        stopped hub's path): a new key, the statement both keys sign, a new TLS certificate bound
        to the new key; written to keys.json first (nothing changes if that fails), then swapped
        in as `hub.identity` in one assignment on the event loop. Every signer reads
        `hub.identity` when it signs, taking key, public key and history from that one object,
        so a request is signed wholly by the old key or wholly by the new one. `new_issuer`: a new TLS
        issuer too (HubIdentity.rotated). Returns (old, new)."""
        async with self._changing:
            old = self.hub.identity
            try:
                new = await self._replace_identity("key.rotate", "rotate the identity key", "smartregion key rotate",
                                                   lambda current: current.rotated(self.hub.clock, new_issuer))
            except IdentityError as exc:  # nothing was written
                raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
            await audit.admin_action(self.hub.storage, self.hub.clock.now_ms(), "key.rotate", self.hub.config.hub_id,
                                     rotation.rotation_detail(old, new, "live"))
            if new_issuer:
                await audit.admin_action(self.hub.storage, self.hub.clock.now_ms(), "cert.issuer", self.hub.config.hub_id,
                                         rotation.issuer_replaced_detail(new))
                log.warning("TLS issuer replaced", extra={"advice": rotation.ISSUER_REPLACED_ADVICE})
            log.info("identity key rotated", extra={"rotation": len(new.key_history),
                                                    "new_key": new.public_key_raw.hex()})
            await self._issuer_created("key rotation", old, new)
            return old, new

    async def _issuer_created(self, why: str, before: HubIdentity, after: HubIdentity) -> bool:
        """Audit (`cert.issuer`) and log the TLS issuer a hub made before it got with this change."""
        if before.tls_issuer is not None or after.tls_issuer is None:
            return False
        hub = self.hub
        issuer_sha256 = cert_sha256(after.tls_issuer.cert_pem).hex()
        await audit.admin_action(hub.storage, hub.clock.now_ms(), "cert.issuer", hub.config.hub_id,
                                 f"{why}: TLS issuer created, sha256 {issuer_sha256[:16]}…; sensors "
                                 "enrolled before need their credential re-issued once")
        log.warning("TLS issuer created", extra={"issuer_sha256": issuer_sha256,
                                                 "advice": rotation.issuer_created_advice(hub.hub_dir.path)})
        return True

    async def _replace_identity(self, action: str, what: str, offline_command: str,
                                change: Callable[[HubIdentity], HubIdentity]) -> HubIdentity:
        """Write `change(current identity)` to keys.json under the passphrase the hub started
        with (refused, and audited, when that no longer opens it), then serve it: hub.identity,
        the descriptor, the certificate of the next handshake, the expiry gauge."""
        hub = self.hub
        keys_file = hub.hub_dir.file(KEYS_FILE)
        try:
            await asyncio.to_thread(keystore.read, keys_file, hub.passphrase)
        except (keystore.KeystoreError, OSError) as exc:
            message = (f"cannot {what}: {keys_file} does not open with the passphrase the hub started "
                       f"with ({exc}); restart the hub, or stop it and run `{offline_command}`")
            await audit.admin_action(hub.storage, hub.clock.now_ms(), action, hub.config.hub_id, message)
            raise Rejected(Reason.INTERNAL, message) from None
        changed = change(hub.identity)
        await asyncio.to_thread(hub.hub_dir.write_identity, changed, hub.passphrase)
        hub.identity = changed
        self.federation.identity_changed()
        self._serve(changed)
        self._publish_metrics()
        return changed

    def _publish_metrics(self) -> None:
        self.hub.metrics.certificate_expiry.set(self.hub.identity.certificate_expires_ms / 1000)
        self.hub.metrics.issuer_expiry.set((self.hub.identity.issuer_expires_ms or 0) / 1000)

    # -- monitoring ----------------------------------------------------------------------
    async def check(self) -> admin_pb2.CertificateStatus:
        """One daily check: the gauge, a log line, and a renewal if fewer than 30 days remain."""
        self._publish_metrics()
        status = self.status()
        extra = {"days_left": round(status.days_left, 1), "not_after_ms": status.not_after_ms}
        if not status.renewal_due:
            log.info("certificate", extra=extra)
            return status
        log.warning("certificate", extra={**extra, "advice": status.message})
        try:
            return await self.renew("automatic: fewer than 30 days left")
        except Rejected as exc:
            log.error("certificate renewal failed", extra={"error": exc.message})
            return status

    async def monitor(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check()
            except Exception:  # keep watching: tomorrow's check may succeed
                log.exception("certificate check failed")
            sleeper = asyncio.ensure_future(self.hub.clock.sleep(CHECK_INTERVAL_S))
            stopper = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
