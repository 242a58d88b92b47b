"""The main job: run the whole ML chain on AI4I and leave a champion serving predictions.

Uploads the AI4I file (``../shared/datasets/ai4i2020.csv`` when present, else a file made by
the generator from the dataset's published rules) to the landing bucket, follows the chain's
events (ingest → materialise → tune → train → promote), and returns once the predict function
serves the promoted champion, printing what was reached and how to call it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import urllib3
from minio import Minio

from localdev.actor import cli_authorization
from localdev.config import StackConfig
from localdev.event_log import EventLog

FINAL_TYPES = {
    "dev.faaspipe.model.promoted.v1",
    "dev.faaspipe.model.rejected.v1",
    "dev.faaspipe.dataset.rejected.v1",
}
LANDING_KEY = "ai4i/ai4i2020.csv"
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))


def dataset_file() -> tuple[Path, str]:
    """The real AI4I file if ../shared has it, else a generated AI4I-style file."""
    from localdev.datagen import generate, reference_dataset_path, write_csv

    real = reference_dataset_path()
    if real is not None:
        return real, "AI4I 2020 (UCI) from ../shared/datasets"
    path = Path(tempfile.mkdtemp()) / "ai4i-generated.csv"
    write_csv(path, generate(10_000, seed=2020))
    return path, "generated AI4I-style data (../shared/datasets absent)"


def run(config: StackConfig, timeout_s: float = 1800.0, force: bool = False) -> int:
    """The main job; prints progress and how to call the champion. 0 when a champion serves.

    When a champion already serves (a second ``make up``), nothing is uploaded again unless
    ``force``: dropping the file again would start a new study, by design.
    """
    from shared.contracts import get_contract

    name = get_contract("ai4i").model_name
    if not force:
        try:
            resp = _HTTP.request(
                "GET",
                f"{config.function_url('predict')}v2/models/{name}",
                headers=cli_authorization(config),
                timeout=urllib3.Timeout(connect=2, read=5),
            )
        except urllib3.exceptions.HTTPError:
            resp = None
        if resp is not None and resp.status == 200:
            version = json.loads(resp.data).get("versions", ["?"])[0]
            print(
                f"a champion already serves: {name} version {version} at {config.function_url('predict')} "
                "(`faaspipe run --force` drops the dataset again and retrains)"
            )
            return 0
    return 0 if run_chain(config, timeout_s) is not None else 1


def run_chain(
    config: StackConfig,
    timeout_s: float = 1800.0,
    landing_key: str = LANDING_KEY,
    source: tuple[Path, str] | None = None,
) -> dict[str, object] | None:
    """Drop the AI4I file (or ``source``: a path and what it is) at ``landing_key`` (another
    contract's prefix trains that contract's model) and follow the chain until a champion
    serves; what it served, or None."""
    path, what = source or dataset_file()
    log = EventLog(config)  # start reading before the upload: nothing is missed
    s3 = Minio(
        f"127.0.0.1:{config.ports['s3']}",
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=False,
        region="us-east-1",
    )
    started = time.monotonic()
    s3.fput_object("landing", landing_key, str(path), content_type="text/csv")
    print(f"uploaded {what} to s3://landing/{landing_key}; following the pipeline ...", flush=True)
    outcome = None
    registered: dict[str, dict] = {}  # type: ignore[type-arg]
    first_seen: dict[str, float] = {}  # event type (short) -> seconds after the upload
    for event in log.events(timeout_s):
        data = event.get_data() or {}
        short = event.get_type().removeprefix("dev.faaspipe.").removesuffix(".v1")
        first_seen.setdefault(short, round(time.monotonic() - started, 2))
        print(
            f"  {time.monotonic() - started:6.1f}s  {event.get_type().removeprefix('dev.faaspipe.')}"
            f"  {_summary(event.get_type(), data)}",
            flush=True,
        )
        if event.get_type() == "dev.faaspipe.model.registered.v1":
            registered[str(data["version"])] = data.get("metrics", {})
        if event.get_type() in FINAL_TYPES:
            outcome = event
            break
    log.close()
    if outcome is None:
        print(f"the pipeline did not finish within {timeout_s:.0f}s; see `faaspipe logs`", file=sys.stderr)
        return None
    if outcome.get_type() != "dev.faaspipe.model.promoted.v1":
        print(
            f"the pipeline ended without a champion: {outcome.get_type()} {json.dumps(outcome.get_data())}",
            file=sys.stderr,
        )
        return None
    data = outcome.get_data() or {}
    name = data["model_name"]
    url = config.function_url("predict")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resp = _HTTP.request("GET", f"{url}v2/models/{name}", headers=cli_authorization(config))
        if resp.status == 200 and json.loads(resp.data).get("versions", [None])[0] == str(data["version"]):
            break
        time.sleep(0.5)
    metrics = registered.get(str(data["version"]), {})
    seconds = time.monotonic() - started
    print(
        f"\nchampion: {name} version {data['version']}  holdout ROC-AUC {metrics.get('roc_auc')}  "
        f"PR-AUC {metrics.get('pr_auc')}  F1 {metrics.get('f1')}  (file drop to serving: {seconds:.0f}s)"
    )
    print("predict:")
    print(
        f"  curl -s {url}predict -H 'content-type: application/json' -d "
        '\'{"instances": [{"type": "L", "air_temperature_k": 298.9, "process_temperature_k": 309.1, '
        '"rotational_speed_rpm": 1410, "torque_nm": 65.7, "tool_wear_min": 191}]}\''
    )
    print(f"  curl -s {url}predict -H 'content-type: application/json' -d '{{\"entities\": [42]}}'")
    print(f"  curl -s {url}v2/models/{name}/infer -H 'content-type: application/json' -d @request.json")
    return {
        "model_name": name,
        "version": str(data["version"]),
        "metrics": metrics,
        "drop_to_serving_s": seconds,
        "dataset": what,
        "first_event_s": first_seen,
    }


def _summary(event_type: str, data: dict) -> str:  # type: ignore[type-arg]
    keys = {
        "dataset.ingested": ("dataset", "version", "rows_written", "rows_rejected"),
        "dataset.rejected": ("source_uri", "quarantine_uri"),
        "features.materialised": ("feature_view", "rows", "online_store"),
        "tuning.trial.finished": ("trial_number", "score", "status"),
        "tuning.study.completed": ("study_id", "n_trials", "best_score"),
        "model.registered": ("model_name", "version", "metrics"),
        "model.promoted": ("version", "previous_version"),
        "model.rejected": ("version", "reasons"),
    }.get(event_type.removeprefix("dev.faaspipe.").removesuffix(".v1"), ())
    return " ".join(f"{k}={data[k]}" for k in keys if k in data)
