"""The committed manifests/ are a fresh render of the topology, and they validate.

Validation, per object:
- core Kubernetes kinds (ConfigMap, Deployment, Service, ...): ``kubernetes_validate`` with the
  strict (additionalProperties: false) schemas of Kubernetes 1.30;
- Knative and KEDA custom resources: the cloudcoil pydantic models generated from their CRDs,
  validated with ``extra="forbid"``, ``strict=True`` and aliases only, so an unknown or
  misspelt field, a snake_case field name or a wrongly typed value fails (the models alone
  ignore unknown fields: see ``test_models_alone_ignore_unknown_fields``);
- the KafkaSink (eventing-kafka-broker, no cloudcoil model): the spec schema of its CRD
  (control-plane/config/eventing-kafka-broker/100-sink/100-kafka-sink.yaml) with unknown
  fields forbidden, metadata by the ObjectMeta model;
- the KafkaSource (eventing-kafka-broker): its CRD preserves unknown fields, so its spec is
  checked against a schema written from the Go types (control-plane/pkg/apis/sources/
  v1beta1/kafka_types.go: KafkaAuthSpec + SourceSpec inlined, eventing's DeliverySpec), with
  unknown fields forbidden, the enums of initialOffset and ordering, metadata by ObjectMeta;
- autoscaling annotations: keys must be ones Knative / eventing-kafka-broker document.
Forbidding unknown fields is what ``kubectl apply`` does (server-side strict field validation).
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from localdev.config import StackConfig
from localdev.render import (
    DLQ_SINK,
    HEADER,
    LOCAL_ONLY_ENV,
    SECRET_ENV,
    ClusterSettings,
    check,
    main,
    overlays,
    platform_env,
    render,
)
from shared.filters import matches
from shared.function_runtime import SECRET_NAMES, function_env
from shared.topology import REPO_ROOT, Topology, load_topology, parse_duration

MANIFESTS = REPO_ROOT / "manifests"
RERENDER = "manifests/ do not match the topology: run `faaspipe render`"
K8S_VERSION = "1.30"

# cloudcoil models generated from the CRDs (Knative Serving/Eventing 1.17, KEDA 2.16), imported
# on first use: each package imports all its API versions, which takes seconds.
CRD_MODELS: dict[tuple[str, str], str] = {
    ("serving.knative.dev/v1", "Service"): "knative_serving.serving.v1:Service",
    ("eventing.knative.dev/v1", "Broker"): "knative_eventing.eventing.v1:Broker",
    ("eventing.knative.dev/v1", "Trigger"): "knative_eventing.eventing.v1:Trigger",
    ("sources.knative.dev/v1", "SinkBinding"): "knative_eventing.sources.v1:SinkBinding",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.v1alpha1:ScaledObject",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.v1alpha1:TriggerAuthentication",
    # authorisation (localdev/render/auth.py): Knative's EventPolicy CRD
    ("eventing.knative.dev/v1alpha1", "EventPolicy"): "knative_eventing.eventing.v1alpha1:EventPolicy",
}
STRICT = {"extra": "forbid", "strict": True, "by_alias": True, "by_name": False}

# The Trigger and Broker CRDs mark spec.delivery x-kubernetes-preserve-unknown-fields so that
# DeliverySpec.timeout (feature delivery-timeout) is kept (knative/eventing#5654, #5687); the
# generated models do not know that field. It is checked here, then removed before the model.
PRESERVED_DELIVERY = {("eventing.knative.dev/v1", "Trigger"), ("eventing.knative.dev/v1", "Broker")}

_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string"}},
}


def _crd_object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of a custom resource: the envelope fixed, ``spec`` as given."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object"},
            "spec": spec,
        },
    }


KAFKA_SINK_SCHEMA = _crd_object(
    "eventing.knative.dev/v1alpha1",
    "KafkaSink",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["topic", "bootstrapServers"],
        "properties": {
            "topic": {"type": "string"},
            "numPartitions": {"type": "integer"},
            "replicationFactor": {"type": "integer"},
            "bootstrapServers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "contentMode": {"enum": ["binary", "structured"]},
            "auth": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secret": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"ref": _REF},
                    }
                },
            },
        },
    },
)

_KREF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "name"],
    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "namespace", "group")},
}
_DESTINATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ref": _KREF,
        "uri": {"type": "string"},
        "CACerts": {"type": "string"},
        "audience": {"type": "string"},
    },
}
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secretKeyRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key"],
            "properties": {
                "name": {"type": "string"},
                "key": {"type": "string"},
                "optional": {"type": "boolean"},
            },
        }
    },
}
KAFKA_SOURCE_SCHEMA = _crd_object(
    "sources.knative.dev/v1beta1",
    "KafkaSource",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["bootstrapServers", "topics", "sink"],
        "properties": {
            "consumers": {"type": "integer", "minimum": 1},
            "bootstrapServers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "net": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "sasl": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "enable": {"type": "boolean"},
                            **{k: _SECRET_KEY for k in ("user", "password", "type")},
                        },
                    },
                    "tls": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "enable": {"type": "boolean"},
                            **{k: _SECRET_KEY for k in ("cert", "key", "caCert")},
                        },
                    },
                },
            },
            "topics": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "consumerGroup": {"type": "string"},
            "initialOffset": {"enum": ["earliest", "latest"]},
            "ordering": {"enum": ["ordered", "unordered"]},
            "delivery": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "deadLetterSink": _DESTINATION,
                    "retry": {"type": "integer", "minimum": 0},
                    "timeout": {"type": "string"},
                    "backoffPolicy": {"enum": ["linear", "exponential"]},
                    "backoffDelay": {"type": "string"},
                    "retryAfterMax": {"type": "string"},
                    "format": {"enum": ["json", "binary"]},
                },
            },
            "sink": _DESTINATION,
            "ceOverrides": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"extensions": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
        },
    },
)

# eventing-kafka-broker kinds without a cloudcoil model: checked with these schemas
JSON_SCHEMAS = {
    ("eventing.knative.dev/v1alpha1", "KafkaSink"): KAFKA_SINK_SCHEMA,
    ("sources.knative.dev/v1beta1", "KafkaSource"): KAFKA_SOURCE_SCHEMA,
}

# Documented annotation keys (Knative Serving autoscaling; eventing-kafka-broker KEDA autoscaler).
KNOWN_ANNOTATIONS = {
    "autoscaling.knative.dev/": {
        "class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale",
        "initial-scale", "activation-scale", "scale-down-delay", "scale-to-zero-pod-retention-period",
        "window", "panic-window-percentage", "panic-threshold-percentage", "target-burst-capacity",
    },
    "autoscaling.eventing.knative.dev/": {
        "class", "min-scale", "max-scale", "lag-threshold", "activation-lag-threshold",
        "polling-interval", "cooldown-period",
    },
    "kafka.eventing.knative.dev/": {"delivery.order", "external.topic"},
}  # fmt: skip


# --- validation ----------------------------------------------------------------------------


@functools.cache
def model(key: tuple[str, str]) -> Any:
    module, name = CRD_MODELS[key].split(":")
    with warnings.catch_warnings():  # the generated models warn about shadowed field names
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(f"cloudcoil.models.{module}"), name)


def object_meta_model() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cloudcoil.apimachinery import ObjectMeta
    return ObjectMeta


FILTER_DIALECTS = {"exact", "prefix", "suffix", "all", "any", "not", "cesql"}


def _check_filters(filters: Any, where: str = "spec.filters") -> None:
    """Knative's webhook check of spec.filters; the CRD types nested filters as free maps."""
    if not isinstance(filters, list):
        raise ValueError(f"{where} must be a list")
    for i, flt in enumerate(filters):
        if not isinstance(flt, dict) or len(flt) != 1 or next(iter(flt)) not in FILTER_DIALECTS:
            raise ValueError(f"{where}[{i}] must have exactly one of {sorted(FILTER_DIALECTS)}: {flt!r}")
        ((dialect, arg),) = flt.items()
        if dialect in ("all", "any"):
            _check_filters(arg, f"{where}[{i}].{dialect}")
        elif dialect == "not":
            _check_filters([arg], f"{where}[{i}].not")
        elif dialect != "cesql" and not (
            isinstance(arg, dict) and arg and all(isinstance(v, str) for v in arg.values())
        ):
            raise ValueError(f"{where}[{i}].{dialect} must map attributes to strings")
        elif dialect != "cesql" and len(arg) != 1:  # trigger_validation.go ValidateSingleAttributeMap
            raise ValueError(f"{where}[{i}].{dialect}: Multiple items found, can have only one key-value")
        elif dialect != "cesql" and not re.match(r"^[a-z][a-z0-9]*$", next(iter(arg))):
            raise ValueError(f"{where}[{i}].{dialect}: invalid attribute name {next(iter(arg))!r}")


