"""Bounded memory (integration): a big file is ingested and materialised within the memory
budget (``FAASPIPE_MEMORY_BUDGET_MB``), measured on the replicas' processes, with exact counts.

A dedicated small stack (object events, ingest, materialise, chain recorder) runs with a budget
of ``BUDGET_MB``. A small file first brings the replicas to their resting size after a job;
then each replica's peak RSS is reset (``/proc/<pid>/clear_refs``), the big file is dropped,
and the peak (``VmHWM``) above the resting RSS must stay within the budget.
Timings are in bench/scale.py, not here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import urllib3

from localdev.datagen import generate
from shared import layout, memory
from tests.conftest import REPO, TEST_PORT_BASE, Stack, running_stack, wait_until

BUDGET_MB = 96
BIG_ROWS = 300_000
BAD_ROWS = (10, 150_000, 299_990)  # 0-based rows given an unknown Type: rejected, file accepted
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fns = tmp_path_factory.mktemp("memory-functions")
    for folder in ("object_events", "ingest", "materialise"):
        (fns / folder).symlink_to(REPO / "functions" / folder)
    (fns / "brokers.yaml").symlink_to(REPO / "functions" / "brokers.yaml")
    (fns / "chain_recorder").symlink_to(REPO / "tests" / "functions" / "chain_recorder")
    saved = os.environ.get("FAASPIPE_MEMORY_BUDGET_MB")
    os.environ["FAASPIPE_MEMORY_BUDGET_MB"] = str(BUDGET_MB)  # the replicas inherit it
    try:
        with running_stack(
            tmp_path_factory.mktemp("memory-state"), TEST_PORT_BASE + 3700, str(fns), "memory"
        ) as stack:
            yield stack
    finally:
        if saved is None:
            os.environ.pop("FAASPIPE_MEMORY_BUDGET_MB", None)
        else:
            os.environ["FAASPIPE_MEMORY_BUDGET_MB"] = saved


def records(stack: Stack, trigger: str) -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url("chain-recorder") + "records")
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == trigger]


def drop_and_follow(stack: Stack, path: Path, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Drop ``path`` into landing; its dataset.ingested and features.materialised events."""
    key = f"ai4i/tests/{uuid.uuid4().hex[:8]}/{path.name}"
    stack.s3().fput_object(layout.LANDING, key, str(path), content_type="text/csv")
    ingested = wait_until(
        lambda: [
            r for r in records(stack, "chain-dataset-ingested") if r["data"]["source_uri"].endswith(key)
        ],
        timeout=timeout,
        what=f"dataset.ingested for {key}",
    )[0]["data"]
    version = ingested["version"]
    materialised = wait_until(
        lambda: [r for r in records(stack, "chain-features-materialised") if r["data"]["version"] == version],
        timeout=timeout,
        what=f"features.materialised for {version}",
    )[0]["data"]
    return ingested, materialised


def replicas(stack: Stack, function: str) -> list[int]:
    """The pids of ``function``'s replicas on this stack: each replica's server and its worker
    (from the supervisor's status: a replica forked from a zygote keeps the zygote's
    ``/proc/PID/environ``, so the environment cannot name it)."""
    status = json.loads(stack.cli("status", "--json").stdout)["functions"][function]
    found = []
    for replica in status["replicas"]:
        if replica["pid"] and replica["state"] == "ready":
            pid = int(replica["pid"])
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            found += [pid, *map(int, children)]
    return found


def csv_file(directory: Path, rows: int, start_udi: int, bad: tuple[int, ...] = ()) -> Path:
    frame = pd.DataFrame(generate(rows, seed=41, start_udi=start_udi))
    frame.loc[list(bad), "Type"] = "Q"
    path = directory / f"readings-{rows}.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_big_file_is_ingested_and_materialised_within_the_memory_budget(
    budget_stack: Stack, tmp_path: Path
) -> None:
    drop_and_follow(budget_stack, csv_file(tmp_path, 2_000, 1), timeout=120)  # to the resting size
    pids = {fn: replicas(budget_stack, fn) for fn in ("ingest", "materialise")}
    assert all(pids.values()), pids
    resting = {(fn, pid): memory.rss_mb(pid) for fn, group in pids.items() for pid in group}
    for _, pid in resting:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    big = csv_file(tmp_path, BIG_ROWS, 10_000_001, BAD_ROWS)

    ingested, materialised = drop_and_follow(budget_stack, big, timeout=400)

    assert (ingested["rows_in"], ingested["rows_rejected"], ingested["rows_written"]) == (
        BIG_ROWS,
        len(BAD_ROWS),
        BIG_ROWS - len(BAD_ROWS),
    )
    assert materialised["rows"] == BIG_ROWS - len(BAD_ROWS)
    growth = {f"{fn}/{pid}": round(memory.peak_rss_mb(pid) - rest) for (fn, pid), rest in resting.items()}
    after = {f"{fn}/{pid}": round(memory.rss_mb(pid) - rest) for (fn, pid), rest in resting.items()}
    print(f"file {big.stat().st_size / 2**20:.0f} MiB; peak above resting (MiB): {growth}; after: {after}")
    assert max(growth.values()) <= BUDGET_MB, growth
    assert max(after.values()) <= BUDGET_MB / 2, after  # given back after the job
