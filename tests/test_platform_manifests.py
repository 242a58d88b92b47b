"""``manifests/platform/``: Kafka, MinIO, Redis and PostgreSQL, rendered from the same
``ClusterSettings`` as the functions' settings.

One source of truth: every service address the functions are given (the ``faaspipe-platform``
ConfigMap and the dev Secret) is a rendered Service, with that name, namespace and port, whose
port reaches a container port of the StatefulSet it selects; the dev credentials the services
start with are those the functions use. The committed files are checked, as deployed; drift
and schema validation of every object are ``tests/test_manifests.py``'s (it walks all of
``manifests/``); the kustomizations are built here.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from localdev.config import DEFAULT_BUCKETS
from localdev.render import ClusterSettings, render_files
from localdev.render.services import (
    MINIO_SECRET,
    POSTGRES_SECRET,
    ServiceAddress,
    platform_addresses,
    service_address,
)
from shared.topology import load_topology
from tests.test_manifests import MANIFESTS, _kustomize, _objects, validate

PLATFORM_DIR = MANIFESTS / "platform"
DEV_PLATFORM_DIR = MANIFESTS / "overlays" / "dev" / "platform"
# what a function connects to: <service>.<namespace>.svc.cluster.local:<port>
IN_CLUSTER = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)")


def _docs(path: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture(scope="module")
def platform() -> list[dict[str, Any]]:
    return [doc for _, doc in _objects(PLATFORM_DIR)]


@pytest.fixture(scope="module")
def function_settings() -> dict[str, str]:
    """What the functions are given: the base ConfigMap and the dev overlay's Secret."""
    cm = _one(_docs(MANIFESTS / "base" / "platform.yaml"), "ConfigMap", "faaspipe-platform")
    secret = _one(_docs(MANIFESTS / "overlays" / "dev" / "secrets.yaml"), "Secret", "faaspipe-platform")
    return {**cm["data"], **secret["stringData"]}


def _client_services(platform: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {
        (d["metadata"]["name"], d["metadata"]["namespace"], p["port"]): d
        for d in platform
        if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"
        for p in d["spec"]["ports"]
    }


def test_every_address_the_functions_use_is_a_rendered_service_port(
    platform: list[dict[str, Any]], function_settings: dict[str, str]
) -> None:
    with_address = {key for key, value in function_settings.items() if IN_CLUSTER.search(value)}
    assert with_address >= {
        "FAASPIPE_KAFKA_BOOTSTRAP",
        "FAASPIPE_S3_ENDPOINT",
        "FAASPIPE_IDEMPOTENCY_URL",  # Redis db 0
        "FAASPIPE_FEAST_REDIS",  # Redis db 1
        "FAASPIPE_DATABASE_URL",  # Postgres: Feast's registry, the monitor's store
    }
    used = {
        (m[1], m[2], int(m[3])) for value in function_settings.values() for m in IN_CLUSTER.finditer(value)
    }
    services = _client_services(platform)
    assert set(used) == set(services), "platform services and the functions' addresses differ"
    sets = [d for d in platform if d["kind"] == "StatefulSet"]
    for (name, namespace, port), svc in services.items():
        (target,) = [
            s
            for s in sets
            if s["metadata"]["namespace"] == namespace
            and svc["spec"]["selector"].items() <= s["spec"]["template"]["metadata"]["labels"].items()
        ]
        (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
        container_ports = {
            p["name"]: p["containerPort"]
            for c in target["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert container_ports[svc_port["targetPort"]] == port, (name, svc_port)
        assert any(
            s["metadata"]["name"] == target["spec"]["serviceName"] and s["spec"].get("clusterIP") == "None"
            for s in platform
            if s["kind"] == "Service" and s["metadata"]["namespace"] == namespace
        ), f"StatefulSet {target['metadata']['name']}: no headless Service {target['spec']['serviceName']}"


def test_kafka_advertises_the_bootstrap_address(
    platform: list[dict[str, Any]], function_settings: dict[str, str]
) -> None:
    kafka = [d for d in platform if d["kind"] == "StatefulSet" and d["metadata"]["namespace"] == "kafka"]
    (container,) = kafka[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{function_settings['FAASPIPE_KAFKA_BOOTSTRAP']}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["CLUSTER_ID"] and len(env["CLUSTER_ID"]) == 22


def test_dev_credentials_are_the_functions_credentials(
    platform: list[dict[str, Any]], function_settings: dict[str, str]
) -> None:
    secrets = _docs(DEV_PLATFORM_DIR / "secrets.yaml")
    minio = _one(secrets, "Secret", MINIO_SECRET)["stringData"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        function_settings["FAASPIPE_S3_ACCESS_KEY"],
        function_settings["FAASPIPE_S3_SECRET_KEY"],
    )
    url = urlsplit(function_settings["FAASPIPE_DATABASE_URL"])
    postgres = _one(secrets, "Secret", POSTGRES_SECRET)["stringData"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]) == (url.username, url.password)
    init = "".join(_one(platform, "ConfigMap", "postgres-init")["data"].values())
    assert f"CREATE DATABASE {url.path.lstrip('/')};" in init
    assert "CREATE DATABASE mlflow;" in init  # MLflow's backend store


def test_no_credential_inline_and_every_referenced_secret_has_dev_values(
    platform: list[dict[str, Any]],
) -> None:
    assert not [d for d in platform if d["kind"] == "Secret"], "base platform manifests carry no Secret"
    dev = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): set(d["stringData"])
        for d in _docs(DEV_PLATFORM_DIR / "secrets.yaml")
    }
    referenced = set()
    for doc in platform:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|_USER$|KEY", env["name"]):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    assert ref, f"{doc['metadata']['name']}: {env['name']} is inline"
                    referenced.add((doc["metadata"]["namespace"], ref["name"], ref["key"]))
    assert referenced
    for namespace, name, key in referenced:
        assert key in dev.get((namespace, name), set()), f"dev overlay lacks Secret {namespace}/{name} {key}"


def test_buckets_job_creates_the_buckets(platform: list[dict[str, Any]]) -> None:
    job = _one(platform, "Job", "minio-buckets")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    created = set(re.findall(r"platform/([a-z0-9.-]+)", container["command"][-1]))
    assert created == set(DEFAULT_BUCKETS) - {"tansu"}  # Tansu's log bucket is localdev's


def test_images_pinned_resources_set_non_root(platform: list[dict[str, Any]]) -> None:
    workloads = [d for d in platform if d["kind"] in ("StatefulSet", "Job")]
    assert len(workloads) == 5
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            image = container["image"]
            assert re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]) and not image.endswith(":latest"), image
            assert set(container["resources"]) == {"requests", "limits"}
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if doc["kind"] == "StatefulSet":
            (claim,) = doc["spec"]["volumeClaimTemplates"]
            mounts = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
            assert claim["metadata"]["name"] in mounts


