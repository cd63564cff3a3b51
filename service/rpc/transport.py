"""The server's gRPC port: plaintext, or mutual TLS when Envoy reaches the servers over it
(AIGNE_HUB_UPSTREAM_TLS_*): the server shows its certificate and accepts only callers whose
certificate the CA signed (Envoy's client certificate)."""

from __future__ import annotations

import grpc

from service.config import Settings


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Add the server's port; the port bound (settings.grpc_port 0 picks a free one)."""
    address = f"{settings.host}:{settings.grpc_port}"
    if not settings.upstream_tls:
        return server.add_insecure_port(address)
    assert settings.upstream_tls_cert_file and settings.upstream_tls_key_file
    assert settings.upstream_tls_ca_file
    credentials = grpc.ssl_server_credentials(
        [(settings.upstream_tls_key_file.read_bytes(),
          settings.upstream_tls_cert_file.read_bytes())],
        root_certificates=settings.upstream_tls_ca_file.read_bytes(),
        require_client_auth=True)
    return server.add_secure_port(address, credentials)
