"""Labels and metadata every rendered object carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PART_OF = {"app.kubernetes.io/part-of": "faaspipe", "app.kubernetes.io/managed-by": "faaspipe-render"}


def object_labels(name: str, component: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, **PART_OF, **extra}


def object_meta(
    name: str, component: str, annotations: Mapping[str, str] | None = None, **labels: str
) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": object_labels(name, component, **labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta
