"""The ML chain on the Dask engine, on the real stack: a file with bad rows dropped in landing →
ingest validates it on a local dask.distributed cluster (same contract checks: counts and
quarantine report equal to the in-process validation of the same bytes) → materialise → tune
(trials still fan out on Kafka partitions) → train with xgboost.dask → a promoted champion.

A dedicated small stack (``FAASPIPE_TEST_PORT_BASE + 4000``) whose ingest and train replicas run
with ``FAASPIPE_ENGINE=dask`` (a LocalCluster of 2 workers x 1 thread each, no size threshold).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import yaml

from functions.ingest.validation import validate_bytes
from functions.tune.study import study_id_for
from localdev.datagen import generate
from localdev.event_log import EventLog
from shared import layout
from shared.cloudevents_io import CloudEvent
from shared.contracts import get_contract
from tests.conftest import REPO, TEST_PORT_BASE, Stack, running_stack
from tests.test_ml_e2e import MODEL, is_type, registry_champion, wait_for_event

pytestmark = pytest.mark.integration
PORT_BASE = TEST_PORT_BASE + 4000
CONTRACT = get_contract("ai4i")
DASK = {
    "FAASPIPE_ENGINE": "dask",
    "FAASPIPE_DASK_MIN_BYTES": "0",
    "FAASPIPE_DASK_WORKERS": "2",
    "FAASPIPE_DASK_THREADS": "1",
}
ENV = {
    "ingest": DASK,
    "train": DASK,
    "tune": {"FAASPIPE_TUNE_TRIALS": "4", "FAASPIPE_TUNE_PARALLELISM": "2", "FAASPIPE_TUNE_PATIENCE": "0"},
    "promote": {"FAASPIPE_PROMOTE_LATENCY_BUDGET_MS": "1000", "FAASPIPE_PROMOTE_FLOOR": "0.5"},
}
LINKED = ("object_events", "materialise", "trial", "predict")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("engine-functions")
    for folder, env in ENV.items():
        doc = yaml.safe_load((REPO / "functions" / folder / "function.yaml").read_text())
        doc["env"] = {**doc.get("env", {}), **env}
        (root / folder).mkdir()
        (root / folder / "function.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for folder in LINKED:
        (root / folder).symlink_to(REPO / "functions" / folder)
    with running_stack(tmp_path_factory.mktemp("engine-state"), PORT_BASE, str(root), "memory") as stack:
        yield stack


def function_logs(stack: Stack, name: str) -> str:
    """What every replica of function ``name`` logged (``logs/fn-<name>-<replica>.log``)."""
    return "".join(
        p.read_text(errors="replace") for p in sorted((stack.state_dir / "logs").glob(f"fn-{name}-*.log"))
    )


def file_with_bad_rows() -> bytes:
    f = pd.DataFrame(generate(4000, 11)).astype(object)
    f.loc[list(range(10, 4000, 400)), "Torque [Nm]"] = -1.0
    f.loc[[33, 2500], "Type"] = "X"
    return f.to_csv(index=False).encode()


def counts(violations: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(x["rule"], x["column"], x["level"], x["count"], tuple(x["rows"])) for x in violations]  # type: ignore[arg-type]


@pytest.mark.timeout(1800)
def test_the_chain_on_the_dask_engine_checks_the_contract_and_gets_a_champion(stack: Stack) -> None:
    seen: list[CloudEvent] = []
    log = EventLog(stack.config)
    key = f"ai4i/engine-{uuid.uuid4().hex[:8]}.csv"
    body = file_with_bad_rows()
    stack.s3().put_object("landing", key, io.BytesIO(body), len(body), content_type="text/csv")

    ingested = wait_for_event(
        log,
        lambda e: is_type(e, "dataset.ingested") and e.get_data()["source_uri"].endswith(key),
        600,
        "dataset.ingested",
        seen,
    )
    expected = validate_bytes(CONTRACT, body, key=key, content_type="text/csv")  # in process
    data = ingested.get_data()
    assert (data["rows_in"], data["rows_rejected"], data["rows_written"]) == (
        expected.rows_in,
        expected.rows_rejected,
        expected.rows_written,
    )
    assert data["rows_rejected"] >= 12
    _, report_key = layout.quarantined(key)
    report = json.loads(stack.s3().get_object(layout.QUARANTINE, report_key).read())
    assert report["decision"] == "accepted_with_rejected_rows"
    assert counts(report["violations"]) == counts([x.to_report() for x in expected.ordered_violations()])
    assert "validated on the Dask engine" in function_logs(stack, "ingest")

    version = data["version"]
    materialised = wait_for_event(
        log,
        lambda e: is_type(e, "features.materialised") and e.get_data()["version"] == version,
        300,
        "features.materialised",
        seen,
    )
    study_id = study_id_for(
        materialised.get_data()["dataset"], version, str(materialised.get_source()), materialised.get_id()
    )
    study = wait_for_event(
        log,
        lambda e: is_type(e, "tuning.study.completed") and e.get_data()["study_id"] == study_id,
        900,
        "study.completed",
        seen,
    )
    trials = [e for e in seen if is_type(e, "tuning.trial.finished") and e.get_data()["study_id"] == study_id]
    assert len({t.get_data()["trial_number"] for t in trials}) >= study.get_data()["n_trials"]
    registered = wait_for_event(
        log,
        lambda e: is_type(e, "model.registered") and e.get_data()["study_id"] == study_id,
        600,
        "model.registered",
        seen,
    )
    assert registered.get_data()["metrics"]["roc_auc"] > 0.8
    assert "on the Dask engine" in function_logs(stack, "train")
    reg_version = registered.get_data()["version"]
    decision = wait_for_event(
        log,
        lambda e: is_type(e, "model.promoted", "model.rejected") and e.get_data()["version"] == reg_version,
        600,
        "a promotion decision",
        seen,
    )
    assert is_type(decision, "model.promoted"), decision.get_data()
    assert registry_champion(stack) == str(reg_version)
    assert decision.get_data()["model_name"] == MODEL
