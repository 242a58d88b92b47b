"""Configuration of the one-machine stack: ports, state directory, storage choices.

Everything comes from ``FAASPIPE_*`` environment variables with defaults, so tests and
users can run a second stack beside the first by moving ``FAASPIPE_PORT_BASE`` and
``FAASPIPE_STATE_DIR``. ``up`` writes the resolved config to ``<state>/stack.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from shared.auth.bearer import AUTH_ENV, auth_enabled
from shared.auth.local import StackAuth
from shared.function_runtime import Services, platform_env, secret_env
from shared.topology import DEFAULT_FUNCTION_DIRS, REPO_ROOT

# Offsets from the port base. SeaweedFS opens many ports; all are pinned here.
PORT_OFFSETS = {
    "gateway": 0,  # stable URL of every function: http://127.0.0.1:<gateway>/<function>/
    "ingress": 1,  # broker ingress (POST CloudEvents here)
    "object_events": 2,  # object-events source (S3 / SeaweedFS notifications)
    "supervisor": 3,  # control API + metrics of the supervisor
    "dispatcher": 4,  # the broker's trigger dispatchers: health, /triggers backlogs, metrics
    "grpc": 5,  # the gateway's gRPC front: every gRPC function's services (localdev/grpc_front.py)
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
# Function replicas listen on port_base+100 … +499: ports the stack owns, below the kernel's
# ephemeral range. A port the kernel handed out (bind to 0) and gunicorn bound a moment later
# was taken in between by an outgoing connection, failing a stack's start in the test suite.
REPLICA_PORT_OFFSETS = range(100, 500)
BIND_HOST = "127.0.0.1"  # every local listener: loopback only, so FAASPIPE_AUTH=auto means off
DEFAULT_BUCKETS = ("landing", "quarantine", "features", "models", "predictions", "mlflow", "tansu")


@dataclass
class StackConfig:
    state_dir: Path
    port_base: int = DEFAULT_PORT_BASE
    ports: dict[str, int] = field(default_factory=dict)
    kafka_storage: str = "s3"  # "s3" (durable, on the local SeaweedFS) or "memory"
    broker_partitions: int = 4
    mlflow_backend_uri: str | None = None  # None → SQLite in the state dir
    idempotency_url: str | None = None  # None → SQLite in the state dir; redis://… supported
    feast_redis: str | None = None  # None → Feast online store in SQLite; "host:port[,db=N]" → Redis
    database_url: str | None = None  # None → SQLite files; postgresql://… (Feast registry, monitor)
    replicas_from: str = "topology"  # or "manifests": each replica as its rendered Knative Service
    zygote: str = "on"  # replicas forked from a per-environment zygote (localdev/zygote/); "off": spawned
    zygote_idle_s: float = 600.0  # a zygote that forked nothing for this long is stopped
    access_key: str = "faaspipe"
    secret_key: str = "faaspipe-secret"
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    function_dirs: tuple[Path, ...] = DEFAULT_FUNCTION_DIRS
    start_timeout_s: float = 180.0
    auth_mode: str = "auto"  # FAASPIPE_AUTH: on | off | auto (on unless bound to loopback)

    broker_topic: str = "faaspipe.broker"
    dlq_topic: str = "faaspipe.dlq"
    dlq_replayed_topic: str = "faaspipe.dlq.replayed"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        resolved = {name: self.port_base + off for name, off in PORT_OFFSETS.items()}
        resolved.update(self.ports)
        self.ports = resolved

    # --- derived locations -------------------------------------------------
    @property
    def replica_ports(self) -> range:
        """The ports function replicas may listen on."""
        return range(self.port_base + REPLICA_PORT_OFFSETS.start, self.port_base + REPLICA_PORT_OFFSETS.stop)

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
    def auth(self) -> StackAuth:
        """Bearer tokens on the ingress, gateway and control API (shared/auth), on or off."""
        return StackAuth(self.state_dir, auth_enabled(self.auth_mode, BIND_HOST))

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def effective_idempotency_url(self) -> str:
        return self.idempotency_url or f"sqlite:///{self.state_dir / 'idempotency.db'}"

    @property
    def effective_mlflow_backend(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def services(self) -> Services:
        """Where a function replica finds the platform on this machine."""
        return Services(
            kafka_bootstrap=self.kafka_bootstrap,
            s3_endpoint=self.s3_endpoint,
            mlflow_tracking_uri=self.url("mlflow"),
            broker_topic=self.broker_topic,
            idempotency_url=self.effective_idempotency_url,
            function_url_template=self.url("gateway") + "/{name}/",
            state_dir=str(self.state_dir),
            feast_redis=self.feast_redis,
            database_url=self.database_url,
            token_dir=str(self.auth.token_dir),
        )

    def function_env(self) -> dict[str, str]:
        """What every function process gets: where the platform's services are
        (``shared/function_runtime.py``, as on the cluster), the credentials, and what the
        cluster gives otherwise: ``K_SINK`` (a SinkBinding there) and ``PYTHONPATH`` (the image)."""
        return {
            **platform_env(self.services),
            **secret_env(self.access_key, self.secret_key, self.database_url),
            "K_SINK": self.ingress_url,
            "PYTHONPATH": str(REPO_ROOT),
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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

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
            feast_redis=env.get("FAASPIPE_FEAST_REDIS") or None,
            database_url=env.get("FAASPIPE_DATABASE_URL") or None,
            replicas_from=env.get("FAASPIPE_REPLICAS_FROM") or "topology",
            zygote=env.get("FAASPIPE_ZYGOTE") or "on",
            zygote_idle_s=float(env.get("FAASPIPE_ZYGOTE_IDLE_S") or 600.0),
            function_dirs=tuple(Path(p) for p in dirs.split(os.pathsep)) if dirs else DEFAULT_FUNCTION_DIRS,
            start_timeout_s=float(env.get("FAASPIPE_START_TIMEOUT_S") or 180.0),
            auth_mode=env.get(AUTH_ENV) or "auto",
        )


# --- every setting a user may change -----------------------------------------------------
# README's "Settings" section lists each of these with the same default (tests/test_settings.py
# checks it, and that every FAASPIPE_* variable read in the code is here); `faaspipe up` checks
# the value of each one set (localdev/preflight.py) before it starts anything.


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as documented (a value, or where the default lives)
    kind: str  # int | float | port | choice | loglevel | path | paths | url | text
    scope: str  # "stack" (read by `faaspipe up`), "service", "function" (function.yaml env or shell)
    minimum: float | None = None
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    # the stack
    Setting("FAASPIPE_PORT_BASE", str(DEFAULT_PORT_BASE), "port", "stack"),
    Setting("FAASPIPE_STATE_DIR", ".faaspipe/", "path", "stack"),
    Setting("FAASPIPE_FUNCTION_DIRS", "functions/", "paths", "stack"),
    Setting("FAASPIPE_CONTRACT_DIRS", "unset: shared/contracts/ only", "paths", "stack"),
    Setting("FAASPIPE_VENVS_DIR", ".venvs/", "path", "stack"),
    Setting("FAASPIPE_KAFKA_STORAGE", "s3", "choice", "stack", choices=("s3", "memory")),
    Setting("FAASPIPE_BROKER_PARTITIONS", "4", "int", "stack", minimum=1),
    Setting("FAASPIPE_START_TIMEOUT_S", "180", "float", "stack", minimum=1),
    Setting("FAASPIPE_MAX_EVENT_BYTES", str(1024 * 1024), "int", "stack", minimum=1),
    Setting("FAASPIPE_LOG_LEVEL", "INFO", "loglevel", "stack"),
    Setting("FAASPIPE_STRICT_TYPES", "0", "choice", "stack", choices=("0", "1", "true", "false")),
    Setting("FAASPIPE_AUTH", "auto", "choice", "stack", choices=("auto", "on", "off")),
    Setting("FAASPIPE_REPLICAS_FROM", "topology", "choice", "stack", choices=("topology", "manifests")),
    Setting("FAASPIPE_ZYGOTE", "on", "choice", "stack", choices=("on", "off")),
    Setting("FAASPIPE_ZYGOTE_IDLE_S", "600", "float", "stack", minimum=0),
    Setting("FAASPIPE_AI4I_CSV", "../shared/datasets/ai4i2020.csv", "text", "stack"),
    # services (each checked for reachability by `faaspipe up`)
    Setting("FAASPIPE_MLFLOW_BACKEND_URI", "sqlite:///<state>/mlflow.db", "url", "service"),
    Setting("FAASPIPE_IDEMPOTENCY_URL", "sqlite:///<state>/idempotency.db", "url", "service"),
    Setting("FAASPIPE_IDEMPOTENCY_LEASE_S", "5", "float", "service", minimum=0.001),
    Setting("FAASPIPE_FEAST_REDIS", "unset: SQLite <state>/feast/online.db", "url", "service"),
    Setting("FAASPIPE_DATABASE_URL", "unset: SQLite files under <state>/", "url", "service"),
    # functions (function.yaml `env` wins over the shell's value)
    Setting("FAASPIPE_DATASET", "ai4i", "text", "function"),
    Setting("FAASPIPE_MEMORY_BUDGET_MB", "256", "float", "function", minimum=1),
    Setting("FAASPIPE_ENGINE", "inprocess", "choice", "function", choices=("inprocess", "dask")),
    Setting("FAASPIPE_DASK_SCHEDULER", "unset: a LocalCluster", "text", "function"),
    Setting("FAASPIPE_DASK_WORKERS", "2", "int", "function", minimum=1),
    Setting("FAASPIPE_DASK_THREADS", "1", "int", "function", minimum=1),
    Setting("FAASPIPE_DASK_MIN_BYTES", str(64 * 1024 * 1024), "int", "function", minimum=0),
    Setting("FAASPIPE_OBJECT_EVENTS_BUCKETS", "landing", "text", "function"),
    Setting("FAASPIPE_TUNE_TRIALS", "24", "int", "function", minimum=1),
    Setting("FAASPIPE_TUNE_PARALLELISM", "2", "int", "function", minimum=1),
    Setting("FAASPIPE_TUNE_MAX_SECONDS", "600", "float", "function", minimum=0),
    Setting("FAASPIPE_TUNE_PATIENCE", "8", "int", "function", minimum=0),
    Setting("FAASPIPE_TUNE_MIN_DELTA", "0.0001", "float", "function", minimum=0),
    Setting("FAASPIPE_TUNE_WATCHDOG_S", "15", "float", "function", minimum=0),
    Setting(
        "FAASPIPE_TUNE_PRUNER", "none", "choice", "function", choices=("none", "median", "successive_halving")
    ),
    Setting("FAASPIPE_TUNE_PRUNER_REPORT_EVERY", "20", "int", "function", minimum=1),
    Setting("FAASPIPE_PROMOTE_TOLERANCE", "0.005", "float", "function", minimum=0),
    Setting("FAASPIPE_PROMOTE_FLOOR", "0.90", "float", "function", minimum=0),
    Setting("FAASPIPE_PROMOTE_LATENCY_BUDGET_MS", "5.0", "float", "function", minimum=0),
    Setting("FAASPIPE_PROMOTE_LATENCY_CALLS", "200", "int", "function", minimum=1),
    Setting("FAASPIPE_SERVING_ALIAS", "champion", "text", "function"),
    Setting("FAASPIPE_CHAMPION_POLL_SECONDS", "10", "float", "function", minimum=0.001),
    Setting("FAASPIPE_PREDICT_MEMORY_MB", "512", "float", "function", minimum=1),
    Setting("FAASPIPE_PREDICT_CACHE", "memory", "text", "function"),
    Setting("FAASPIPE_PREDICT_CACHE_SIZE", "10000", "int", "function", minimum=1),
    Setting("FAASPIPE_PREDICT_CACHE_TTL_S", "3600", "float", "function", minimum=1),
    Setting("FAASPIPE_PREDICTION_TOPIC", "faaspipe.predictions", "text", "function"),
    Setting("FAASPIPE_DRIFT_WINDOW_SIZE", "500", "int", "function", minimum=1),
    Setting("FAASPIPE_DRIFT_WINDOW_SECONDS", "300", "float", "function", minimum=0.001),
    Setting("FAASPIPE_DRIFT_MIN_WINDOW", "100", "int", "function", minimum=1),
    Setting("FAASPIPE_DRIFT_P_VAL", "0.05", "float", "function", minimum=0),
    Setting("FAASPIPE_PERF_WINDOW_SIZE", "500", "int", "function", minimum=1),
    Setting("FAASPIPE_PERF_MIN_LABELLED", "100", "int", "function", minimum=1),
    Setting("FAASPIPE_PERF_TOLERANCE", "0.05", "float", "function", minimum=0),
    Setting("FAASPIPE_PERF_F1_TOLERANCE", "0.15", "float", "function", minimum=0),
    Setting("FAASPIPE_MONITOR_KEEP_PREDICTIONS", "100000", "int", "function", minimum=1),
    Setting("FAASPIPE_PRODUCTION_INGEST_WAIT_S", "60", "float", "function", minimum=0),
    Setting("FAASPIPE_PRODUCTION_UDI_BASE", "10000000", "int", "function", minimum=1),
    Setting("FAASPIPE_RETRAIN_COOLDOWN_SECONDS", "600", "float", "function", minimum=0),
    Setting("FAASPIPE_RETRAIN_MAX_IN_FLIGHT_SECONDS", "7200", "float", "function", minimum=0),
    Setting("FAASPIPE_RETRAIN_PRODUCTION_ROWS", "20000", "int", "function", minimum=0),
    Setting("FAASPIPE_RETRAIN_MIN_PRODUCTION_ROWS", "300", "int", "function", minimum=1),
    Setting("FAASPIPE_RETRAIN_HOLDOUT_FRACTION", "0.25", "float", "function", minimum=0.01),
)

# Set by the platform for every function replica (StackConfig.function_env); not user settings.
PLATFORM_SET = (
    "FAASPIPE_KAFKA_BOOTSTRAP",
    "FAASPIPE_S3_ENDPOINT",
    "FAASPIPE_S3_ACCESS_KEY",
    "FAASPIPE_S3_SECRET_KEY",
    "FAASPIPE_BROKER_TOPIC",
    "FAASPIPE_FUNCTION_URL_TEMPLATE",
    "FAASPIPE_FUNCTION",
    "K_SINK",
    "MLFLOW_TRACKING_URI",
    "FAASPIPE_AUTH_TOKEN_DIR",
)
