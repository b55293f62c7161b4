"""Certificate expiry monitoring and automatic renewal, by value, in a live hub driven by a
ManualClock: the gauge names the served certificate's expiry, the dashboard warns from 30 days
before, a log line comes each day, and with fewer than 30 days left the hub renews by itself and
serves the new certificate without a restart. A renewal that would re-encrypt keys.json under a
passphrase that no longer opens it is refused and nothing changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import replace

import grpc
import pytest
from prometheus_client import generate_latest

from federation import peers
from node import hubdir, identity, keystore
from node.api.v1 import admin_pb2
from node.app.dashboard.data import certificate_overview
from node.clock import ManualClock
from tests.conftest import PASSPHRASE, make_hub_dir, start_live_hub

DAY_S = 86400.0


def gauge(hub) -> float:
    text = generate_latest(hub.metrics.registry).decode()
    line = next(line for line in text.splitlines() if line.startswith("smartregion_tls_certificate_expiry_timestamp_seconds "))
    return float(line.split()[1])


async def until(check, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def short_lived(path, clock: ManualClock, days: int) -> identity.HubIdentity:
    """Give the hub in `path` a certificate valid for `days` from the clock's now."""
    hub_dir = hubdir.HubDir(path)
    ident = hub_dir.identity(PASSPHRASE.encode())
    cert = identity.issue_tls_certificate(ident.identity_key, ident.tls_key, hub_id_text=ident.hub_id_text, clock=clock,
                                          validity=dt.timedelta(days=days), issuer=ident.tls_issuer)
    short = replace(ident, tls_cert=cert)
    hub_dir.write_identity(short, PASSPHRASE.encode())
    return short


async def test_expiry_gauge_warning_daily_log_and_automatic_renewal(tmp_path, caplog):
    clock = ManualClock(now_ms=1_800_000_000_000)
    path = make_hub_dir(tmp_path / "hub")
    short = short_lived(path, clock, days=40)
    caplog.set_level(logging.INFO, logger="smartregion.certificates")
    live = await start_live_hub(path, clock=clock)
    try:
        hub = live.hub
        expires_s = short.tls_cert.not_valid_after_utc.timestamp()
        assert gauge(hub) == expires_s == clock.now_ms() / 1000 + 40 * DAY_S
        await until(lambda: any(r.message == "certificate" for r in caplog.records), "the first daily log line")
        first = next(r for r in caplog.records if r.message == "certificate")
        assert first.levelno == logging.INFO and first.days_left == 40.0
        assert certificate_overview(hub)["warning"] is None
        issuer = hub.identity.tls_issuer
        assert issuer is not None and certificate_overview(hub)["issuer_days_left"] == round(
            (issuer.expires_ms - clock.now_ms()) / (DAY_S * 1000), 1)

        # 11 days later (the wall clock only: the daily check has not run yet): 29 days left.
        clock.set_now_ms(clock.now_ms() + int(11 * DAY_S * 1000))
        overview = certificate_overview(hub)
        assert overview["days_left"] == 29.0
        assert overview["warning"] == "the TLS certificate expires in 29 days: run `smartregion cert renew`"
        assert gauge(hub) == expires_s

        # The next daily check warns in the log and renews; the new certificate is served at once.
        caplog.clear()
        clock.advance(DAY_S)
        await until(lambda: gauge(hub) != expires_s, "the automatic renewal")
        assert gauge(hub) == clock.now_ms() / 1000 + identity.CERT_VALIDITY.total_seconds()
        warned = next(r for r in caplog.records if r.message == "certificate")
        assert warned.levelno == logging.WARNING and warned.days_left == 28.0
        served = await peers.fetch_certificate(hub.endpoint.grpc_address)
        assert served == hub.identity.tls_cert_pem != short.tls_cert_pem
        stored = hubdir.HubDir(path).identity(PASSPHRASE.encode())  # keys.json and tls-cert.pem hold it
        assert stored.tls_cert_pem == served == hubdir.HubDir(path).tls_cert_pem()
        assert identity.verify_tls_binding(stored.tls_cert) == short.public_key_raw  # same identity
        assert certificate_overview(hub)["warning"] is None
        rows = await hub.storage.read(lambda s: s.audit_rows())
        assert any(b'"cert.renew"' in r.entry and b"automatic: fewer than 30 days left" in r.entry for r in rows)
    finally:
        await live.stop()


async def test_a_renewal_refuses_a_keystore_the_hub_can_no_longer_open(tmp_path):
    clock = ManualClock(now_ms=1_800_000_000_000)
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"), clock=clock)
    try:
        keys_file = live.hub.hub_dir.file(hubdir.KEYS_FILE)
        # The passphrase was changed while the hub served (by `smartregion passphrase change`).
        keystore.write(keys_file, keystore.read(keys_file, PASSPHRASE.encode()), b"an-entirely-new-passphrase")
        before, served = keys_file.read_bytes(), live.hub.identity.tls_cert_pem
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await live.admin.RenewCertificate(admin_pb2.RenewCertificateRequest(), metadata=live.admin_metadata)
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        assert "does not open with the passphrase the hub started with" in refused.value.details()
        assert keys_file.read_bytes() == before and live.hub.identity.tls_cert_pem == served  # nothing changed
        # Asked the normal way, a renewal is served from the next connection and reported.
        keystore.write(keys_file, keystore.read(keys_file, b"an-entirely-new-passphrase"), PASSPHRASE.encode())
        status = await live.admin.RenewCertificate(admin_pb2.RenewCertificateRequest(), metadata=live.admin_metadata)
        assert status.not_after_ms == live.hub.identity.certificate_expires_ms and not status.renewal_due
        assert await peers.fetch_certificate(live.hub.endpoint.grpc_address) == live.hub.identity.tls_cert_pem != served
    finally:
        await live.stop()
