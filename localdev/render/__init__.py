"""Kubernetes manifests rendered from the one topology (``faaspipe render``).

Every ``functions/*/function.yaml`` becomes, under ``manifests/base/``:

- a Knative ``Service`` (serving.knative.dev/v1) running ``python -m shared.runtime`` with the
  function's module and kind, image ``<registry>/<environment>`` (one image per dependency
  group), scaled by the KPA on request concurrency between the topology's min and max;
- a ``SinkBinding`` injecting ``K_SINK`` = the broker, so any function can emit events;
- one Knative ``Trigger`` per topology trigger: its ``spec.broker``, same filters (Knative's
  ``spec.filters`` dialects), same delivery, merged over its broker's (retry, backoff,
  timeout, dead letters to the DLQ ``KafkaSink``),
  and KEDA annotations scaling the trigger's Kafka consumer group on lag.

Plus the platform: a Kafka ``Broker`` per broker of the topology (``brokers.yaml``, its
``spec.delivery``), their ConfigMap and DLQ ``KafkaSink``, the
``faaspipe-platform`` ConfigMap (where the functions find Kafka, S3, MLflow, Redis), MLflow
(Deployment + Service), a ServiceAccount and the Namespace. ``manifests/overlays/{dev,prod}`` are kustomize overlays whose patches are generated
here too. ``manifests/README.md`` is generated as well (deployment notes + function table),
and so are the images' recipes, ``manifests/images/<env>.Containerfile`` (``faaspipe build``).

Output is deterministic (sorted keys, stable order), so ``--check`` and the drift test can
compare it byte for byte with what is committed.

Modules: ``settings`` (cluster addresses, names, resources, overlays), ``meta`` (labels),
``eventing`` (filters and delivery), ``functions`` (one function's objects), ``platform``
(the platform's objects), ``services`` (Kafka, MinIO, Redis and PostgreSQL themselves, under
``manifests/platform/``), ``images`` (one Containerfile per image), ``overlays`` (kustomize
overlays), ``dump`` (YAML), ``readme``
(``README.template.md`` filled in), ``output`` (the files, ``render``, ``check``, ``main``).
"""

from localdev.render.dump import HEADER
from localdev.render.functions import CLUSTER_KEDA_OPTIONS, function_service, keda_annotations
from localdev.render.output import check, main, render, render_files
from localdev.render.platform import platform_env
from localdev.render.settings import DLQ_SINK, LOCAL_ONLY_ENV, SECRET_ENV, ClusterSettings, overlays

__all__ = [
    "CLUSTER_KEDA_OPTIONS",
    "DLQ_SINK",
    "HEADER",
    "LOCAL_ONLY_ENV",
    "SECRET_ENV",
    "ClusterSettings",
    "check",
    "function_service",
    "keda_annotations",
    "main",
    "overlays",
    "platform_env",
    "render",
    "render_files",
]
