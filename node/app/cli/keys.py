"""`smartregion key rotate|history` and `smartregion cert status|renew` (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from cryptography import x509

from node import hubdir, rotation
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, fail, passphrase, print_json, user_errors
from node.client import AdminClient
from node.clock import SYSTEM_CLOCK
from node.keychain import KeyChain

key_app = typer.Typer(help="The hub's identity key: rotate it, show its history.", no_args_is_help=True)
cert_app = typer.Typer(help="The hub's TLS certificate: when it expires, renew it.", no_args_is_help=True)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _history_rows(chain: KeyChain) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [{"sequence": 0, "key": chain.genesis.hex(), "since": "genesis (the hub id is its hash)"}]
    rows += [{"sequence": s.sequence, "key": s.new_key.hex(), "since": _when(s.rotated_at_ms)} for s in chain.statements]
    return rows


@key_app.command("rotate")
def rotate(data_dir: DataDir, as_json: JsonFlag = False,
           new_issuer: Annotated[bool, typer.Option("--new-issuer", help="Also replace the TLS issuer (after a stolen "
                                                     "data directory); every sensor must then be rekeyed.")] = False) -> None:
    """Replace the identity key; the hub id stays, peers follow the signed history at once.
    A running hub rotates its own key while it serves; a stopped one is rotated here."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        hub_dir.config()
        if hub_dir.running():
            with AdminClient(data_dir) as client:
                done = client.call("RotateIdentityKey", admin_pb2.RotateIdentityKeyRequest(new_tls_issuer=new_issuer))
            hub_id, old_key, new_key, history = done.hub_id, done.old_public_key, done.new_public_key, list(done.key_history)
            issuer_created = done.issuer_created
            how = "the running hub signs with the new key and serves the new certificate from now on"
        else:
            try:
                old, new = rotation.rotate_identity(hub_dir, passphrase(), SYSTEM_CLOCK, new_issuer)
            except rotation.RotationError as exc:
                raise fail(str(exc)) from None
            hub_id, old_key, new_key, history = new.hub_id_text, old.public_key_raw, new.public_key_raw, list(new.key_history)
            issuer_created = old.tls_issuer is None and new.tls_issuer is not None
            how = f"the hub signs with the new key when it starts (`smartregion serve --data-dir {hub_dir.path}`)"
    if as_json:
        print_json({"hub_id": hub_id, "rotation": len(history), "old_key": old_key.hex(), "new_key": new_key.hex(),
                    "history": [s.hex() for s in history], "issuer_replaced": new_issuer})
        return
    console.print(f"Rotated the identity key of hub {hub_id} (rotation {len(history)}; the hub id stays).")
    console.print(f"  old key {old_key.hex()}")
    console.print(f"  new key {new_key.hex()}")
    console.print(f"The statement linking them is signed by both keys; the TLS certificate was re-issued for the new key; {how}.")
    console.print("Peers and partners follow the new key as soon as they see it signed (they fetch the descriptor "
                  "and check the history). If the old key leaked, read docs/operations.md, \"Compromise\".")
    if issuer_created:
        console.print(rotation.issuer_created_advice(hub_dir.path))
    if new_issuer:
        console.print(f"The TLS issuer was replaced: {rotation.ISSUER_REPLACED_ADVICE}.")


@key_app.command("history")
def history(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """The identity keys, genesis first, with when each took over (needs the passphrase)."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        chain = hub_dir.identity(passphrase()).chain()
    rows = _history_rows(chain)
    if as_json:
        print_json({"hub_id": chain.hub_id_text, "keys": rows, "statements": [s.hex() for s in chain.encoded()]})
        return
    console.print(f"Hub {chain.hub_id_text}: {len(chain.statements)} rotation(s); it signs with the last key.")
    for row in rows:
        console.print(f"  {row['sequence']:>3}  {row['key']}  {row['since']}")


@cert_app.command("status")
def status(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """When the certificate the hub serves expires, and its TLS issuer (tls-cert.pem and
    tls-issuer.pem; no passphrase needed)."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        hub_dir.config()
        cert = x509.load_pem_x509_certificate(hub_dir.tls_cert_pem())
        issuer_pem = hub_dir.tls_issuer_pem()
        issuer = x509.load_pem_x509_certificate(issuer_pem) if issuer_pem else None
    now_ms = SYSTEM_CLOCK.now_ms()
    state = rotation.CertificateState(_expires_ms(cert), now_ms)
    issuer_state = rotation.CertificateState(_expires_ms(issuer), now_ms) if issuer else None
    if as_json:
        print_json({"not_after_ms": state.expires_at_ms, "days_left": round(state.days_left, 2),
                    "renewal_due": state.renewal_due, "expired": state.expired, "message": state.describe(),
                    "issuer": None if issuer_state is None else {
                        "not_after_ms": issuer_state.expires_at_ms, "days_left": round(issuer_state.days_left, 2),
                        "expired": issuer_state.expired}})
        return
    console.print(f"Valid until {_when(state.expires_at_ms)}: {state.describe()}.")
    if issuer_state is None:
        console.print("No TLS issuer yet (a hub made before it): the certificate is self-signed and sensors pin it "
                      "exactly. The next `smartregion cert renew` creates the issuer.")
    else:
        console.print(f"Signed by the hub's TLS issuer (tls-issuer.pem, what sensors trust), valid until "
                      f"{_when(issuer_state.expires_at_ms)} ({issuer_state.days_left:.0f} more days).")


def _expires_ms(cert: x509.Certificate) -> int:
    return int(cert.not_valid_after_utc.timestamp() * 1000)


@cert_app.command("renew")
def renew(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """A new TLS certificate bound to the identity; a running hub serves it at once."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        hub_dir.config()
        if hub_dir.running():
            with AdminClient(data_dir) as client:
                response = client.call("RenewCertificate", admin_pb2.RenewCertificateRequest())
            expires, sha256, how = response.not_after_ms, response.certificate_sha256, "the running hub serves it from now on"
            issuer_created = response.issuer_created
        else:
            try:
                before, renewed = rotation.renew_certificate(hub_dir, passphrase(), SYSTEM_CLOCK)
            except rotation.RotationError as exc:
                raise fail(str(exc)) from None
            from federation.descriptors import cert_sha256

            expires, sha256 = renewed.certificate_expires_ms, cert_sha256(renewed.tls_cert_pem).hex()
            how = "the hub serves it when it starts"
            issuer_created = before.tls_issuer is None and renewed.tls_issuer is not None
    if as_json:
        print_json({"not_after_ms": expires, "certificate_sha256": sha256, "issuer_created": issuer_created})
        return
    console.print(f"Renewed the TLS certificate (sha256 {sha256[:16]}..., valid until {_when(expires)}); {how}.")
    console.print("Peers re-pin it at their next descriptor refresh: it is bound to the hub's identity key. "
                  "Sensors trust the hub's TLS issuer, which signed it: they need nothing.")
    if issuer_created:
        console.print(rotation.issuer_created_advice(hub_dir.path))
