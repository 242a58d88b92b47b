"""Ingest: contract validation (unit) and the ingest function on the real stack (integration).

Integration tests drop generated AI4I files into the landing bucket (the SeaweedFS webhook
makes the ``object.created`` event) and watch the replies through the ``chain-recorder``
test function (tests/functions/chain_recorder).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Any

import pandas as pd
import pytest
import urllib3

from events import ObjectCreated
from functions.ingest.validation import ROWS_LISTED, offline_frame, validate, validate_bytes
from localdev.datagen import generate
from shared import layout
from shared.cloudevents_io import to_http
from shared.contracts import get_contract
from tests.conftest import Stack, wait_until

CONTRACT = get_contract("ai4i")
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
integration = pytest.mark.integration


def ai4i_frame(n: int, seed: int, **kwargs: Any) -> pd.DataFrame:
    return pd.DataFrame(generate(n, seed, **kwargs))


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


# --- validation (unit) ------------------------------------------------------------------


def test_a_generated_file_is_valid_and_gets_derived_features_and_event_time() -> None:
    frame = ai4i_frame(300, seed=1)
    result = validate_bytes(CONTRACT, csv_bytes(frame), key="ai4i/a.csv", content_type=None)
    assert (result.violations, result.rows_in, result.rows_rejected) == ([], 300, 0)
    offline = offline_frame(CONTRACT, result.valid_table())
    expected = [c.name for c in CONTRACT.columns] + list(CONTRACT.derived) + ["event_timestamp"]
    assert list(offline.columns) == expected
    row = offline.iloc[10]
    assert row.power_w == pytest.approx(row.torque_nm * row.rotational_speed_rpm * 2 * 3.141592653589793 / 60)
    assert row.temperature_diff_k == pytest.approx(row.process_temperature_k - row.air_temperature_k)
    assert row.strain_nm_min == pytest.approx(row.tool_wear_min * row.torque_nm)
    assert str(offline.event_timestamp.dtype) == "datetime64[ns, UTC]"
    assert offline.event_timestamp[0] == pd.Timestamp("2020-01-01T00:01:00Z")  # origin + UDI 1 minute
    assert offline.rotational_speed_rpm.dtype == "float64" and offline.udi.dtype == "int64"


def test_parquet_and_canonical_headers_are_accepted() -> None:
    frame = ai4i_frame(50, seed=2)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    assert validate_bytes(CONTRACT, buffer.getvalue(), key="ai4i/b", content_type=None).violations == []
    canonical = frame.rename(columns={c.source: c.name for c in CONTRACT.columns})
    assert validate(CONTRACT, canonical).violations == []


def rules(result: Any) -> dict[tuple[str, str | None], Any]:
    return {(v.rule, v.column): v for v in result.violations}


def test_file_level_rules_reject_the_whole_file() -> None:
    frame = ai4i_frame(100, seed=3).astype(object)
    frame = frame.drop(columns=["Torque [Nm]"]).assign(colour="red")
    frame.loc[7, "Air temperature [K]"] = "hot"
    frame.loc[9, "UDI"] = frame.loc[3, "UDI"]
    result = validate_bytes(CONTRACT, csv_bytes(frame), key="ai4i/c.csv", content_type="text/csv")
    found = rules(result)
    assert result.file_rejected and result.rows_written == 0
    assert {"missing_column", "extra_column", "type", "duplicate_key"} <= {rule for rule, _ in found}
    assert found[("missing_column", "torque_nm")].count == 1
    assert found[("extra_column", "colour")].count == 1
    assert found[("type", "air_temperature_k")].rows == (8,)  # 1-based data rows
    assert found[("duplicate_key", "udi")].rows == (4, 10)
    assert ("not_null", "air_temperature_k") not in found  # a bad value is a type error, not a null
    assert [v.level for v in result.ordered_violations()][:4] == ["file"] * 4


@pytest.mark.parametrize(
    ("data", "key", "rule"),
    [
        (b"", "ai4i/empty.csv", "unreadable"),
        (b"PAR1 not really", "ai4i/x.parquet", "unreadable"),
        (b"hello", "ai4i/notes.txt", "format"),
        (
            b"UDI,Product ID,Type,Air temperature [K],Process temperature [K],Rotational speed [rpm],"
            b"Torque [Nm],Tool wear [min],Machine failure,TWF,HDF,PWF,OSF,RNF\n",
            "ai4i/h.csv",
            "empty",
        ),
    ],
)
def test_unreadable_empty_or_foreign_files_are_rejected(data: bytes, key: str, rule: str) -> None:
    result = validate_bytes(CONTRACT, data, key=key, content_type=None)
    assert result.file_rejected and result.violations[0].rule == rule, result.violations


def test_row_rules_under_the_threshold_reject_rows_only() -> None:
    frame = ai4i_frame(1000, seed=4).astype(object)
    frame.loc[5, "Torque [Nm]"] = -1.0  # range
    frame.loc[6, "Type"] = "X"  # allowed values
    frame.loc[7, "Product ID"] = "Z12"  # pattern
    frame.loc[8, "Machine failure"] = None  # not null
    frame.loc[9, "TWF"] = None  # nullable: fine
    result = validate_bytes(CONTRACT, csv_bytes(frame), key="ai4i/d.csv", content_type=None)
    found = rules(result)
    assert not result.file_rejected
    assert found[("range", "torque_nm")].rows == (6,)
    assert found[("allowed_values", "type")].rows == (7,)
    assert found[("pattern", "product_id")].rows == (8,)
    assert found[("not_null", "machine_failure")].rows == (9,)
    assert (result.rows_in, result.rows_rejected, result.rows_written) == (1000, 4, 996)
    assert result.rejected_source_rows()["UDI"].tolist() == ["6", "7", "8", "9"]
    assert 10 in result.valid_table().udi.tolist() and 6 not in result.valid_table().udi.tolist()


def test_too_many_bad_rows_reject_the_file_and_reports_cap_row_lists() -> None:
    frame = ai4i_frame(4000, seed=5)
    frame.loc[::20, "Torque [Nm]"] = -3.0  # 5 % > max_rejected_fraction (1 %)
    result = validate_bytes(CONTRACT, csv_bytes(frame), key="ai4i/e.csv", content_type=None)
    assert result.file_rejected and result.rows_rejected == 200
    first, *_ = result.ordered_violations()
    assert first.rule == "max_rejected_fraction"
    report = rules(result)[("range", "torque_nm")].to_report()
    assert report["count"] == 200 and len(report["rows"]) == ROWS_LISTED and report["rows_truncated"]
    assert report["rows"][:3] == [1, 21, 41]


# --- the ingest function (integration) --------------------------------------------------


def chain_records(stack: Stack, trigger: str) -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url("chain-recorder") + "records")
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == trigger]


def replies_for(stack: Stack, trigger: str, key: str) -> list[dict[str, Any]]:
    uri = f"s3://{layout.LANDING}/{key}"
    return [r for r in chain_records(stack, trigger) if r["data"]["source_uri"] == uri]


def drop(stack: Stack, key: str, data: bytes, content_type: str = "text/csv") -> None:
    stack.s3().put_object(layout.LANDING, key, io.BytesIO(data), len(data), content_type=content_type)


def exists(stack: Stack, bucket: str, key: str) -> bool:
    return any(o.object_name == key for o in stack.s3().list_objects(bucket, prefix=key))


def read_json(stack: Stack, bucket: str, key: str) -> Any:
    response = stack.s3().get_object(bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def read_parquet(stack: Stack, bucket: str, key: str) -> pd.DataFrame:
    response = stack.s3().get_object(bucket, key)
    try:
        return pd.read_parquet(io.BytesIO(response.read()))
    finally:
        response.close()
        response.release_conn()


def unique_key(name: str) -> str:
    return f"ai4i/tests/{uuid.uuid4().hex[:8]}/{name}"


@integration
def test_a_valid_file_is_ingested_into_the_offline_store(stack: Stack) -> None:
    key = unique_key("valid.csv")
    drop(stack, key, csv_bytes(ai4i_frame(800, seed=21, start_udi=700_001)))
    (reply,) = wait_until(
        lambda: replies_for(stack, "chain-dataset-ingested", key),
        timeout=90,
        what=f"dataset.ingested for {key}",
    )
    data = reply["data"]
    assert (data["rows_in"], data["rows_written"], data["rows_rejected"]) == (800, 800, 0)
    assert data["dataset"] == "ai4i" and data["contract"] == "ai4i@1" and len(data["version"]) == 16
    assert data["event_time_min"] == "2021-05-01T02:41:00Z"  # 2020-01-01 + 700,001 minutes
    offline_key = layout.offline_data("ai4i", data["version"])
    assert data["offline_uri"] == f"s3://{layout.FEATURES}/{offline_key}"
    frame = read_parquet(stack, layout.FEATURES, offline_key)
    assert len(frame) == 800 and {"power_w", "event_timestamp", "udi"} <= set(frame.columns)
    assert exists(stack, layout.LANDING, key)  # accepted files stay in landing


@integration
def test_a_file_missing_a_column_is_quarantined_with_its_report(stack: Stack) -> None:
    key = unique_key("no-torque.csv")
    data = csv_bytes(ai4i_frame(300, seed=22).drop(columns=["Torque [Nm]"]))
    drop(stack, key, data)
    (reply,) = wait_until(
        lambda: replies_for(stack, "chain-dataset-rejected", key),
        timeout=90,
        what=f"dataset.rejected for {key}",
    )
    file_key, report_key = layout.quarantined(key)
    reasons = reply["data"]["reasons"]
    assert reasons[0]["rule"] == "missing_column" and reasons[0]["column"] == "torque_nm"
    assert reply["data"]["quarantine_uri"] == f"s3://{layout.QUARANTINE}/{file_key}"
    assert reply["data"]["report_uri"] == f"s3://{layout.QUARANTINE}/{report_key}"
    report = read_json(stack, layout.QUARANTINE, report_key)
    assert report["decision"] == "rejected" and report["rows_in"] == 300
    assert report["violations"][0]["rule"] == "missing_column"
    assert exists(stack, layout.QUARANTINE, file_key)
    wait_until(
        lambda: not exists(stack, layout.LANDING, key), timeout=10, what="the original removed from landing"
    )
    assert not replies_for(stack, "chain-dataset-ingested", key)


@integration
def test_five_percent_out_of_range_torque_rejects_the_file(stack: Stack) -> None:
    key = unique_key("bad-torque.csv")
    frame = ai4i_frame(2000, seed=23)
    frame.loc[::20, "Torque [Nm]"] = -7.5
    data = csv_bytes(frame)
    drop(stack, key, data)
    (reply,) = wait_until(
        lambda: replies_for(stack, "chain-dataset-rejected", key),
        timeout=90,
        what=f"dataset.rejected for {key}",
    )
    assert (reply["data"]["rows_in"], reply["data"]["rows_rejected"]) == (2000, 100)
    by_rule = {r["rule"]: r for r in reply["data"]["reasons"]}
    assert by_rule["range"]["column"] == "torque_nm" and by_rule["range"]["count"] == 100
    assert "max_rejected_fraction" in by_rule
    report = read_json(stack, layout.QUARANTINE, layout.quarantined(key)[1])
    range_violation = next(v for v in report["violations"] if v["rule"] == "range")
    assert range_violation["rows"][:3] == [1, 21, 41] and range_violation["count"] == 100
    version = hashlib.sha256(data).hexdigest()[:16]
    assert not exists(stack, layout.FEATURES, layout.offline_data("ai4i", version))


@integration
def test_a_few_bad_rows_are_quarantined_and_the_rest_ingested(stack: Stack) -> None:
    key = unique_key("few-bad.csv")
    frame = ai4i_frame(1000, seed=24, start_udi=710_001).astype(object)
    frame.loc[[3, 500], "Type"] = "Q"
    drop(stack, key, csv_bytes(frame))
    (reply,) = wait_until(
        lambda: replies_for(stack, "chain-dataset-ingested", key),
        timeout=90,
        what=f"dataset.ingested for {key}",
    )
    data = reply["data"]
    assert (data["rows_in"], data["rows_written"], data["rows_rejected"]) == (1000, 998, 2)
    file_key, report_key = layout.quarantined(key)
    report = read_json(stack, layout.QUARANTINE, report_key)
    assert (
        report["decision"] == "accepted_with_rejected_rows" and report["dataset_version"] == data["version"]
    )
    assert report["violations"][0]["rows"] == [4, 501]
    rejected = stack.s3().get_object(layout.QUARANTINE, file_key).read().decode()
    assert rejected.count("\n") == 3 and ",Q," in rejected  # header + the two rejected rows


@integration
def test_the_same_object_event_twice_makes_one_dataset_version(stack: Stack) -> None:
    key = unique_key("twice.csv")
    data = csv_bytes(ai4i_frame(400, seed=25, start_udi=720_001))
    drop(stack, key, data)
    (first,) = wait_until(
        lambda: replies_for(stack, "chain-dataset-ingested", key),
        timeout=90,
        what=f"dataset.ingested for {key}",
    )
    version = first["data"]["version"]
    stat = stack.s3().stat_object(layout.LANDING, key)
    created = ObjectCreated(
        bucket=layout.LANDING,
        key=key,
        size=len(data),
        etag=stat.etag,
        version="again",
        content_type="text/csv",
        event_name="ObjectCreated:Put",
        origin="s3",
    )
    event = created.to_event(source="s3://landing", subject=key, id=f"{key}@again")
    for _ in range(2):  # the same event twice, then the same object under another event id
        assert stack.post_event(event).status == 202
    assert stack.post_event(created.to_event(source="s3://landing", subject=key)).status == 202
    replies = wait_until(
        lambda: (
            (r := replies_for(stack, "chain-dataset-ingested", key)) and len({x["id"] for x in r}) >= 3 and r
        ),
        timeout=90,
        what="the re-sent events answered",
    )
    assert {r["data"]["version"] for r in replies} == {version}
    assert len({r["data"]["checksum"] for r in replies}) == 1
    versions = {
        o.object_name.split("/")[2]
        for o in stack.s3().list_objects(layout.FEATURES, prefix="offline/ai4i/", recursive=True)
    }
    assert f"version={version}" in versions


@integration
def test_keys_without_a_contract_are_ignored(stack: Stack) -> None:
    created = ObjectCreated(
        bucket=layout.LANDING,
        key="elsewhere/readme.txt",
        size=5,
        etag="x",
        version="1",
        event_name="ObjectCreated:Put",
        origin="s3",
    )
    event = created.to_event(source="s3://landing", subject=created.key)
    headers, body = to_http(event)
    resp = HTTP.request("POST", stack.config.function_url("ingest"), body=body, headers=headers)
    assert resp.status == 202 and resp.data == b""  # no reply, no error
