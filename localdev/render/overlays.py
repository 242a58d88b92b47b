"""kustomize overlays (``manifests/overlays/<name>/``): JSON 6902 patches, secrets, kustomization."""

from __future__ import annotations

from typing import Any

from localdev.render.dump import dump_docs
from localdev.render.meta import object_meta
from localdev.render.platform import function_url_template
from localdev.render.settings import DLQ_SINK, PLATFORM, ClusterSettings, Overlay, broker_topic, resources_for
from shared.function_runtime import FUNCTION_URL_ENV
from shared.topology import Topology


def _op(op: str, path: str, value: Any) -> dict[str, Any]:
    return {"op": op, "path": path, "value": value}


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def overlay_patches(topology: Topology, overlay: Overlay) -> list[tuple[dict[str, str], str, list[dict]]]:
    """(kustomize target, patch file stem, JSON 6902 operations) for one overlay."""
    patches: list[tuple[dict[str, str], str, list[dict]]] = []

    def target(group: str, version: str, kind: str, name: str) -> dict[str, str]:
        t = {"version": version, "kind": kind, "name": name}
        return {"group": group, **t} if group else t

    patches.append(
        (
            target("", "v1", "ConfigMap", "kafka-broker-config"),
            "configmap-kafka-broker-config",
            [
                _op("replace", "/data/default.topic.partitions", str(overlay.partitions)),
                _op("replace", "/data/default.topic.replication.factor", str(overlay.replication)),
            ],
        )
    )
    patches.append(
        (
            target("eventing.knative.dev", "v1alpha1", "KafkaSink", DLQ_SINK),
            f"kafkasink-{DLQ_SINK}",
            [
                _op("replace", "/spec/numPartitions", overlay.partitions),
                _op("replace", "/spec/replicationFactor", overlay.replication),
            ],
        )
    )
    patches.append(
        (
            target("", "v1", "ConfigMap", PLATFORM),
            f"configmap-{PLATFORM}",
            [
                _op("replace", "/data/FAASPIPE_BROKER_TOPIC", broker_topic(overlay.namespace)),
                _op("replace", f"/data/{FUNCTION_URL_ENV}", function_url_template(overlay.namespace)),
            ],
        )
    )
    patches.append(
        (
            target("apps", "v1", "Deployment", "mlflow"),
            "deployment-mlflow",
            [
                _op("replace", "/spec/replicas", overlay.mlflow_replicas),
                _op("replace", "/spec/template/spec/containers/0/resources", overlay.resources["mlflow"]),
            ],
        )
    )
    for fn in sorted(topology.functions.values(), key=lambda f: f.name):
        ops = [
            _op(
                "replace",
                "/spec/template/spec/containers/0/resources",
                resources_for(overlay.resources, fn.environment),
            )
        ]
        if overlay.min_scale is not None:
            key = _escape("autoscaling.knative.dev/min-scale")
            ops.append(_op("replace", f"/spec/template/metadata/annotations/{key}", str(overlay.min_scale)))
        patches.append((target("serving.knative.dev", "v1", "Service", fn.name), f"service-{fn.name}", ops))
        if overlay.min_scale is not None:
            for t in fn.subscriptions:
                key = _escape("autoscaling.eventing.knative.dev/min-scale")
                kind = (
                    ("sources.knative.dev", "v1beta1", "KafkaSource")
                    if t.is_kafka_source
                    else ("eventing.knative.dev", "v1", "Trigger")
                )
                patches.append(
                    (
                        target(*kind, t.name),
                        f"{kind[2].lower()}-{t.name}",
                        [_op("replace", f"/metadata/annotations/{key}", str(overlay.min_scale))],
                    )
                )
    return patches


def overlay_files(topology: Topology, overlay: Overlay, settings: ClusterSettings) -> dict[str, str]:
    root = f"overlays/{overlay.name}"
    files: dict[str, str] = {}
    resources = ["../../base"]
    if overlay.secrets:
        secrets = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": object_meta(name, "platform"),
                "type": "Opaque",
                "stringData": dict(data),
            }
            for name, data in sorted(overlay.secrets.items())
        ]
        files[f"{root}/secrets.yaml"] = dump_docs(secrets, note="development credentials only")
        resources.append("secrets.yaml")
    patch_entries = []
    for tgt, stem, ops in overlay_patches(topology, overlay):
        files[f"{root}/patches/{stem}.yaml"] = dump_docs([ops])
        patch_entries.append({"path": f"patches/{stem}.yaml", "target": tgt})
    environments = sorted({fn.environment for fn in topology.functions.values()} | {"platform"})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": overlay.namespace,
        "resources": resources,
        "images": [{"name": f"{settings.registry}/{env}", "newTag": overlay.tag} for env in environments],
        "patches": patch_entries,
    }
    files[f"{root}/kustomization.yaml"] = dump_docs([kustomization])
    return files
