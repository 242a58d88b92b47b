"""Configuration of the one-machine stack: ports, state directory, storage choices.

Everything comes from ``FAASPIPE_*`` environment variables with defaults, so tests and
users can run a second stack beside the first by moving ``FAASPIPE_PORT_BASE`` and
``FAASPIPE_STATE_DIR``. ``up`` writes the resolved config to ``<state>/stack.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localdev.topology import DEFAULT_FUNCTION_DIRS, REPO_ROOT

# Offsets from the port base. SeaweedFS opens many ports; all are pinned here.
PORT_OFFSETS = {
    "gateway": 0,  # stable URL of every function: http://127.0.0.1:<gateway>/<function>/
    "ingress": 1,  # broker ingress (POST CloudEvents here)
    "object_events": 2,  # object-events source (S3 / SeaweedFS notifications)
    "supervisor": 3,  # control API + metrics of the supervisor
    "dispatcher": 4,  # the broker's trigger dispatchers: health, /triggers backlogs, metrics
    "kafka": 10,
    "s3": 20,
    "s3_grpc": 21,
    "master": 22,
    "master_grpc": 23,
    "volume": 24,
    "volume_grpc": 25,
    "filer": 26,
    "filer_grpc": 27,
    "admin": 28,
    "admin_grpc": 29,
    "weed_metrics": 30,
    "mlflow": 40,
}
DEFAULT_PORT_BASE = 17000
DEFAULT_BUCKETS = ("landing", "quarantine", "features", "models", "mlflow", "tansu")


@dataclass
class StackConfig:
    state_dir: Path
    port_base: int = DEFAULT_PORT_BASE
    ports: dict[str, int] = field(default_factory=dict)
    kafka_storage: str = "s3"  # "s3" (durable, on the local SeaweedFS) or "memory"
    broker_partitions: int = 4
    mlflow_backend_uri: str | None = None  # None → SQLite in the state dir
    idempotency_url: str | None = None  # None → SQLite in the state dir; redis://… supported
    access_key: str = "faaspipe"
    secret_key: str = "faaspipe-secret"
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    function_dirs: tuple[Path, ...] = DEFAULT_FUNCTION_DIRS
    start_timeout_s: float = 180.0

    broker_topic: str = "faaspipe.broker"
    dlq_topic: str = "faaspipe.dlq"
    dlq_replayed_topic: str = "faaspipe.dlq.replayed"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        resolved = {name: self.port_base + off for name, off in PORT_OFFSETS.items()}
        resolved.update(self.ports)
        self.ports = resolved

    # --- derived locations -------------------------------------------------
    def url(self, port_name: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_name]}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def s3_endpoint(self) -> str:
        return self.url("s3")

    @property
    def ingress_url(self) -> str:
        return self.url("ingress") + "/"

    def function_url(self, function: str) -> str:
        return f"{self.url('gateway')}/{function}/"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def effective_idempotency_url(self) -> str:
        return self.idempotency_url or f"sqlite:///{self.state_dir / 'idempotency.db'}"

    @property
    def effective_mlflow_backend(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    def function_env(self) -> dict[str, str]:
        """What every function process gets: where the platform's services are."""
        return {
            "FAASPIPE_STATE_DIR": str(self.state_dir),
            "FAASPIPE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "FAASPIPE_S3_ENDPOINT": self.s3_endpoint,
            "FAASPIPE_S3_ACCESS_KEY": self.access_key,
            "FAASPIPE_S3_SECRET_KEY": self.secret_key,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "K_SINK": self.ingress_url,
            "FAASPIPE_BROKER_TOPIC": self.broker_topic,
            "FAASPIPE_GATEWAY_URL": self.url("gateway"),
            "FAASPIPE_IDEMPOTENCY_URL": self.effective_idempotency_url,
            "PYTHONPATH": str(REPO_ROOT),
            # 2-core boxes: OpenMP/BLAS oversubscription costs 10x on small predictions.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }

    # --- persistence -------------------------------------------------------
    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        doc = asdict(self)
        doc["state_dir"] = str(self.state_dir)
        doc["function_dirs"] = [str(p) for p in self.function_dirs]
        (self.state_dir / "stack.json").write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> StackConfig:
        doc = json.loads((Path(state_dir) / "stack.json").read_text())
        doc["function_dirs"] = tuple(Path(p) for p in doc["function_dirs"])
        doc["buckets"] = tuple(doc["buckets"])
        return cls(**doc)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StackConfig:
        env = dict(os.environ if env is None else env)
        state_dir = Path(env.get("FAASPIPE_STATE_DIR", str(REPO_ROOT / ".faaspipe")))
        ports = {
            name: int(env[f"FAASPIPE_PORT_{name.upper()}"])
            for name in PORT_OFFSETS
            if f"FAASPIPE_PORT_{name.upper()}" in env
        }
        dirs = env.get("FAASPIPE_FUNCTION_DIRS")
        storage = env.get("FAASPIPE_KAFKA_STORAGE", "s3")
        if storage not in ("s3", "memory"):
            raise ValueError(f"FAASPIPE_KAFKA_STORAGE must be 's3' or 'memory', got {storage!r}")
        return cls(
            state_dir=state_dir,
            port_base=int(env.get("FAASPIPE_PORT_BASE", DEFAULT_PORT_BASE)),
            ports=ports,
            kafka_storage=storage,
            broker_partitions=int(env.get("FAASPIPE_BROKER_PARTITIONS", 4)),
            mlflow_backend_uri=env.get("FAASPIPE_MLFLOW_BACKEND_URI") or None,
            idempotency_url=env.get("FAASPIPE_IDEMPOTENCY_URL") or None,
            function_dirs=tuple(Path(p) for p in dirs.split(os.pathsep)) if dirs else DEFAULT_FUNCTION_DIRS,
        )
