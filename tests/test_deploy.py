"""deploy/: every Kubernetes manifest is valid against Kubernetes' own JSON schemas (strict:
no unknown field), the parts are wired to each other (labels, names, ports, probes, the
autoscaler's target), Envoy's ConfigMap is what `python -m service envoy-config` renders
today and Envoy accepts it, and the servers' settings are ones the server accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from tests.certs import CertificateAuthority
from tests.stack import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest Kubernetes these manifests are meant for (gRPC probes are GA from 1.27) and the
# newest whose schemas kubernetes-validate bundles.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/, by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc
            for path in MANIFESTS for doc in documents(path)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_secrets() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secrets.yaml"}


def test_envoy_configmap_is_rendered_from_the_current_template() -> None:
    check = subprocess.run([sys.executable, "deploy/render.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_envoy_accepts_its_kubernetes_config(tmp_path: Path) -> None:
    """`envoy --mode validate` on the ConfigMap's config, with the image's /app (the Lua
    filter, the descriptor set) pointing at this checkout, the ConfigMap's files in a
    folder as its mount, and a certificate made here as the TLS Secret's."""
    files = resources()[("ConfigMap", "aigne-hub-envoy")]["data"]
    tls = CertificateAuthority(tmp_path / "ca").issue("tls", into=tmp_path / "envoy-tls")
    assert (tls.cert.name, tls.key.name) == ("tls.crt", "tls.key")
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace('"/app/', f'"{ROOT}/')
                                     .replace("/etc/envoy-tls", str(tmp_path / "envoy-tls"))
                                     .replace("/etc/envoy/", f"{tmp_path}/")
                                     .replace('"/etc/envoy"', f'"{tmp_path}"'))
    envoy = Path(sys.executable).parent / "envoy"
    check = subprocess.run([str(envoy), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "deprecated" not in (check.stdout + check.stderr).lower()


def test_envoy_balances_over_the_headless_service_of_the_servers() -> None:
    found = resources()
    config = yaml.safe_load(found[("ConfigMap", "aigne-hub-envoy")]["data"]["envoy.yaml"])
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["cluster_type"]["name"] == "envoy.cluster.dns"
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    assert cluster["outlier_detection"]["consecutive_local_origin_failure"] >= 1
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = found[("Service", "aigne-hub-server")]
    assert address["address"] == (f"{service['metadata']['name']}."
                                  f"{service['metadata']['namespace']}.svc.cluster.local")
    assert service["spec"]["clusterIP"] == "None"
    assert address["port_value"] == service["spec"]["ports"][0]["port"]
    server = found[("Deployment", "aigne-hub-server")]
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"][
        "labels"].items()
    container = server["spec"]["template"]["spec"]["containers"][0]
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    envoy = found[("Deployment", "aigne-hub-envoy")]["spec"]["template"]["spec"]
    assert {p["name"]: p["containerPort"] for p in envoy["containers"][0]["ports"]} == {
        "https": listener["port_value"]}
    edge = found[("Service", "aigne-hub")]["spec"]["ports"]
    assert edge == [{"name": "https", "port": 443, "targetPort": "https"}]
    assert listener["address"] == "0.0.0.0"  # noqa: S104  (the pod's every address)
    assert grpc_port == 50051


def test_probes_are_wired_to_the_health_endpoints() -> None:
    found = resources()
    server = found[("Deployment", "aigne-hub-server")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}, probe  # grpc.health.v1
    envoy = found[("Deployment", "aigne-hub-envoy")]["spec"]["template"]["spec"]
    proxy = envoy["containers"][0]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https",
                                                  "scheme": "HTTPS"}
    assert proxy["livenessProbe"]["tcpSocket"] == {"port": "https"}
    mount = proxy["volumeMounts"][0]
    assert proxy["command"][proxy["command"].index("-c") + 1] == f"{mount['mountPath']}/envoy.yaml"
    [volume] = [v for v in envoy["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "aigne-hub-envoy"
    # The TLS Secret, mounted where the rendered config (deploy/envoy.env) looks for it.
    [tls] = [m for m in proxy["volumeMounts"] if m["name"] == "tls"]
    [secret] = [v["secret"] for v in envoy["volumes"] if v["name"] == "tls"]
    assert ("Secret", secret["secretName"]) in found
    assert found[("Secret", secret["secretName"])]["type"] == "kubernetes.io/tls"
    sds = yaml.safe_load(found[("ConfigMap", "aigne-hub-envoy")]["data"][
        "edge-certificate-sds.yaml"])["resources"][0]["tls_certificate"]
    assert sds["certificate_chain"]["filename"] == f"{tls['mountPath']}/tls.crt"
    assert sds["private_key"]["filename"] == f"{tls['mountPath']}/tls.key"
    # Draining takes 30 s at most in the server; the pods get longer than that.
    assert server["terminationGracePeriodSeconds"] > 30


def test_autoscaler_scales_the_servers_by_cpu_they_request() -> None:
    found = resources()
    hpa = found[("HorizontalPodAutoscaler", "aigne-hub-server")]["spec"]
    target = hpa["scaleTargetRef"]
    server = found[(target["kind"], target["name"])]
    assert target["apiVersion"] == server["apiVersion"]
    assert "replicas" not in server["spec"], "the autoscaler owns the replica count"
    assert hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]


def test_every_reference_names_a_resource_of_deploy() -> None:
    found = resources()
    for kind in ("Deployment",):
        for (k, name), doc in found.items():
            if k != kind:
                continue
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
                "labels"].items(), name
            for container in spec["template"]["spec"]["containers"]:
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef") or source.get("secretRef")
                    ref_kind = "ConfigMap" if "configMapRef" in source else "Secret"
                    assert (ref_kind, ref["name"]) in found, (name, ref)
    for (kind, name), doc in found.items():
        if kind == "PodDisruptionBudget":
            selected = doc["spec"]["selector"]["matchLabels"]
            assert any(d["spec"]["selector"]["matchLabels"] == selected
                       for (k, _), d in found.items() if k == "Deployment"), name
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "aigne-hub", (kind, name)


def test_server_settings_are_accepted_by_the_server() -> None:
    """The ConfigMap's settings and the Secrets' keys, with values filled in as an operator
    would, make a Settings the server starts with; left empty, they are refused."""
    found = resources()
    values = dict(found[("ConfigMap", "aigne-hub-config")]["data"])
    secrets = {**found[("Secret", "aigne-hub-secrets")]["stringData"],
               **found[("Secret", "aigne-hub-provider-keys")]["stringData"]}
    filled = {name: "postgresql+asyncpg://hub:pw@db:5432/hub" if "DATABASE" in name
              else "x" * 40 for name in secrets}
    settings = Settings(**_fields(values | filled))
    assert settings.image_store == "s3" and settings.s3_bucket
    assert settings.db_url.startswith("postgresql+asyncpg://")
    with pytest.raises(ValueError, match="set but empty"):
        Settings(**_fields(values | secrets))


def _fields(env: dict[str, str]) -> dict[str, str]:
    """Settings' keyword arguments from AIGNE_HUB_* variables (others are the providers')."""
    return {name.removeprefix("AIGNE_HUB_").lower(): value for name, value in env.items()
            if name.startswith("AIGNE_HUB_")}
