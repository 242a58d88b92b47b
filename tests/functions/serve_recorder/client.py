"""Test-side helpers: what the serve-recorder saw, and Prometheus samples of a function."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import urllib3

if TYPE_CHECKING:
    from tests.conftest import Stack

HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def recorded(stack: Stack, event_type: str, subject: str | None = None) -> list[dict[str, Any]]:
    """Events of ``event_type`` (and ``subject``) the serve-recorder received, in arrival order."""
    fields = {"type": event_type, **({"subject": subject} if subject else {})}
    resp = HTTP.request("GET", stack.config.function_url("serve-recorder") + "records", fields=fields)
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def metric(stack: Stack, function: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on (one replica of) ``function`` matching ``labels``."""
    return metric_at(stack.config.function_url(function), name, **labels)


def metric_all(stack: Stack, function: str, name: str, **labels: str) -> float:
    """Sum of ``name`` over every live replica of ``function`` (each at its own address, listed
    by the supervisor): a function with several replicas counts each event on one of them."""
    resp = HTTP.request("GET", stack.config.url("supervisor") + "/status")
    assert resp.status == 200, resp.data
    replicas = json.loads(resp.data)["functions"][function]["replicas"]
    return sum(
        metric_at(r["url"] + "/", name, **labels) for r in replicas if r.get("url") and r["state"] == "ready"
    )


def metric_at(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` matching ``labels`` at ``base_url`` + ``metrics`` (a
    function through the gateway, or one replica's own address)."""
    resp = HTTP.request("GET", base_url + "metrics")
    assert resp.status == 200, resp.data
    total = 0.0
    for line in resp.data.decode().splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        sample_labels = dict(_LABEL.findall(match.group(2) or ""))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total
