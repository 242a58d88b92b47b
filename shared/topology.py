"""The one topology: functions, their environments, triggers and scaling.

Each function declares itself in ``functions/<name>/function.yaml``; this module reads all
of them (plus any extra directories, e.g. test functions) into one ``Topology``. localdev
runs from it and ``manifests/`` are rendered from it; nothing is listed twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from shared.keda_metadata import OPTIONS as KEDA_OPTIONS
from shared.keda_metadata import KafkaScalerMetadata, KedaMetadataError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FUNCTION_DIRS = (REPO_ROOT / "functions",)
KINDS = ("event", "http", "source", "grpc")
GRPC_SUFFIX = "-grpc"  # a function's gRPC endpoint is the derived function <name>-grpc
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes object name
_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


# The broker every trigger uses unless it names another, and the namespace of every broker:
# the platform's namespace of the rendered base manifests (overlays rename it on the cluster).
DEFAULT_BROKER = "faaspipe"
DEFAULT_NAMESPACE = "faaspipe"


class TopologyError(ValueError):
    """A function.yaml is invalid; the message names the file and the field."""


def parse_duration(value: str) -> float:
    """ISO-8601 duration as Knative uses it (``PT0.5S``, ``PT2M``) → seconds."""
    match = _DURATION.match(value or "")
    if not match or not any(match.groups()):
        raise ValueError(f"not an ISO-8601 duration like PT1S: {value!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Delivery:
    """Knative ``DeliverySpec``."""

    retry: int = 3
    backoff_policy: str = "exponential"
    backoff_delay: str = "PT0.2S"
    timeout: str = "PT30S"
    dead_letter_sink: str | None = "dlq"
    # Retry-After on 429/503 is honoured up to this long (Knative's delivery-retryafter
    # feature); None or PT0S ignores the header.
    retry_after_max: str | None = None
    format: str | None = None  # json (structured) or binary; None: binary, as Knative defaults
    # the fields given in the YAML (attribute names), so a merge can tell "unset" from a
    # value equal to the default (:func:`merge_delivery`)
    explicit: frozenset[str] = frozenset()

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): ``backoffDelay * 2^n``
        (exponential, as eventing-kafka-broker computes it) or ``backoffDelay * n`` (linear)."""
        base = parse_duration(self.backoff_delay)
        return base * (2**attempt if self.backoff_policy == "exponential" else attempt)

    @property
    def retry_after_max_s(self) -> float:
        return parse_duration(self.retry_after_max) if self.retry_after_max else 0.0

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)


@dataclass(frozen=True)
class Trigger:
    """A subscription of a function: a broker Trigger (filters on its broker's topic), or, with
    ``topic`` set, a KafkaSource reading that topic directly (every record, replies dropped).
    Both are delivered by the same dispatcher, as in eventing-kafka-broker's data plane."""

    name: str
    function: str
    filters: tuple[dict[str, Any], ...]
    delivery: Delivery
    topic: str | None = None
    path: str = ""  # Knative subscriber.uri relative to the function's address, e.g. /hooks/x
    broker: str = DEFAULT_BROKER  # Knative spec.broker: a broker of the same namespace

    @property
    def is_kafka_source(self) -> bool:
        return self.topic is not None

    @property
    def consumer_group(self) -> str:
        kind = "source" if self.is_kafka_source else "trigger"
        return f"faaspipe.{kind}.{self.name}"


DELIVERY_FIELDS = {  # Knative DeliverySpec field → Delivery attribute
    "retry": "retry",
    "backoffPolicy": "backoff_policy",
    "backoffDelay": "backoff_delay",
    "timeout": "timeout",
    "deadLetterSink": "dead_letter_sink",
    "retryAfterMax": "retry_after_max",
    "format": "format",
}


def merge_delivery(own: Delivery, defaults: Delivery) -> Delivery:
    """``own`` field by field over ``defaults``: a field ``own`` sets wins, an unset one is the
    default's. A trigger's delivery over its broker's ``spec.delivery``, as eventing-kafka-broker
    merges them (control-plane/pkg/reconciler/trigger/trigger.go: "Merge Broker and Trigger
    egress configuration prioritizing the Trigger configuration", ``coreconfig.MergeEgressConfig``
    in control-plane/pkg/core/config/utils.go); and a broker's over the platform's defaults
    (``Delivery()``, rendered into every Broker as Knative's config-br-defaults would)."""
    values = {a: getattr(own if a in own.explicit else defaults, a) for a in DELIVERY_FIELDS.values()}
    return Delivery(**values, explicit=own.explicit | defaults.explicit)


