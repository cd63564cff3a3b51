"""Envoy's edges, as pieces of its config rendered from Settings: TLS on the listener, mTLS
to the servers, and its OpenTelemetry tracer with the collector it exports to. Each piece is
empty when its settings are unset, so the plaintext, untraced config is what it always was.

The listener's certificate (and the CA of client certificates, when asked for) reach Envoy
through SDS from files: one small file per secret beside Envoy's config (`sds_files`), naming
the PEM files and the directory Envoy watches. A certificate renewed in place (a Kubernetes
Secret's volume swaps its `..data` link; cert-manager; `mv` of new files into the directory)
is served to new connections without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from service.config import Settings

# Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3's are fixed.
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, "
           "ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, "
           "ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-CHACHA20-POLY1305")
EDGE_CERTIFICATE = "edge-certificate"
EDGE_CLIENT_CA = "edge-client-ca"
COLLECTOR_CLUSTER = "otel_collector"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
OTLP_PORTS = {"grpc": 4317, "http/protobuf": 4318}


def sds_path(settings: Settings, name: str) -> Path:
    return settings.envoy_dir / f"{name}-sds.yaml"


def sds_files(settings: Settings) -> dict[str, str]:
    """The SDS files Envoy reads its listener's secrets from, by name ({} without TLS)."""
    files = {}
    if settings.tls_cert_file and settings.tls_key_file:
        files[EDGE_CERTIFICATE] = _secret(EDGE_CERTIFICATE, "tls_certificate", {
            "certificate_chain": {"filename": str(settings.tls_cert_file)},
            "private_key": {"filename": str(settings.tls_key_file)},
            "watched_directory": {"path": str(settings.tls_cert_file.parent)}})
    if settings.tls_client_ca_file:
        files[EDGE_CLIENT_CA] = _secret(EDGE_CLIENT_CA, "validation_context", {
            "trusted_ca": {"filename": str(settings.tls_client_ca_file)},
            "watched_directory": {"path": str(settings.tls_client_ca_file.parent)}})
    return files


def _secret(name: str, kind: str, value: dict[str, object]) -> str:
    resource = {"@type": TLS + "Secret",
                "name": name, kind: value}
    return ("# Rendered from Settings by service/ops/envoy_edges.py.\n"
            f"resources:\n- {json.dumps(resource)}\n")


def listener_tls(settings: Settings) -> str:
    """The filter chain's TLS transport socket: h2 and http/1.1 by ALPN (gRPC and REST on one
    port), TLS 1.2 or newer; with a client CA, a client certificate is required."""
    if not settings.edge_tls:
        return ""
    lines = [
        "      transport_socket:",
        "        name: envoy.transport_sockets.tls",
        "        typed_config:",
        f'          "@type": {TLS}DownstreamTlsContext',
        f"          require_client_certificate: {json.dumps(_required(settings))}",
        "          common_tls_context:",
        "            alpn_protocols: [h2, http/1.1]",
        "            tls_params:",
        "              tls_minimum_protocol_version: TLSv1_2",
        f"              cipher_suites: [{CIPHERS}]",
        "            tls_certificate_sds_secret_configs:",
        *_sds_reference(settings, EDGE_CERTIFICATE, "            - "),
    ]
    if settings.tls_client_ca_file:
        lines += ["            validation_context_sds_secret_config:",
                  *_sds_reference(settings, EDGE_CLIENT_CA, "              ")]
    return "\n".join(lines)


def _required(settings: Settings) -> bool:
    return bool(settings.tls_client_ca_file) and settings.tls_client_certificate == "required"


def client_certificates(settings: Settings) -> str:
    """With client certificates (AIGNE_HUB_TLS_CLIENT_CA_FILE), the connection manager tells
    the server who the verified caller is (`x-forwarded-client-cert`, its subject, URI and DNS
    names), replacing whatever a client sent in that header (Envoy strips it otherwise)."""
    if not settings.tls_client_ca_file:
        return ""
    return "\n".join(["          forward_client_cert_details: SANITIZE_SET",
                      "          set_current_client_cert_details: {subject: true, uri: true, "
                      "dns: true}"])


def _sds_reference(settings: Settings, name: str, first: str) -> list[str]:
    pad = " " * len(first)
    path = sds_path(settings, name)
    return [f"{first}name: {name}",
            f"{pad}sds_config:",
            f"{pad}  resource_api_version: V3",
            f"{pad}  path_config_source:",
            f"{pad}    path: {json.dumps(str(path))}",
            f"{pad}    watched_directory: {{path: {json.dumps(str(path.parent))}}}"]