def _is_core(api_version: str) -> bool:
    """Built-in Kubernetes API groups have no dot (v1, apps/v1, batch/v1, ...)."""
    return "/" not in api_version or "." not in api_version.split("/")[0]


def _check_annotations(doc: dict[str, Any]) -> None:
    found = dict((doc.get("metadata") or {}).get("annotations") or {})
    template = ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}
    found.update(template.get("annotations") or {})
    for key in found:
        for prefix, names in KNOWN_ANNOTATIONS.items():
            if key.startswith(prefix) and key.removeprefix(prefix) not in names:
                raise ValueError(f"unknown annotation {key!r}; known under {prefix}: {sorted(names)}")


def validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` breaks the schema of its kind (unknown fields included)."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    key = (api_version, kind)
    _check_annotations(doc)
    if key in CRD_MODELS:
        doc = copy.deepcopy(doc)
        delivery = (doc.get("spec") or {}).get("delivery")
        if key in PRESERVED_DELIVERY and isinstance(delivery, dict) and "timeout" in delivery:
            timeout = delivery.pop("timeout")
            if not isinstance(timeout, str) or parse_duration(timeout) <= 0:
                raise ValueError(f"spec.delivery.timeout must be a positive ISO-8601 duration: {timeout!r}")
        if kind in ("Trigger", "EventPolicy") and "filters" in doc.get("spec", {}):
            _check_filters(doc["spec"]["filters"])
        model(key).model_validate(doc, **STRICT)
    elif key in JSON_SCHEMAS:
        jsonschema.validate(doc, JSON_SCHEMAS[key])
        object_meta_model().model_validate(doc["metadata"], **STRICT)
        for duration in ("timeout", "backoffDelay") if kind == "KafkaSource" else ():
            value = doc["spec"].get("delivery", {}).get(duration)
            if value is not None and parse_duration(value) <= 0:
                raise ValueError(f"spec.delivery.{duration} must be a positive ISO-8601 duration: {value!r}")
    elif _is_core(api_version):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    else:
        raise AssertionError(f"no schema to validate {kind} {api_version}: add it to CRD_MODELS")


# --- helpers -------------------------------------------------------------------------------


def _objects(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in the YAML files under root (not kustomizations or patches)."""
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or "patches" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _filter_values(filters: Any) -> dict[str, set[str]]:
    """Every attribute a filter list tests, with the values it names."""
    out: dict[str, set[str]] = {}
    for flt in filters:
        ((dialect, arg),) = flt.items()
        nested = arg if dialect in ("all", "any") else [arg] if dialect == "not" else None
        if nested is not None:
            for name, values in _filter_values(nested).items():
                out.setdefault(name, set()).update(values)
        elif dialect != "cesql":
            for name, value in arg.items():
                out.setdefault(name, set()).add(value)
    return out


def _same_routing(topology_filters: Any, rendered: Any) -> bool:
    """Both filter lists route alike: on the events their values build, each value kept,
    changed or left out."""
    values = _filter_values(topology_filters)
    base = {name: sorted(v)[0] for name, v in values.items()}
    events = [base]
    for name, options in values.items():
        for value in [*options, "other", None]:
            events.append(
                {**base, name: value} if value is not None else {k: v for k, v in base.items() if k != name}
            )
    return all(matches(topology_filters, e) == matches(rendered, e) for e in events)


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology()


@pytest.fixture(scope="module")
def base_objects() -> list[dict[str, Any]]:
    return [doc for _, doc in _objects(MANIFESTS / "base")]


def _by_kind(objects: list[dict[str, Any]], api_version: str, kind: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for doc in objects:
        if doc["apiVersion"] == api_version and doc["kind"] == kind:
            found.setdefault(doc["metadata"]["name"], []).append(doc)
    return found


# --- (1) drift -----------------------------------------------------------------------------


def test_committed_manifests_are_a_fresh_render(topology: Topology, tmp_path: Path) -> None:
    render(topology, tmp_path)
    fresh, committed = _tree(tmp_path), _tree(MANIFESTS)
    committed = {rel: data for rel, data in committed.items() if HEADER.encode() in data.split(b"\n", 1)[0]}
    differ = sorted(rel for rel in fresh.keys() | committed.keys() if fresh.get(rel) != committed.get(rel))
    assert not differ, "manifests/ differ from a fresh render (run `faaspipe render`): " + ", ".join(differ)


# --- (2) + (3) every object validates --------------------------------------------------------


def test_every_object_validates() -> None:
    objects = list(_objects(MANIFESTS))
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in objects}
    assert ("serving.knative.dev/v1", "Service") in kinds and ("v1", "ConfigMap") in kinds
    for path, doc in objects:
        try:
            validate(doc)
        except Exception as exc:  # noqa: BLE001 - name the object in the failure
            pytest.fail(f"{path.relative_to(REPO_ROOT)}: {doc['kind']} {doc['metadata'].get('name')}: {exc}")


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize() is None, reason="needs kustomize or kubectl")
@pytest.mark.parametrize("overlay", overlays(), ids=lambda o: o.name)
def test_overlay_builds_and_validates(overlay: Any, topology: Topology) -> None:
    cmd = _kustomize()
    assert cmd is not None
    built = subprocess.run(
        [*cmd, str(MANIFESTS / "overlays" / overlay.name)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == overlay.namespace, doc["metadata"]["name"]
    services = _by_kind(docs, "serving.knative.dev/v1", "Service")
    assert set(services) == set(topology.functions), RERENDER
    for name, (svc,) in services.items():
        container = svc["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].endswith(f":{overlay.tag}"), container["image"]
        assert container["resources"] == overlay.resources.get(
            topology.functions[name].environment, overlay.resources["serving"]
        )
        if overlay.min_scale is not None:
            assert svc["spec"]["template"]["metadata"]["annotations"][
                "autoscaling.knative.dev/min-scale"
            ] == str(overlay.min_scale)
    (cm,) = _by_kind(docs, "v1", "ConfigMap")["kafka-broker-config"]
    assert cm["data"]["default.topic.partitions"] == str(overlay.partitions)
    assert cm["data"]["default.topic.replication.factor"] == str(overlay.replication)
    (sink,) = _by_kind(docs, "eventing.knative.dev/v1alpha1", "KafkaSink")[DLQ_SINK]
    assert (sink["spec"]["numPartitions"], sink["spec"]["replicationFactor"]) == (
        overlay.partitions,
        overlay.replication,
    )
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {overlay.namespace}


# --- (4) validation bites -------------------------------------------------------------------


def _first(kind: str, api_version: str) -> dict[str, Any]:
    for _, doc in _objects(MANIFESTS):
        if doc["kind"] == kind and doc["apiVersion"] == api_version:
            return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} {api_version} in manifests/")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[new] = node.pop(last)

    return mutate


def _annotate(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc["metadata"].setdefault("annotations", {})[key] = value

    return mutate


TRIGGER = ("Trigger", "eventing.knative.dev/v1")
KSVC = ("Service", "serving.knative.dev/v1")
KSOURCE = ("KafkaSource", "sources.knative.dev/v1beta1")
WRONG = [
    (TRIGGER, _rename("spec.filters", "filterz"), "spec.filterz"),
    (TRIGGER, _set("spec.filters", [{"all": [{"exakt": {"type": "x"}}]}]), "nested filter exakt"),
    (TRIGGER, _rename("spec.delivery.retry", "retries"), "spec.delivery.retries"),
    (TRIGGER, _set("spec.delivery.timout", "PT1S"), "spec.delivery.timout"),
    (TRIGGER, _set("spec.delivery.timeout", "10s"), "timeout not ISO-8601"),
    (TRIGGER, _set("spec.subscriber.ref.nmae", "x"), "spec.subscriber.ref.nmae"),
    (TRIGGER, _annotate("autoscaling.eventing.knative.dev/lag-treshold", "5"), "annotation lag-treshold"),
    (KSVC, _rename("spec.template.spec.containerConcurrency", "containerConcurency"), "containerConcurency"),
    (KSVC, _rename("spec.template.spec.containerConcurrency", "container_concurrency"), "snake_case"),
    (KSVC, _set("spec.template.spec.containerConcurrency", "8"), "string for an integer"),
    (KSVC, _set("spec.template.spec.containers.0.readinessProbe.httpGett", {}), "httpGett"),
    (KSVC, _set("apiVersion", "serving.knative.dev/v2"), "apiVersion"),
    (("Broker", "eventing.knative.dev/v1"), _set("spec.confg", {}), "spec.confg"),
    (("SinkBinding", "sources.knative.dev/v1"), _rename("spec.subject", "subjct"), "spec.subjct"),
    (("KafkaSink", "eventing.knative.dev/v1alpha1"), _rename("spec.topic", "topik"), "spec.topik"),
    (("KafkaSink", "eventing.knative.dev/v1alpha1"), _set("metadata.lables", {}), "metadata.lables"),
    (KSOURCE, _rename("spec.consumerGroup", "consumergroup"), "KafkaSource spec.consumergroup"),
    (KSOURCE, _set("spec.initialOffset", "oldest"), "KafkaSource initialOffset enum"),
    (KSOURCE, _set("spec.delivery.retries", 3), "KafkaSource spec.delivery.retries"),
    (KSOURCE, _set("spec.sink.ref.nmae", "x"), "KafkaSource spec.sink.ref.nmae"),
    (KSOURCE, _set("spec.delivery.backoffDelay", "0.2s"), "KafkaSource backoffDelay not ISO-8601"),
    (("ConfigMap", "v1"), _set("metadata.lables", {}), "ConfigMap metadata.lables"),
    (("Deployment", "apps/v1"), _set("spec.replicaz", 2), "Deployment spec.replicaz"),
    (("Deployment", "apps/v1"), _set("spec.template.spec.containers.0.imagePullPolicy", 3), "type"),
]


@pytest.mark.parametrize(("target", "mutate", "what"), WRONG, ids=[w[2] for w in WRONG])
def test_wrong_fields_fail_validation(target: tuple[str, str], mutate: Callable, what: str) -> None:
    doc = _first(*target)
    validate(doc)  # the original passes ...
    mutate(doc)
    with pytest.raises(Exception):  # noqa: B017 - pydantic, jsonschema or kubernetes_validate errors
        validate(doc)  # ... the broken one does not


def test_wrong_scaledobject_field_fails() -> None:
    """KEDA models bite too (none is rendered; see manifests/README.md for why)."""
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "x"},
            "minReplicaCount": 0,
            "triggers": [{"type": "kafka", "metadata": {"topic": "t", "lagThreshold": "10"}}],
        },
    }
    validate(good)
    bad = copy.deepcopy(good)
    bad["spec"]["minReplicaCont"] = bad["spec"].pop("minReplicaCount")
    with pytest.raises(Exception):  # noqa: B017
        validate(bad)


def test_models_alone_ignore_unknown_fields() -> None:
    """Why STRICT is needed: the default model config drops unknown fields silently."""
    doc = _first(*TRIGGER)
    doc["spec"]["filterz"] = doc["spec"].pop("filters", [])
    doc["spec"]["delivery"].pop("timeout")
    trigger = model(("eventing.knative.dev/v1", "Trigger"))
    trigger.model_validate(doc)  # passes: the reason for extra="forbid"
    with pytest.raises(Exception):  # noqa: B017
        trigger.model_validate(doc, **STRICT)


# --- (5) the manifests say what the topology says -------------------------------------------


def test_every_trigger_rendered_once_with_its_filters_and_delivery(
    topology: Topology, base_objects: list
) -> None:
    triggers = _by_kind(base_objects, "eventing.knative.dev/v1", "Trigger")
    assert set(triggers) == {t.name for t in topology.triggers}, RERENDER
    for t in topology.triggers:
        assert len(triggers[t.name]) == 1, f"trigger {t.name} rendered {len(triggers[t.name])} times"
        (doc,) = triggers[t.name]
        spec = doc["spec"]
        assert spec["broker"] == "faaspipe"
        assert _same_routing(t.filters, spec.get("filters", [])), (t.name, spec.get("filters"))
        assert spec["subscriber"]["ref"] == {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": t.function,
        }
        d = spec["delivery"]
        assert (d["retry"], d["backoffPolicy"], d["backoffDelay"], d["timeout"]) == (
            t.delivery.retry,
            t.delivery.backoff_policy,
            t.delivery.backoff_delay,
            t.delivery.timeout,
        )
        if t.delivery.dead_letter_sink:
            assert d["deadLetterSink"]["ref"]["kind"] == "KafkaSink"
            assert d["deadLetterSink"]["ref"]["name"] == DLQ_SINK
        else:
            assert "deadLetterSink" not in d
        s = topology.functions[t.function].scaling
        a = doc["metadata"]["annotations"]
        assert a["autoscaling.eventing.knative.dev/class"] == "keda.autoscaling.knative.dev"
        assert a["autoscaling.eventing.knative.dev/min-scale"] == str(s.min_replicas)
        assert a["autoscaling.eventing.knative.dev/max-scale"] == str(s.max_replicas)
        assert a["autoscaling.eventing.knative.dev/lag-threshold"] == str(s.lag_threshold)
        assert a["autoscaling.eventing.knative.dev/activation-lag-threshold"] == str(
            s.activation_lag_threshold
        )


def test_every_kafka_source_rendered_once_reading_its_topic(topology: Topology, base_objects: list) -> None:
    sources = _by_kind(base_objects, "sources.knative.dev/v1beta1", "KafkaSource")
    declared = [k for f in topology.functions.values() for k in f.kafka_sources]
    assert declared, "the prediction log is read by a Kafka source"
    assert set(sources) == {k.name for k in declared}, RERENDER
    for k in declared:
        (doc,) = sources[k.name]
        spec = doc["spec"]
        assert spec["topics"] == [k.topic] and spec["consumerGroup"] == k.consumer_group
        assert spec["sink"]["ref"] == {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": k.function,
        }
        assert spec["delivery"]["retry"] == k.delivery.retry
        annotations = doc["metadata"]["annotations"]
        scaling = topology.functions[k.function].scaling
        assert annotations["autoscaling.eventing.knative.dev/lag-threshold"] == str(scaling.lag_threshold)


def test_every_function_has_one_service_scaled_as_the_topology(
    topology: Topology, base_objects: list
) -> None:
    services = _by_kind(base_objects, "serving.knative.dev/v1", "Service")
    bindings = _by_kind(base_objects, "sources.knative.dev/v1", "SinkBinding")
    assert set(services) == set(topology.functions), RERENDER
    for name, fn in topology.functions.items():
        assert len(services[name]) == 1
        (svc,) = services[name]
        template = svc["spec"]["template"]
        a = template["metadata"]["annotations"]
        assert a["autoscaling.knative.dev/min-scale"] == str(fn.scaling.min_replicas)
        assert a["autoscaling.knative.dev/max-scale"] == str(fn.scaling.max_replicas)
        assert a["autoscaling.knative.dev/target"] == str(fn.scaling.concurrency_target)
        assert template["spec"]["containerConcurrency"] == fn.concurrency
        (container,) = template["spec"]["containers"]
        assert container["image"].startswith(f"registry.local/faaspipe/{fn.environment}:")
        args = container["args"]
        assert args[args.index("--module") + 1] == fn.module and args[args.index("--kind") + 1] == fn.kind
        if fn.kind == "grpc":  # h2c port, probed by TCP: it opens once the replica is set up
            assert container["ports"] == [{"name": "h2c", "containerPort": 8080}]
            assert container["readinessProbe"] == {"tcpSocket": {"port": 8080}}
            assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
        else:
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
        assert {e["name"]: e["value"] for e in container.get("env", [])} == function_env(fn)
        (binding,) = bindings[name]
        assert binding["spec"]["subject"]["name"] == name
        assert binding["spec"]["sink"]["ref"]["kind"] == "Broker"


def test_platform_configmap_and_secret_are_the_shared_platform_settings(base_objects: list) -> None:
    (cm,) = _by_kind(base_objects, "v1", "ConfigMap")["faaspipe-platform"]
    assert cm["data"] == platform_env(ClusterSettings())
    dev = next(o for o in overlays() if o.name == "dev")
    assert set(dev.secrets["faaspipe-platform"]) == SECRET_ENV == set(SECRET_NAMES)
    (sink,) = _by_kind(base_objects, "eventing.knative.dev/v1alpha1", "KafkaSink")[DLQ_SINK]
    assert sink["spec"]["topic"] == StackConfig(state_dir=Path("/tmp/x")).dlq_topic


def _without(args: list[str], *options: str) -> list[str]:
    """``args`` without the named options and their values."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        else:
            out.append(arg)
    return out


def test_every_function_runs_on_the_cluster_as_localdev_starts_it(
    topology: Topology, base_objects: list
) -> None:
    """Parity (shared/function_runtime.py): the replica localdev starts and the container of the
    function's Knative Service get the same settings by name, with the function's own values
    equal, and the same arguments but for the documented differences (the listening address;
    --concurrency locally, enforced by Knative's queue-proxy; a gRPC function's metrics port on
    the cluster). K_SINK comes from the function's SinkBinding there; PYTHONPATH is the image's.
    Locally Feast's online store is SQLite unless FAASPIPE_FEAST_REDIS names a Redis, and the
    state database SQLite unless FAASPIPE_DATABASE_URL names a PostgreSQL, as here."""
    from localdev.components import function_replica

    config = StackConfig(
        state_dir=Path("/tmp/x"), feast_redis="127.0.0.1:6379,db=1", database_url="postgresql://u@h/db"
    )
    (cm,) = _by_kind(base_objects, "v1", "ConfigMap")["faaspipe-platform"]
    secret = next(o for o in overlays() if o.name == "dev").secrets["faaspipe-platform"]
    services = _by_kind(base_objects, "serving.knative.dev/v1", "Service")
    bindings = _by_kind(base_objects, "sources.knative.dev/v1", "SinkBinding")
    for name, fn in topology.functions.items():
        local = function_replica(config, fn, 0, 18123)
        (svc,) = services[name]
        (container,) = svc["spec"]["template"]["spec"]["containers"]
        own = {e["name"]: e["value"] for e in container["env"]}
        cluster = {**cm["data"], **secret, **own, **({"K_SINK": "(SinkBinding)"} if name in bindings else {})}
        assert set(local.env) - LOCAL_ONLY_ENV == set(cluster) - LOCAL_ONLY_ENV, name
        assert set(local.env) >= LOCAL_ONLY_ENV and "K_SINK" in cluster, name
        assert all(local.env[k] == v for k, v in own.items()), name
        assert local.argv[1:3] == ["-m", "shared.runtime"] == container["command"][1:], name
        assert _without(local.argv[3:], "--port", "--concurrency") == _without(
            container["args"], "--port", "--host", "--metrics-port"
        ), name


# --- CLI -------------------------------------------------------------------------------------


def test_check_reports_changed_missing_and_stale_files(topology: Topology, tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--check"]) == 1  # nothing rendered yet
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "base" / "broker.yaml").write_text(f"# {HEADER}\nedited: true\n")
    stale = tmp_path / "base" / "functions" / "gone.yaml"
    stale.write_text(f"# {HEADER}\n")
    hand_written = tmp_path / "base" / "NOTES.md"
    hand_written.write_text("mine\n")
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "base/broker.yaml" in out and "base/functions/gone.yaml" in out and "NOTES" not in out
    assert check(topology, tmp_path) == ["base/broker.yaml", "base/functions/gone.yaml"]
    render(topology, tmp_path)
    assert not stale.exists() and hand_written.exists()
    assert check(topology, tmp_path) == []


def test_the_dask_cluster_runs_the_engine_functions_image_and_threads(
    topology: Topology, base_objects: list
) -> None:
    from localdev.render.dask import ENGINE_FUNCTIONS, SCHEDULER, SCHEDULER_ADDRESS, WORKER
    from shared.engine import DEFAULT_THREADS

    dask = {
        (d["kind"], d["metadata"]["name"]): d
        for d in base_objects
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dask"
    }
    assert set(dask) == {("Deployment", SCHEDULER), ("Service", SCHEDULER), ("Deployment", WORKER)}
    functions = {
        d["metadata"]["name"]: d
        for d in base_objects
        if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
    }
    images = {functions[n]["spec"]["template"]["spec"]["containers"][0]["image"] for n in ENGINE_FUNCTIONS}
    for name in (SCHEDULER, WORKER):
        container = dask[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert {container["image"]} == images, (name, container["image"], images)
    worker = dask[("Deployment", WORKER)]["spec"]["template"]["spec"]["containers"][0]
    args = worker["args"]
    assert args[0] == SCHEDULER_ADDRESS and args[args.index("--nthreads") + 1] == str(DEFAULT_THREADS)
    assert {"name": "OMP_NUM_THREADS", "value": str(DEFAULT_THREADS)} in worker["env"]
    service = dask[("Service", SCHEDULER)]
    port = service["spec"]["ports"][0]["port"]
    assert f"tcp://{service['metadata']['name']}:{port}" == SCHEDULER_ADDRESS
    assert (
        service["spec"]["selector"].items()
        <= dask[("Deployment", SCHEDULER)]["spec"]["template"]["metadata"]["labels"].items()
    )