@dataclass(frozen=True)
class Broker:
    """A Knative Broker (class Kafka): its own topic, triggers and ``spec.delivery`` defaults."""

    name: str = DEFAULT_BROKER
    namespace: str = DEFAULT_NAMESPACE
    delivery: Delivery = field(default_factory=Delivery)  # the effective spec.delivery

    @property
    def ref(self) -> str:
        """``<namespace>/<name>``: its ingress path (``/<namespace>/<name>``)."""
        return f"{self.namespace}/{self.name}"

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_BROKER and self.namespace == DEFAULT_NAMESPACE


KPA_DEFAULT_WINDOW_S = 60.0
KPA_WINDOW_RANGE_S = (6.0, 3600.0)


@dataclass(frozen=True)
class Scaling:
    """KEDA / Knative scaling bounds for a function."""

    min_replicas: int = 0  # serverless: no process while nothing happens
    max_replicas: int = 1
    # why a function cannot be at zero (``minReplicaReason``; every product function with a
    # minReplicaCount above 0 gives one: tests/test_scaling_policy.py)
    min_reason: str = ""
    # KEDA kafka-trigger options (lagThreshold, activationLagThreshold, allowIdleConsumers ...),
    # with KEDA's names and defaults; validated as KEDA validates them.
    keda: KafkaScalerMetadata = field(default_factory=KafkaScalerMetadata)
    cooldown_period_s: float = 60.0
    polling_interval_s: float = 1.0
    concurrency_target: int = 10
    # Knative's ``autoscaling.knative.dev/target-utilization-percentage`` (1-100, default 70):
    # the KPA aims at this share of the target (localdev/scaling_policy.py, kpa_target)
    target_utilization_percentage: float = 70.0
    scale_down_stabilization_s: float = 30.0
    # Knative KPA stable window (``autoscaling.knative.dev/window``, 6 s..1 h): request
    # concurrency is averaged over it, and the last replica goes only after a whole window
    # without requests. None until load_function resolves the kind's default.
    stable_window_s: float | None = None

    @property
    def lag_threshold(self) -> int:
        return self.keda.lag_threshold

    @property
    def activation_lag_threshold(self) -> int:
        return self.keda.activation_lag_threshold

    @property
    def window_s(self) -> float:
        """The stable window in effect (Knative's 60 s if none was resolved)."""
        return float(self.stable_window_s or KPA_DEFAULT_WINDOW_S)

    @property
    def panic_window_s(self) -> float:
        """Knative's default panic window: 10 % of the stable window (at least 1 s)."""
        return max(1.0, 0.1 * self.window_s)


@dataclass(frozen=True)
class Function:
    name: str
    kind: str
    module: str
    environment: str
    description: str
    directory: Path
    idempotent: bool
    concurrency: int
    scaling: Scaling
    triggers: tuple[Trigger, ...]
    env: dict[str, str] = field(default_factory=dict)
    kafka_sources: tuple[Trigger, ...] = ()
    # kind grpc: the fully qualified gRPC services it serves (the gateway routes on them)
    grpc_services: tuple[str, ...] = ()
    # an http function's ``grpc:`` block: (module, services) of its derived gRPC function
    grpc: tuple[str, tuple[str, ...]] | None = None
    # the event types it posts to the broker (replies and K_SINK posts): its identity's
    # EventPolicy allows exactly these (shared/auth/pipeline.py)
    emits: tuple[str, ...] = ()

    @property
    def subscriptions(self) -> tuple[Trigger, ...]:
        """Broker triggers and Kafka sources: everything that delivers events to it."""
        return self.triggers + self.kafka_sources


