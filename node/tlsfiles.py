"""Hand an in-memory private key to APIs that only take file paths (Python's ssl module).

On Linux the key goes into an anonymous memory file (memfd) that never touches a disk."""

from __future__ import annotations

import os
import ssl


def server_ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """`cert_pem`: the certificate, then any issuer certificates (a chain, as served)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificate(context, cert_pem, key_pem)
    return context


def load_certificate(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Put a certificate into a context; a server's context serves it from the next handshake
    on (a renewal without a restart)."""
    cert_fd = os.memfd_create("smartregion-cert", 0)
    key_fd = os.memfd_create("smartregion-key", 0)
    try:
        os.write(cert_fd, cert_pem)
        os.write(key_fd, key_pem)
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)


def pinned_client_ssl_context(trusted_pem: bytes) -> ssl.SSLContext:
    """Trust exactly this certificate; the caller sets server_hostname to the hub id.

    `trusted_pem` may be the hub's issuer (what sensors hold) or its certificate itself (what
    peers, partners and the admin CLI pin, by its identity binding). The certificate is signed
    by the issuer, not by itself, so OpenSSL must be told that a trusted certificate ends the
    chain even when it is not self-signed (VERIFY_X509_PARTIAL_CHAIN); gRPC's BoringSSL does so
    unasked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=trusted_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