def upstream_tls(settings: Settings) -> str:
    """The `hub_server` cluster's transport socket: mTLS to the servers (Envoy's client
    certificate; the servers' certificate checked against the CA)."""
    if not settings.upstream_tls:
        return ""
    return "\n".join([
        "    transport_socket:",
        "      name: envoy.transport_sockets.tls",
        "      typed_config:",
        f'        "@type": {TLS}UpstreamTlsContext',
        "        common_tls_context:",
        "          alpn_protocols: [h2]",
        "          tls_params: {tls_minimum_protocol_version: TLSv1_2}",
        "          tls_certificates:",
        f"          - certificate_chain: {_file(settings.upstream_tls_client_cert_file)}",
        f"            private_key: {_file(settings.upstream_tls_client_key_file)}",
        f"          validation_context: {{trusted_ca: {_file(settings.upstream_tls_ca_file)}}}",
    ])


def _file(path: Path | None) -> str:
    return f"{{filename: {json.dumps(str(path))}}}"


def sampling_percent(settings: Settings) -> float:
    """Envoy's random sampling for a trace that starts at Envoy, from OTEL_TRACES_SAMPLER:
    a caller's sampled `traceparent` is continued whatever this says."""
    sampler = settings.otel_traces_sampler
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        return round(settings.otel_traces_sampler_arg * 100, 4)
    return 100.0


def tracing(settings: Settings) -> str:
    """The connection manager's tracing: Envoy's OpenTelemetry tracer, a span per request
    (continuing the caller's W3C `traceparent`, else starting the trace), exported over
    OTLP (gRPC or HTTP, as the server does) to the collector cluster."""
    if not settings.tracing:
        return ""
    name = json.dumps(f"{settings.otel_service_name}-envoy")
    if settings.otel_exporter_otlp_protocol == "grpc":
        export = ["                grpc_service:",
                  f"                  envoy_grpc: {{cluster_name: {COLLECTOR_CLUSTER}}}",
                  "                  timeout: 2s"]
    else:
        uri = json.dumps((settings.otel_exporter_otlp_endpoint or "").rstrip("/") + "/v1/traces")
        export = ["                http_service:",
                  f"                  http_uri: {{uri: {uri}, cluster: {COLLECTOR_CLUSTER}, "
                  "timeout: 2s}"]
    return "\n".join([
        "          tracing:",
        f"            random_sampling: {{value: {sampling_percent(settings)}}}",
        "            provider:",
        "              name: envoy.tracers.opentelemetry",
        "              typed_config:",
        '                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig',
        f"                service_name: {name}",
        *export,
    ])


# After the transcoder, which kept the client's path in x-envoy-original-path: the path of a
# signed image URL without its query (expiry and signature) for the span's `http.url`.
REDACT_SIGNED_URLS = """\
function envoy_on_request(h)
  local path = h:headers():get("x-envoy-original-path")
  if path and path:find("^/api/images/files/") then
    h:headers():replace("x-envoy-original-path", (path:gsub("%?.*$", "")))
  end
end"""


def trace_redaction(settings: Settings) -> str:
    """With tracing, a filter that keeps signed image URLs' signatures out of Envoy's spans
    (Envoy's `http.url` tag is the client's path, query included)."""
    if not settings.tracing:
        return ""
    code = "".join(f"\n                  {line}" for line in REDACT_SIGNED_URLS.splitlines())
    return "\n".join([
        "          - name: envoy.filters.http.lua",
        "            typed_config:",
        '              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua',
        f"              default_source_code:\n                inline_string: |{code}"])


def collector_cluster(settings: Settings) -> str:
    """The cluster of the OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT): HTTP/2 for gRPC,
    TLS (the system's CAs) for an https endpoint."""
    if not settings.tracing:
        return ""
    url = urlsplit(settings.otel_exporter_otlp_endpoint or "")
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https"
                        else OTLP_PORTS[settings.otel_exporter_otlp_protocol])
    lines = [f"  - name: {COLLECTOR_CLUSTER}",
             "    connect_timeout: 2s",
             "    type: STRICT_DNS",
             "    dns_lookup_family: V4_PREFERRED",
             "    load_assignment:",
             f"      cluster_name: {COLLECTOR_CLUSTER}",
             "      endpoints:",
             f"      - lb_endpoints: [{{endpoint: {{address: {{socket_address: "
             f"{{address: {json.dumps(host)}, port_value: {port}}}}}}}}}]"]
    if settings.otel_exporter_otlp_protocol == "grpc":
        lines += ["    typed_extension_protocol_options:",
                  "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:",
                  f'        "@type": {HTTP_OPTIONS}',
                  "        explicit_http_config: {http2_protocol_options: {}}"]
    if url.scheme == "https":
        lines += ["    transport_socket:",
                  "      name: envoy.transport_sockets.tls",
                  "      typed_config:",
                  f'        "@type": {TLS}UpstreamTlsContext',
                  f"        sni: {json.dumps(host)}",
                  "        common_tls_context:",
                  "          validation_context:",
                  '            trusted_ca: {filename: "/etc/ssl/certs/ca-certificates.crt"}']
    return "\n".join(lines)
