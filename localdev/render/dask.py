"""The Dask engine's cluster side (``FAASPIPE_ENGINE=dask``): a scheduler Deployment and Service
and a worker Deployment, in the image of the functions that send work to it.

The workers run the jobs in ``functions/*/distributed.py``, so they need those functions' code
and dependencies: the image of the topology's engine functions (ingest, materialise, train; one
environment, checked here). Each worker is one process of ``FAASPIPE_DASK_THREADS`` threads
with ``OMP_NUM_THREADS`` set to the same count (XGBoost and BLAS stay inside the pod's CPU);
more workers = more replicas. A function uses it with ``FAASPIPE_ENGINE=dask`` and
``FAASPIPE_DASK_SCHEDULER=tcp://faaspipe-dask-scheduler:8786`` in its ``function.yaml`` env.
"""

from __future__ import annotations

from typing import Any

from localdev.render.meta import object_labels, object_meta
from localdev.render.settings import BASE_RESOURCES, PLATFORM, SERVICE_ACCOUNT, ClusterSettings, resources_for
from shared.engine import DEFAULT_THREADS
from shared.topology import Topology

SCHEDULER = "faaspipe-dask-scheduler"
WORKER = "faaspipe-dask-worker"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_REPLICAS = 2
ENGINE_FUNCTIONS = ("ingest", "materialise", "train")  # the functions with a Dask job
SCHEDULER_ADDRESS = f"tcp://{SCHEDULER}:{SCHEDULER_PORT}"


def engine_environment(topology: Topology) -> str:
    """The one environment (image) of the engine functions present in the topology."""
    environments = {topology.functions[n].environment for n in ENGINE_FUNCTIONS if n in topology.functions}
    if len(environments) > 1:
        raise ValueError(f"the Dask engine's functions run in several environments: {sorted(environments)}")
    return environments.pop() if environments else "train"


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "faaspipe"}


def _deployment(name: str, replicas: int, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, "dask"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(name)},
            "template": {
                "metadata": {"labels": object_labels(name, "dask")},
                "spec": {"serviceAccountName": SERVICE_ACCOUNT, "containers": [container]},
            },
        },
    }


def dask_docs(settings: ClusterSettings, topology: Topology) -> list[dict[str, Any]]:
    image = settings.image(engine_environment(topology))
    resources = resources_for(BASE_RESOURCES, engine_environment(topology))
    threads = str(DEFAULT_THREADS)
    scheduler = {
        "name": "scheduler",
        "image": image,
        "command": ["dask", "scheduler"],
        "args": ["--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}"],
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT},
        ],
        "readinessProbe": {"tcpSocket": {"port": "tcp-comm"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "tcp-comm"}, "initialDelaySeconds": 30, "periodSeconds": 20},
        "resources": resources_for(BASE_RESOURCES, "serving"),  # the scheduler only schedules
    }
    worker = {
        "name": "worker",
        "image": image,
        "command": ["dask", "worker"],
        "args": [
            SCHEDULER_ADDRESS,
            "--nworkers",
            "1",
            "--nthreads",
            threads,
            "--memory-limit",
            resources["limits"]["memory"].replace("Gi", "GiB").replace("Mi", "MiB"),
            "--dashboard-address",
            f":{DASHBOARD_PORT}",
        ],
        "env": [
            {"name": "OMP_NUM_THREADS", "value": threads},
            {"name": "OPENBLAS_NUM_THREADS", "value": threads},
            {"name": "MKL_NUM_THREADS", "value": threads},
        ],
        # the jobs read and write S3, Feast and MLflow like the functions
        "envFrom": [{"configMapRef": {"name": PLATFORM}}, {"secretRef": {"name": PLATFORM}}],
        "ports": [{"name": "http-dashboard", "containerPort": DASHBOARD_PORT}],
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http-dashboard"},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
        "resources": resources,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(SCHEDULER, "dask"),
        "spec": {
            "selector": _selector(SCHEDULER),
            "ports": [
                {"name": "tcp-comm", "port": SCHEDULER_PORT, "targetPort": "tcp-comm", "protocol": "TCP"},
                {
                    "name": "http-dashboard",
                    "port": DASHBOARD_PORT,
                    "targetPort": "http-dashboard",
                    "protocol": "TCP",
                },
            ],
        },
    }
    return [_deployment(SCHEDULER, 1, scheduler), service, _deployment(WORKER, WORKER_REPLICAS, worker)]
