"""What the TLS issuer costs a new connection: TLS handshakes (TLS 1.3, ECDHE, ECDSA P-256) over
loopback with Python's ssl (OpenSSL) on both ends, for

  baseline  a hub made before the issuer: a self-signed certificate, pinned exactly;
  sensor    the certificate followed by the issuer, the client trusting the issuer (a sensor);
  peer      the same chain, the client pinning the certificate itself (a partial chain: a peer,
            partner or the admin CLI, node/tlsfiles.pinned_client_ssl_context).

Each handshake is a new TCP connection and a full handshake (no session resumption); the
ratios are against the baseline measured in the same run, alternating the cases.

    .venv/bin/python -m bench.tls_issuer            # 400 handshakes per case

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import statistics
import threading
import time

from cryptography.hazmat.primitives import serialization

from node import identity
from node.tlsfiles import pinned_client_ssl_context, server_ssl_context


def serve(context: ssl.SSLContext, stop: threading.Event) -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def loop() -> None:
        with listener:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"k")
    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1]


def handshake_us(port: int, context: ssl.SSLContext, name: str) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
        tls.recv(1)
    return (time.perf_counter() - started) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=400)
    args = parser.parse_args()

    current = identity.generate()
    assert current.tls_issuer is not None
    legacy_cert = identity.issue_tls_certificate(current.identity_key, current.tls_key, hub_id_text=current.hub_id_text)
    legacy_pem = legacy_cert.public_bytes(serialization.Encoding.PEM)
    stop = threading.Event()
    legacy_port = serve(server_ssl_context(legacy_pem, current.tls_key_pem), stop)
    chain_port = serve(server_ssl_context(current.tls_chain_pem, current.tls_key_pem), stop)
    cases = {
        "baseline": (legacy_port, pinned_client_ssl_context(legacy_pem)),
        "sensor": (chain_port, pinned_client_ssl_context(current.tls_issuer.cert_pem)),
        "peer": (chain_port, pinned_client_ssl_context(current.tls_cert_pem)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(20):  # warm up
        for port, context in cases.values():
            handshake_us(port, context, current.hub_id_text)
    for _ in range(args.handshakes):
        for name, (port, context) in cases.items():
            times[name].append(handshake_us(port, context, current.hub_id_text))
    stop.set()
    base = statistics.median(times["baseline"])
    print(f"{'case':<10} {'median µs':>10} {'p90 µs':>10} {'ratio':>7}  certificates sent")
    sent = {"baseline": len(legacy_pem), "sensor": len(current.tls_chain_pem), "peer": len(current.tls_chain_pem)}
    for name, values in times.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<10} {median:>10.0f} {p90:>10.0f} {median / base:>7.2f}  {sent[name]} bytes of PEM")


if __name__ == "__main__":
    main()
