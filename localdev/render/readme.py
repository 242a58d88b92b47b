"""``manifests/README.md``: deployment notes (``README.template.md``) and the function table."""

from __future__ import annotations

from pathlib import Path

from localdev.config import StackConfig
from localdev.render.dump import HEADER
from localdev.render.settings import BROKER, DLQ_SINK, MLFLOW_SECRET, PLATFORM, ClusterSettings, Overlay
from shared.topology import Topology

TEMPLATE = Path(__file__).with_name("README.template.md")  # str.format: {{ and }} are literal braces


def readme(topology: Topology, settings: ClusterSettings, dev: Overlay, prod: Overlay) -> str:
    rows = []
    for fn in sorted(topology.functions.values(), key=lambda f: f.name):
        s = fn.scaling
        triggers = ", ".join(f"`{t.name}`" for t in fn.subscriptions) or "—"
        rows.append(
            f"| `{fn.name}` | {fn.kind} | `{settings.image(fn.environment)}` | {s.min_replicas}–{s.max_replicas} "
            f"| {fn.concurrency} / {s.concurrency_target} | {triggers} |"
        )
    table = "\n".join(rows) or "| (no functions) | | | | | |"
    return TEMPLATE.read_text(encoding="utf-8").format(
        header=HEADER,
        table=table,
        dev_ns=dev.namespace,
        prod_ns=prod.namespace,
        prod_tag=prod.tag,
        registry=settings.registry,
        kafka=settings.kafka_bootstrap,
        s3=settings.s3_endpoint,
        redis=settings.redis_host,
        dlq_topic=StackConfig.dlq_topic,
        broker=BROKER,
        dlq_sink=DLQ_SINK,
        platform=PLATFORM,
        mlflow_secret=MLFLOW_SECRET,
    )
