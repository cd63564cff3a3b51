"""How Envoy finds the server replicas: the `hub_server` cluster's discovery and endpoints.

IP addresses (`make run`, `run --replicas N`) make a STATIC cluster. A name (a Kubernetes
headless Service, one DNS record per ready pod) makes a strict DNS cluster: Envoy resolves it
every few seconds and balances over every address it gets, so pods that come and go (the
HorizontalPodAutoscaler, a rollout) join and leave without a restart.
"""

from __future__ import annotations

import ipaddress

DNS_REFRESH_SECONDS = 5


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def discovery(upstreams: list[tuple[str, int]]) -> str:
    """The cluster's `type` (with its DNS settings) and `load_assignment`, as YAML lines."""
    if all(is_address(host) for host, _ in upstreams):
        lines = ["    type: STATIC"]
    else:
        lines = ["    cluster_type:",  # strict DNS: each address found is one replica
                 "      name: envoy.cluster.dns",
                 "      typed_config:",
                 '        "@type": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster',
                 f"        dns_refresh_rate: {DNS_REFRESH_SECONDS}s",
                 "        dns_lookup_family: V4_PREFERRED",
                 "        all_addresses_in_single_endpoint: false"]
    lines += ["    load_assignment:",
              "      cluster_name: hub_server",
              "      endpoints:",
              "      - lb_endpoints:"]
    lines += [f"        - endpoint: {{address: {{socket_address: "
              f"{{address: \"{host}\", port_value: {port}}}}}}}" for host, port in upstreams]
    return "\n".join(lines)
