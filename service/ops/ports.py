"""The ports `run` binds, checked before anything starts: a port something else holds is
named with the setting that moves it (rather than a banner, then Envoy's bind error)."""

from __future__ import annotations

import socket

from service.config import Settings

# Each port `run` binds: the setting's field, its variable.
PORTS = (("http_port", "AIGNE_HUB_HTTP_PORT"), ("envoy_admin_port", "AIGNE_HUB_ENVOY_ADMIN_PORT"),
         ("grpc_port", "AIGNE_HUB_GRPC_PORT"), ("metrics_port", "AIGNE_HUB_METRICS_PORT"))


def taken(settings: Settings, replicas: int = 1) -> list[str]:
    """What is wrong, one line per port already in use (none: all free). With `replicas`,
    the gRPC and metrics ports are the first of as many consecutive ones."""
    problems = []
    for field, variable in PORTS:
        first = getattr(settings, field)
        count = replicas if field in ("grpc_port", "metrics_port") else 1
        if first == 0:  # metrics off; or a free port chosen at bind time
            continue
        for port in range(first, first + count):
            if not _free(settings.host, port):
                problems.append(f"port {port} on {settings.host} is already in use (Address "
                                f"already in use): set {variable} to another port")
    return problems


def _free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy and gRPC do
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
