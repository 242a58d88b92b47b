"""Function replicas started from the rendered manifests instead of the topology.

With ``FAASPIPE_REPLICAS_FROM=manifests`` the supervisor starts each function replica with the
command, arguments and environment of its Knative Service in ``manifests/`` (what a user
deploys), the way the cluster would, with only these substitutions:

* the image ``<registry>/<environment>:<tag>`` → that environment's interpreter (``.venvs/``),
  as the image's ``python`` is its venv's;
* every platform address of the ``faaspipe-platform`` ConfigMap and Secret (the cluster's
  :class:`~shared.function_runtime.Services`, ``localdev/render/platform.py``) → this stack's
  loopback address for the same service, matched by value;
* ``--host``/``--port`` → loopback and the port the supervisor allocated; ``--metrics-port``
  is dropped (one port per local replica, see ``shared/function_runtime.py``); the Service's
  ``containerConcurrency``, enforced by Knative's queue-proxy there, becomes ``--concurrency``;
* what the cluster gives from elsewhere (``LOCAL_ONLY_ENV``: ``K_SINK`` from the SinkBinding,
  ``PYTHONPATH`` from the image, the local token directory) comes from the stack.

A setting the stack would give a replica and its manifest lacks is an error
(:class:`ManifestDrift`): the replica does not start, so ``faaspipe up`` fails, naming it. The
whole ML chain then runs on manifest-started functions in ``tests/test_services_profile.py``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from localdev.config import BIND_HOST, StackConfig
from shared.function_runtime import Services, function_env
from shared.topology import REPO_ROOT, Function

__all__ = ["MANIFESTS_DIR", "ManifestDrift", "manifest_replica"]

log = logging.getLogger("faaspipe.from_manifests")
MANIFESTS_DIR = REPO_ROOT / "manifests"
NAMESPACE = "faaspipe"  # the base manifests' namespace (overlays rename it)


class ManifestDrift(RuntimeError):
    """The rendered manifests cannot run a function as the stack would (re-render them)."""


def _docs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ManifestDrift(f"{path} is missing: run `faaspipe render`")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str, path: Path) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise ManifestDrift(f"expected one {kind} {name!r} in {path}, found {len(found)}")
    return found[0]


@functools.cache
def _platform(manifests: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The ``faaspipe-platform`` ConfigMap (base) and Secret (the dev overlay's)."""
    from localdev.render.settings import PLATFORM

    base = manifests / "base" / "platform.yaml"
    secrets = manifests / "overlays" / "dev" / "secrets.yaml"
    config_map = _one(_docs(base), "ConfigMap", PLATFORM, base)["data"]
    secret = _one(_docs(secrets), "Secret", PLATFORM, secrets)["stringData"]
    return dict(config_map), dict(secret)


def _address_map(config: StackConfig, secret: dict[str, str]) -> dict[str, str | None]:
    """Each cluster address (by value) → this stack's address of the same service."""
    from localdev.render.platform import cluster_services
    from localdev.render.settings import ClusterSettings

    cluster: Services = cluster_services(ClusterSettings(), NAMESPACE)
    local = config.services
    mapping: dict[str, str | None] = {
        getattr(cluster, f.name): getattr(local, f.name) for f in fields(Services) if getattr(cluster, f.name)
    }
    if secret.get("FAASPIPE_DATABASE_URL"):
        mapping[secret["FAASPIPE_DATABASE_URL"]] = config.database_url
    return mapping


def _localise(name: str, value: str, mapping: dict[str, str | None], where: str) -> str:
    if value not in mapping:
        return value
    local = mapping[value]
    if local is None:
        raise ManifestDrift(
            f"{where} sets {name}={value!r}, a service this stack does not run: set {name} for `faaspipe up`"
        )
    return local


def _args(container_args: list[str], port: int, concurrency: int | None) -> list[str]:
    args: list[str] = []
    rest = iter(container_args)
    for arg in rest:
        if arg in ("--host", "--port", "--metrics-port"):
            next(rest)
            continue
        args.append(arg)
    args += ["--host", BIND_HOST, "--port", str(port)]
    args += ["--concurrency", str(concurrency)] if concurrency else []
    return args


def manifest_replica(
    config: StackConfig, fn: Function, port: int, manifests: Path = MANIFESTS_DIR
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` of a local replica of ``fn`` from its rendered Knative Service."""
    from localdev.components import python_for
    from localdev.render.settings import LOCAL_ONLY_ENV

    path = manifests / "base" / "functions" / f"{fn.name}.yaml"
    service = _one(_docs(path), "Service", fn.name, path)
    spec = service["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config_map, secret = _platform(manifests)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        env.update(config_map if "configMapRef" in source else secret)
        if ref["name"] != "faaspipe-platform":
            raise ManifestDrift(f"{path}: unknown envFrom {ref['name']!r}")
    for item in container.get("env", []):
        if "value" not in item:
            raise ManifestDrift(f"{path}: env {item['name']} has no literal value")
        env[item["name"]] = item["value"]
    mapping = _address_map(config, secret)
    env = {k: _localise(k, v, mapping, str(path)) for k, v in env.items()}
    stack_env = {**config.function_env(), **function_env(fn)}
    env.update({k: v for k, v in stack_env.items() if k in LOCAL_ONLY_ENV})
    missing = sorted(set(stack_env) - set(env))
    if missing:
        raise ManifestDrift(f"{path} lacks settings the stack gives {fn.name}: {', '.join(missing)}")
    environment = container["image"].rsplit("/", 1)[-1].split(":", 1)[0]
    if container["command"][0] != "python":
        raise ManifestDrift(f"{path}: expected the image's python as the command, got {container['command']}")
    argv = [str(python_for(environment)), *container["command"][1:]]
    argv += _args(container["args"], port, spec.get("containerConcurrency"))
    log.info("%s replica on port %d as %s runs it", fn.name, port, _shown(path))
    return argv, env


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
