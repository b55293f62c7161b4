"""Client connections to a hub, pinned to its certificate and hub id."""

from __future__ import annotations

from pathlib import Path

import grpc

from node.api.v1 import admin_pb2_grpc
from node.hubdir import HubDir


def channel_options(hub_id: str) -> list[tuple[str, object]]:
    # The certificate's name is the hub id, whatever address the hub is reached at.
    return [
        ("grpc.ssl_target_name_override", hub_id),
        ("grpc.default_authority", hub_id),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]


def open_channel(address: str, *, hub_id: str, cert_pem: bytes | None, tls: bool = True, aio: bool = False):
    """A channel that trusts exactly `cert_pem` for `hub_id` (or plaintext if tls is False)."""
    module = grpc.aio if aio else grpc
    if not tls:
        return module.insecure_channel(address)
    if not cert_pem:
        raise ValueError("a TLS channel needs the hub's certificate to pin")
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    return module.secure_channel(address, credentials, options=channel_options(hub_id))


class AdminClient:
    """The admin service of the hub running from a data directory (sync; for the CLI)."""

    def __init__(self, data_dir: Path, timeout: float = 30.0) -> None:
        hub_dir = HubDir(Path(data_dir))
        endpoint = hub_dir.endpoint()
        self.hub_id = endpoint["hub_id"]
        self.channel = open_channel(
            endpoint["grpc_address"], hub_id=self.hub_id, cert_pem=hub_dir.tls_cert_pem(), tls=endpoint["tls"]
        )
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.metadata = (("authorization", f"Bearer {hub_dir.admin_token()}"),)
        self.timeout = timeout

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