def test_readme_names_the_secrets() -> None:
    text = (MANIFESTS / "README.md").read_text()
    assert MINIO_SECRET in text and POSTGRES_SECRET in text and "platform/" in text


@pytest.mark.skipif(_kustomize() is None, reason="needs kustomize or kubectl")
@pytest.mark.parametrize("directory", [PLATFORM_DIR, DEV_PLATFORM_DIR], ids=["platform", "dev-platform"])
def test_platform_kustomizations_build_and_validate(directory: Any) -> None:
    cmd = _kustomize()
    assert cmd is not None
    built = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert namespaces == {"kafka", "minio", "redis", "postgres"}
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in namespaces, doc["metadata"]["name"]


# --- the address parser, and settings other than the committed ones --------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("kafka.kafka.svc.cluster.local:9092", ServiceAddress("kafka", "kafka", 9092)),
        ("http://minio.minio.svc.cluster.local:9000", ServiceAddress("minio", "minio", 9000)),
        ("cache.data.svc:6380", ServiceAddress("cache", "data", 6380)),
        ("kafka.example.com:9092", None),  # outside the cluster: the user runs it
        ("postgres.postgres.svc.cluster.local", None),  # no port: nothing to render a Service with
    ],
)
def test_service_address(address: str, expected: ServiceAddress | None) -> None:
    assert service_address(address) == expected


def test_other_settings_move_the_services_and_skip_external_ones() -> None:
    settings = ClusterSettings(kafka_bootstrap="broker.example.com:9092", redis_host="cache.data.svc:6380")
    assert set(platform_addresses(settings)) == {"minio", "redis", "postgres"}
    files = render_files(load_topology(), settings)
    assert "platform/kafka.yaml" not in files and "platform/redis.yaml" in files
    redis = [d for d in yaml.safe_load_all(files["platform/redis.yaml"]) if d]
    service = _one(redis, "Service", "cache")
    assert (service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]) == ("data", 6380)
    namespaces = {d["metadata"]["name"] for d in yaml.safe_load_all(files["platform/namespaces.yaml"]) if d}
    assert namespaces == {"data", "minio", "postgres"}