@dataclass(frozen=True)
class Topology:
    functions: dict[str, Function]
    # by name; the default broker is always there (shared/brokers.py reads the declarations)
    brokers: dict[str, Broker] = field(default_factory=lambda: {DEFAULT_BROKER: Broker()})

    def broker_of(self, trigger: Trigger) -> Broker:
        """The broker a trigger subscribes to (load_topology has checked that it exists)."""
        return self.brokers[trigger.broker]

    @property
    def triggers(self) -> list[Trigger]:
        return [t for f in self.functions.values() for t in f.triggers]

    @property
    def subscriptions(self) -> list[Trigger]:
        return [t for f in self.functions.values() for t in f.subscriptions]

    @property
    def source_topics(self) -> list[str]:
        """Topics read directly by Kafka sources (besides the broker's)."""
        return sorted({t.topic for f in self.functions.values() for t in f.kafka_sources if t.topic})


def _require(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise TopologyError(f"{where}: missing required field '{key}'")
    return doc[key]


def parse_delivery(doc: dict[str, Any], where: str) -> Delivery:
    """A DeliverySpec, checked with Knative's rules; each error names the field. Fields not
    given keep ``Delivery``'s defaults and are not ``explicit``."""
    names = DELIVERY_FIELDS
    unknown = set(doc) - set(names)
    if unknown:
        raise TopologyError(f"{where}.delivery: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    given = {names[k]: v for k, v in doc.items()}
    delivery = Delivery(**given, explicit=frozenset(given))
    retry = delivery.retry
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise TopologyError(f"{where}.delivery.retry must be an integer >= 0, got {retry!r}")
    if delivery.backoff_policy not in ("exponential", "linear"):
        raise TopologyError(f"{where}.delivery.backoffPolicy must be exponential or linear")
    for key, field_name in (
        ("backoffDelay", "backoff_delay"),
        ("timeout", "timeout"),
        ("retryAfterMax", "retry_after_max"),
    ):
        value = getattr(delivery, field_name)
        if value is None and key == "retryAfterMax":
            continue
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError) as exc:
            raise TopologyError(f"{where}.delivery.{key}: {exc}") from exc
        if key == "timeout" and seconds <= 0:
            raise TopologyError(f"{where}.delivery.timeout must be greater than 0, got {value!r}")
    if delivery.format not in (None, "json", "binary"):
        raise TopologyError(f"{where}.delivery.format must be json or binary, got {delivery.format!r}")
    if delivery.dead_letter_sink not in (None, "dlq"):
        raise TopologyError(
            f"{where}.delivery.deadLetterSink must be dlq (the platform's dead-letter topic) or null "
            f"(drop after the retries), got {delivery.dead_letter_sink!r}: other sinks are not supported"
        )
    return delivery


def _scaling(doc: dict[str, Any], where: str, kind: str) -> Scaling:
    """The ``scaling`` block. ``stableWindow`` defaults to Knative's 60 s for http functions;
    for event functions, whose traffic is the dispatcher's pushes, it defaults to the
    ``cooldownPeriod`` (within 6-60 s), so they return to zero after the KEDA cooldown rather
    than after a minute of KPA window."""
    names = {
        "minReplicaCount": ("min_replicas", int, 0),
        "maxReplicaCount": ("max_replicas", int, 1),
        "cooldownPeriod": ("cooldown_period_s", float, 0),
        "pollingInterval": ("polling_interval_s", float, 0.1),
        "concurrencyTarget": ("concurrency_target", int, 1),
        "targetUtilizationPercentage": ("target_utilization_percentage", float, 1),
        "scaleDownStabilization": ("scale_down_stabilization_s", float, 0),
        "stableWindow": ("stable_window_s", float, 0),
    }
    known = sorted([*names, *KEDA_OPTIONS, "minReplicaReason"])
    unknown = set(doc) - set(known)
    if unknown:
        raise TopologyError(f"{where}.scaling: unknown field(s) {sorted(unknown)}; known: {known}")
    values: dict[str, Any] = {}
    if "minReplicaReason" in doc:
        if not isinstance(doc["minReplicaReason"], str) or not doc["minReplicaReason"].strip():
            raise TopologyError(f"{where}.scaling.minReplicaReason must be a sentence saying why")
        values["min_reason"] = doc["minReplicaReason"].strip()
    for key, (attribute, number_type, minimum) in names.items():
        if key in doc:
            values[attribute] = _number(doc[key], number_type, minimum, f"{where}.scaling.{key}")
    try:
        values["keda"] = KafkaScalerMetadata.parse({k: v for k, v in doc.items() if k in KEDA_OPTIONS})
    except KedaMetadataError as exc:
        raise TopologyError(f"{where}.scaling.{exc.field}: {exc.detail} (KEDA's rule)") from exc
    scaling = Scaling(**values)
    if scaling.stable_window_s is None:
        window = KPA_DEFAULT_WINDOW_S
        if kind != "http":
            window = min(KPA_DEFAULT_WINDOW_S, max(KPA_WINDOW_RANGE_S[0], scaling.cooldown_period_s))
        scaling = replace(scaling, stable_window_s=window)
    low, high = KPA_WINDOW_RANGE_S
    if not low <= float(scaling.stable_window_s) <= high:  # type: ignore[arg-type]
        raise TopologyError(
            f"{where}.scaling.stableWindow must be between {low:.0f} and {high:.0f} seconds "
            f"(Knative's range), got {scaling.stable_window_s}"
        )
    if scaling.target_utilization_percentage > 100:
        raise TopologyError(
            f"{where}.scaling.targetUtilizationPercentage must be between 1 and 100 (Knative's "
            f"range), got {scaling.target_utilization_percentage:g}"
        )
    if scaling.min_replicas > scaling.max_replicas:
        raise TopologyError(
            f"{where}.scaling.minReplicaCount ({scaling.min_replicas}) must not exceed "
            f"maxReplicaCount ({scaling.max_replicas})"
        )
    return scaling


def _number(value: Any, kind: type, minimum: float, where: str) -> Any:
    """A numeric scaling field, refused (naming it) unless it is a ``kind`` >= ``minimum``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and kind is int and not float(value).is_integer():
        ok = False
    if not ok or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise TopologyError(f"{where} must be {what} >= {minimum:g}, got {value!r}")
    return kind(value)


def load_function(path: Path) -> Function:
    """Read and check one ``function.yaml``."""
    where = str(path)
    doc = yaml.safe_load(path.read_text()) or {}
    name = _require(doc, "name", where)
    if not _NAME.match(name):
        raise TopologyError(f"{where}: name {name!r} must be lowercase letters, digits and '-'")
    kind = doc.get("kind", "event")
    if kind not in KINDS:
        raise TopologyError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    triggers = []
    for i, t in enumerate(doc.get("triggers", []) or []):
        t_where = f"{where}: triggers[{i}]"
        t_name = _require(t, "name", t_where)
        filters = tuple(t.get("filters", []) or [])
        from shared.filters import check_filters  # local import: keeps YAML loading light

        try:
            check_filters(filters)
        except ValueError as exc:
            raise TopologyError(f"{t_where}.filters: {exc}") from exc
        unknown = set(t) - {"name", "filters", "delivery", "path", "broker"}
        if unknown:
            raise TopologyError(
                f"{t_where}: unknown field(s) {sorted(unknown)}; known: broker, delivery, filters, name, path"
            )
        broker = t.get("broker", DEFAULT_BROKER)
        if not isinstance(broker, str) or not DNS_LABEL.match(broker):
            raise TopologyError(f"{t_where}.broker must be a broker's name (a DNS label), got {broker!r}")
        sub_path = str(t.get("path", ""))
        if sub_path and (
            not sub_path.startswith("/") or "//" in sub_path or any(c in sub_path for c in "?# ")
        ):
            raise TopologyError(
                f"{t_where}.path must be an absolute URL path like /hooks/x, got {sub_path!r}"
            )
        delivery = parse_delivery(t.get("delivery", {}) or {}, t_where)
        triggers.append(Trigger(t_name, name, filters, delivery, path=sub_path, broker=broker))
    sources = []
    for i, k in enumerate(doc.get("kafkaSources", []) or []):
        k_where = f"{where}: kafkaSources[{i}]"
        unknown = set(k) - {"name", "topic", "delivery"}
        if unknown:
            raise TopologyError(
                f"{k_where}: unknown field(s) {sorted(unknown)}; known: delivery, name, topic"
            )
        topic = str(_require(k, "topic", k_where))
        delivery = parse_delivery(k.get("delivery", {}) or {}, k_where)
        sources.append(Trigger(_require(k, "name", k_where), name, (), delivery, topic=topic))
    if (triggers or sources) and kind == "source":
        raise TopologyError(f"{where}: a source emits events; it cannot subscribe to triggers")
    if kind == "grpc":
        raise TopologyError(
            f"{where}: kind grpc is derived from an http function's `grpc:` block, not declared"
        )
    return Function(
        name=name,
        kind=kind,
        module=_require(doc, "module", where),
        environment=doc.get("environment", "default"),
        description=doc.get("description", ""),
        directory=path.parent,
        idempotent=bool(doc.get("idempotent", kind == "event")),
        concurrency=int(doc.get("concurrency", 8)),
        scaling=_scaling(doc.get("scaling", {}) or {}, where, kind),
        triggers=tuple(triggers),
        kafka_sources=tuple(sources),
        env={str(k): str(v) for k, v in (doc.get("env", {}) or {}).items()},
        grpc=_grpc_block(doc.get("grpc"), where, kind),
        emits=_emits(doc.get("emits"), where),
    )


def _emits(doc: Any, where: str) -> tuple[str, ...]:
    """``emits: [type, ...]``: the CloudEvent types the function posts to the broker."""
    if doc is None:
        return ()
    if not isinstance(doc, list) or not all(isinstance(t, str) and t for t in doc):
        raise TopologyError(f"{where}.emits: expected a list of CloudEvent types, got {doc!r}")
    return tuple(doc)


def _grpc_block(doc: Any, where: str, kind: str) -> tuple[str, tuple[str, ...]] | None:
    """``grpc: {module, services}``: the function also answers gRPC, as ``<name>-grpc``."""
    if doc is None:
        return None
    if kind != "http":
        raise TopologyError(f"{where}.grpc: only an http function has a gRPC endpoint")
    if not isinstance(doc, dict) or set(doc) != {"module", "services"}:
        raise TopologyError(f"{where}.grpc: expected exactly `module` and `services`, got {doc!r}")
    services = doc["services"]
    if (
        not isinstance(services, list)
        or not services
        or not all(isinstance(x, str) and "." in x for x in services)
    ):
        raise TopologyError(
            f"{where}.grpc.services: expected fully qualified service names like pkg.Service, got {services!r}"
        )
    return str(doc["module"]), tuple(services)


def grpc_function(fn: Function) -> Function | None:
    """The gRPC endpoint of ``fn``: same environment, env, scaling and concurrency, its own
    replicas (Knative gives a container one port, so gRPC is its own h2c Service)."""
    if fn.grpc is None:
        return None
    module, services = fn.grpc
    return replace(
        fn,
        name=fn.name + GRPC_SUFFIX,
        kind="grpc",
        module=module,
        description=f"{fn.name} over gRPC ({', '.join(services)})",
        idempotent=False,
        triggers=(),
        kafka_sources=(),
        grpc_services=services,
        grpc=None,
        emits=(),
    )


def load_topology(dirs: Iterable[Path] = DEFAULT_FUNCTION_DIRS) -> Topology:
    """Every ``*/function.yaml`` below the given directories; names must be unique. The
    brokers are the default plus those of each directory's ``brokers.yaml``; each trigger's
    delivery is merged over its broker's (:mod:`shared.brokers`)."""
    from shared.brokers import bind_triggers, load_brokers  # local import: it imports this module

    dirs = tuple(dirs)
    functions: dict[str, Function] = {}
    trigger_names: set[str] = set()
    for directory in dirs:
        for path in sorted(Path(directory).glob("*/function.yaml")):
            fn = load_function(path)
            for t in fn.subscriptions:
                if t.name in trigger_names:
                    raise TopologyError(f"{path}: trigger or Kafka source {t.name!r} is declared twice")
                trigger_names.add(t.name)
            for declared in (fn, grpc_function(fn)):
                if declared is None:
                    continue
                if declared.name in functions:
                    raise TopologyError(f"{path}: function {declared.name!r} is declared twice")
                functions[declared.name] = declared
    brokers = load_brokers(dirs)
    return Topology(bind_triggers(functions, brokers), brokers)
