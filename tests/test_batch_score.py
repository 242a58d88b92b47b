"""Batch scoring (functions/batch_score): chunked reading, row checks and outputs (unit), and a
file dropped under ``landing/<dataset>/score/`` scored on the real stack (integration).

The integration tests score with the champion of the test contract ``ai4i-lite``
(tests/contracts/ai4i_lite.yaml, loaded by every test stack): a fixture version registered
here, so the product contract's champion, which other modules train and promote, is left alone.
Replies are watched through the ``chain-recorder`` test function; the original
``object.created`` events through ``recorder`` (trigger ``rec-object``).
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import urllib3

from functions.batch_score.output import PREDICTION_SCHEMA, BatchWriter
from functions.batch_score.reader import UnreadableFile, open_table
from functions.batch_score.rows import FileProblem, map_columns, prepare
from functions.predict.inputs import BadInput, check_row, encode_rows
from localdev.datagen import generate
from shared import layout
from shared.cloudevents_io import CloudEvent, from_json_bytes, to_http, with_attributes
from shared.contracts import get_contract, load_contract
from tests.conftest import Stack, wait_until
from tests.fixtures_model import LITE_MODEL_NAME, TEST_CONTRACTS, publish_models

CONTRACT = get_contract("ai4i")
LITE = load_contract(TEST_CONTRACTS / "ai4i_lite.yaml")
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))
integration = pytest.mark.integration


def ai4i_frame(n: int, seed: int, **kwargs: Any) -> pd.DataFrame:
    return pd.DataFrame(generate(n, seed, **kwargs))


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def prepared_chunks(path: Path, fmt: str, chunk_rows: int, contract: Any = CONTRACT) -> list[Any]:
    table = open_table(path, fmt, chunk_rows)
    columns = map_columns(contract, table.columns)
    out, first = [], 1
    for chunk in table.chunks(columns.used):
        out.append(prepare(contract, chunk, columns, first))
        first += len(chunk)
    return out


# --------------------------------------------------------------------------- units (no stack)


def test_layout_of_files_to_score_and_their_outputs() -> None:
    assert layout.score_prefix("ai4i/") == "ai4i/score/" == layout.score_prefix("ai4i")
    assert (
        layout.batch_output("ai4i", "day/1.csv", "ab12", "report.json") == "ai4i/day/1.csv/ab12/report.json"
    )


def test_csv_is_read_in_chunks_of_at_most_chunk_rows(tmp_path: Path) -> None:
    path = write_csv(ai4i_frame(10, seed=1), tmp_path / "a.csv")
    table = open_table(path, "csv", 4)
    assert table.columns[:3] == ("UDI", "Product ID", "Type")
    sizes = [len(chunk) for chunk in table.chunks()]
    assert sizes == [4, 4, 2]
    only = next(table.chunks(["UDI", "Torque [Nm]"]))
    assert list(only.columns) == ["UDI", "Torque [Nm]"] and only["UDI"].tolist() == ["1", "2", "3", "4"]


def test_csv_cells_are_stripped_strings_and_empty_cells_null(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("UDI, Torque [Nm] \n1,  42.5 \n2,\n")
    table = open_table(path, "csv", 100)
    assert table.columns == ("UDI", "Torque [Nm]")
    (chunk,) = table.chunks()
    assert chunk["Torque [Nm]"].tolist()[0] == "42.5" and pd.isna(chunk["Torque [Nm]"].tolist()[1])


def test_parquet_is_read_by_record_batches(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    ai4i_frame(1000, seed=2).to_parquet(path, index=False, row_group_size=300)
    table = open_table(path, "parquet", 256)
    chunks = list(table.chunks(["UDI", "Type"]))
    assert all(len(c) <= 256 for c in chunks) and sum(len(c) for c in chunks) == 1000
    assert list(chunks[0].columns) == ["UDI", "Type"]


@pytest.mark.parametrize(("data", "fmt"), [(b"", "csv"), (b"PAR1 not really", "parquet")])
def test_unreadable_files_raise(tmp_path: Path, data: bytes, fmt: str) -> None:
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    with pytest.raises(UnreadableFile):
        open_table(path, fmt, 10)


def test_columns_by_source_or_canonical_name_and_the_rest_ignored() -> None:
    by_source = map_columns(
        CONTRACT, ["UDI", "Type", *(CONTRACT.column(n).source for n in CONTRACT.raw_inputs[1:])]
    )
    assert by_source.entity == "UDI" and by_source.inputs["torque_nm"] == "Torque [Nm]"
    canonical = map_columns(LITE, [*LITE.raw_inputs, "colour"])
    assert canonical.entity is None and canonical.inputs == {n: n for n in LITE.raw_inputs}
    assert canonical.used == list(LITE.raw_inputs)


def test_missing_or_doubled_inputs_are_file_problems() -> None:
    with pytest.raises(FileProblem, match="Torque") as missing:
        map_columns(LITE, ["air_temperature_k", "process_temperature_k", "rotational_speed_rpm"])
    assert (missing.value.rule, missing.value.column) == ("missing_column", "torque_nm")
    with pytest.raises(FileProblem) as doubled:
        map_columns(LITE, [*LITE.raw_inputs, "Torque [Nm]"])
    assert (doubled.value.rule, doubled.value.column) == ("duplicate_column", "torque_nm")


def test_rows_in_equals_scored_plus_rejected_with_the_json_routes_reasons(tmp_path: Path) -> None:
    frame = ai4i_frame(1000, seed=3).astype(object)
    frame.loc[3, "Torque [Nm]"] = -1.0  # row 4: below the minimum
    frame.loc[4, "Type"] = "Q"  # row 5: not a category
    frame.loc[5, "Air temperature [K]"] = None  # row 6: missing
    frame.loc[600, "Rotational speed [rpm]"] = "fast"  # row 601: not a number (second chunk)
    frame.loc[601, "Tool wear [min]"] = "inf"  # row 602: not finite
    frame.loc[602, "Product ID"] = "not checked"  # not a model input: scored
    path = write_csv(frame, tmp_path / "d.csv")
    chunks = prepared_chunks(path, "csv", 500)
    assert [c.rows_in for c in chunks] == [500, 500]
    rejected = [r for c in chunks for r in c.rejected]
    assert sum(len(c.rows) for c in chunks) + len(rejected) == 1000
    assert [(r.row, r.entity_id, r.column) for r in rejected] == [
        (4, "4", "torque_nm"),
        (5, "5", "type"),
        (6, "6", "air_temperature_k"),
        (601, "601", "rotational_speed_rpm"),
        (602, "602", "tool_wear_min"),
    ]
    assert rejected[0].reason == "row 4.torque_nm: -1.0 is below the contract minimum 0"
    assert rejected[1].reason == "row 5.type: 'Q' is not one of ['L', 'M', 'H']"
    assert rejected[2].reason == "row 6.air_temperature_k: missing value"
    assert rejected[3].reason == "row 601.rotational_speed_rpm: expected a number, got str 'fast'"
    assert rejected[4].reason == "row 602.tool_wear_min: inf is not a finite number"
    scored_rows = np.concatenate([c.rows for c in chunks])
    assert scored_rows[:4].tolist() == [1, 2, 3, 7] and 603 in scored_rows


def test_scored_rows_are_encoded_as_the_json_route_encodes_them(tmp_path: Path) -> None:
    frame = ai4i_frame(300, seed=4)
    path = tmp_path / "e.parquet"
    frame.to_parquet(path, index=False)
    (chunk,) = prepared_chunks(path, "parquet", 1000)
    assert not chunk.rejected and chunk.entity_ids[:2] == ["1", "2"]
    rename = {c.source: c.name for c in CONTRACT.columns}
    rows = [
        check_row(CONTRACT, {rename[k]: v for k, v in raw.items()}, f"r{i}")
        for i, raw in enumerate(frame.to_dict("records"))
    ]
    expected = encode_rows(CONTRACT, rows)
    assert chunk.matrix.dtype == np.float32 and np.array_equal(chunk.matrix, expected)


def test_every_rejected_row_is_one_check_row_rejects(tmp_path: Path) -> None:
    frame = ai4i_frame(200, seed=5).astype(object)
    rng = np.random.default_rng(5)
    for i in rng.choice(200, 40, replace=False):
        column = rng.choice(["Torque [Nm]", "Type", "Air temperature [K]", "Rotational speed [rpm]"])
        frame.loc[i, column] = rng.choice([-5.0, None, "x", 1e9, float("nan"), "M "])
    (chunk,) = prepared_chunks(write_csv(frame, tmp_path / "f.csv"), "csv", 1000)
    table = next(open_table(tmp_path / "f.csv", "csv", 1000).chunks())
    rename = {c.source: c.name for c in CONTRACT.columns}
    for i, raw in enumerate(table.to_dict("records")):
        row = {rename[k]: v for k, v in raw.items()}
        typed = {
            n: (row[n] if n in CONTRACT.categoricals or pd.isna(row[n]) else _number(row[n]))
            for n in CONTRACT.raw_inputs
        }
        try:
            check_row(CONTRACT, typed, "r")
            accepted = True
        except BadInput:
            accepted = False
        assert accepted == (i + 1 in chunk.rows), (i + 1, typed)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def test_writer_appends_one_row_group_per_chunk_and_a_reject_report(tmp_path: Path) -> None:
    frame = ai4i_frame(900, seed=6).astype(object)
    frame.loc[[10, 700], "Torque [Nm]"] = -3.0
    path = write_csv(frame, tmp_path / "g.csv")
    with BatchWriter(tmp_path, model_name="m", model_version="7", request_id="req-1") as writer:
        for chunk in prepared_chunks(path, "csv", 400):
            probabilities = np.linspace(0, 1, len(chunk.rows), dtype=np.float32)
            writer.write_scored(
                chunk.rows, chunk.entity_ids, probabilities, (probabilities >= 0.5).astype(np.int8)
            )
            writer.write_rejected(chunk.rejected)
    assert (writer.rows_scored, writer.rows_rejected) == (898, 2)
    parquet = pq.ParquetFile(writer.predictions_path)
    assert parquet.schema_arrow == PREDICTION_SCHEMA and parquet.num_row_groups == 3
    table = parquet.read().to_pandas()
    assert len(table) == 898 and set(table.model_version) == {"7"} and set(table.request_id) == {"req-1"}
    assert 11 not in set(table.row) and table.row.is_monotonic_increasing
    with writer.rejected_path.open(newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert [(r["row"], r["entity_id"], r["column"]) for r in rejected] == [
        ("11", "11", "torque_nm"),
        ("701", "701", "torque_nm"),
    ]
    assert dict(writer.rejected_by_column) == {"torque_nm": 2}


def test_a_file_with_a_header_only_has_no_rows_and_empty_outputs(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(",".join(c.source for c in CONTRACT.columns) + "\n")
    assert sum(c.rows_in for c in prepared_chunks(path, "csv", 10)) == 0
    with BatchWriter(tmp_path, model_name="m", model_version="1", request_id="r") as writer:
        pass
    assert pq.read_table(writer.predictions_path).num_rows == 0
    assert writer.rejected_path.read_text().splitlines() == ["row,entity_id,column,reason"]


# --------------------------------------------------------------------------- the function (integration)


def records(stack: Stack, function: str, trigger: str, subject: str | None = None) -> list[dict[str, Any]]:
    fields = {"trigger": trigger, **({"subject": subject} if subject else {})}
    resp = HTTP.request("GET", stack.config.function_url(function) + "records", fields=fields)
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == trigger]


def scored(stack: Stack, key: str) -> list[dict[str, Any]]:
    return records(stack, "chain-recorder", "chain-batch-scored", key)


def drop(stack: Stack, key: str, data: bytes, content_type: str) -> None:
    stack.s3().put_object(layout.LANDING, key, io.BytesIO(data), len(data), content_type=content_type)


def read_object(stack: Stack, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    response = stack.s3().get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def score_key(name: str, dataset: str = "ai4i-lite") -> str:
    return f"{dataset}/score/tests/{uuid.uuid4().hex[:8]}/{name}"


@pytest.fixture(scope="module")
def lite_champion(stack: Stack) -> str:
    """A fixture version of the ai4i-lite model carrying ``champion`` (batch-score asks the registry)."""
    (published,) = publish_models(stack.config.function_env(), [111], contract="ai4i-lite")
    return str(published["version"])


def lite_file(n: int, seed: int, start_udi: int) -> tuple[pd.DataFrame, list[int]]:
    """An AI4I file (all columns) with a few rows breaking the lite model's inputs; their rows."""
    frame = ai4i_frame(n, seed=seed, start_udi=start_udi).astype(object)
    bad = {
        12: ("Torque [Nm]", -1.0),
        13: ("Air temperature [K]", None),
        n // 2: ("Rotational speed [rpm]", "fast"),
        n // 2 + 1: ("Process temperature [K]", 9999.0),
        n - 1: ("Torque [Nm]", "inf"),
    }
    for index, (column, value) in bad.items():
        frame.loc[index, column] = value
    frame.loc[20, "Type"] = "Q"  # not an input of the lite model: still scored
    return frame, sorted(i + 1 for i in bad)


@integration
def test_a_10000_row_file_is_scored_with_counts_that_add_up(stack: Stack, lite_champion: str) -> None:
    frame, bad_rows = lite_file(10_000, seed=31, start_udi=900_001)
    key = score_key("readings.csv")
    drop(stack, key, frame.to_csv(index=False).encode(), "text/csv")
    (reply,) = wait_until(lambda: scored(stack, key), timeout=180, what=f"batch.scored for {key}")
    data = reply["data"]
    assert (data["rows_in"], data["rows_scored"], data["rows_rejected"]) == (10_000, 10_000 - 5, 5)
    assert data["rows_in"] == data["rows_scored"] + data["rows_rejected"]
    assert data["dataset"] == "ai4i-lite" and data["contract"] == "ai4i-lite@1"
    assert data["model_name"] == LITE_MODEL_NAME and data["model_version"] == lite_champion
    assert data["source_uri"] == f"s3://{layout.LANDING}/{key}"
    assert data["chunks"] == 3  # FAASPIPE_BATCH_CHUNK_ROWS 4096 in function.yaml
    prefix = f"s3://{layout.PREDICTIONS}/ai4i-lite/{key.removeprefix('ai4i-lite/score/')}/"
    assert all(data[k].startswith(prefix) for k in ("output_uri", "rejected_uri", "report_uri"))
    assert reply["source"] == "/faaspipe/functions/batch-score" and reply["traceparent"]

    predictions = pd.read_parquet(io.BytesIO(read_object(stack, data["output_uri"])))
    assert len(predictions) == data["rows_scored"]
    assert set(predictions.model_version) == {lite_champion} and set(predictions.model_name) == {
        LITE_MODEL_NAME
    }
    assert set(predictions.request_id) == {data["request_id"]}
    assert sorted(set(range(1, 10_001)) - set(predictions.row)) == bad_rows
    assert (predictions.entity_id == (predictions.row + 900_000).astype(str)).all()  # UDI of the row
    assert predictions.probability.between(0, 1).all() and set(predictions.label) <= {0, 1}

    rejected = list(csv.DictReader(io.StringIO(read_object(stack, data["rejected_uri"]).decode())))
    assert [int(r["row"]) for r in rejected] == bad_rows
    assert rejected[0]["column"] == "torque_nm" and "below the contract minimum" in rejected[0]["reason"]
    report = json.loads(read_object(stack, data["report_uri"]))
    assert (report["rows_in"], report["rows_scored"], report["rows_rejected"]) == (10_000, 9_995, 5)
    assert report["request_id"] == data["request_id"] and report["model_version"] == lite_champion

    time.sleep(3)  # ingest got the same object.created (before batch-score did): it must have ignored it
    uri = f"s3://{layout.LANDING}/{key}"
    for trigger in ("chain-dataset-ingested", "chain-dataset-rejected"):
        assert not [r for r in records(stack, "chain-recorder", trigger) if r["data"]["source_uri"] == uri]


@integration
def test_a_parquet_file_with_canonical_columns_is_scored(stack: Stack, lite_champion: str) -> None:
    frame = ai4i_frame(3000, seed=32).rename(columns={c.source: c.name for c in LITE.columns})
    frame = frame[["udi", *LITE.raw_inputs]].astype({"torque_nm": "float64"})
    frame.loc[[0, 2999], "torque_nm"] = -2.0
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, row_group_size=1000)
    key = score_key("readings.parquet")
    drop(stack, key, buffer.getvalue(), "application/vnd.apache.parquet")
    (reply,) = wait_until(lambda: scored(stack, key), timeout=120, what=f"batch.scored for {key}")
    data = reply["data"]
    assert (data["rows_in"], data["rows_scored"], data["rows_rejected"]) == (3000, 2998, 2)
    predictions = pd.read_parquet(io.BytesIO(read_object(stack, data["output_uri"])))
    assert predictions.row.tolist() == list(range(2, 3000))
    assert predictions.entity_id.tolist() == [str(u) for u in frame.udi[1:2999]]


@integration
def test_a_row_scores_the_same_from_a_file_as_from_a_request(stack: Stack, lite_champion: str) -> None:
    frame = ai4i_frame(50, seed=35, start_udi=930_001)
    key = score_key("same.csv")
    drop(stack, key, frame.to_csv(index=False).encode(), "text/csv")
    (reply,) = wait_until(lambda: scored(stack, key), timeout=120, what=f"batch.scored for {key}")
    predictions = pd.read_parquet(io.BytesIO(read_object(stack, reply["data"]["output_uri"])))
    instances = [
        {name: float(frame.loc[i, LITE.column(name).source]) for name in LITE.raw_inputs} for i in range(8)
    ]
    resp = HTTP.request(
        "POST",
        stack.config.function_url("predict") + "predict",
        body=json.dumps({"dataset": "ai4i-lite", "instances": instances}).encode(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-cache"},
    )
    assert resp.status == 200, resp.data
    body = json.loads(resp.data)
    assert body["model_version"] == lite_champion == reply["data"]["model_version"]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(
        predictions.probability[:8].astype(float).tolist(), rel=1e-6
    )
    assert [p["label"] for p in body["predictions"]] == predictions.label[:8].tolist()


@integration
def test_redelivery_does_not_score_the_file_twice(stack: Stack, lite_champion: str) -> None:
    frame, _ = lite_file(2000, seed=33, start_udi=920_001)
    key = score_key("twice.csv")
    drop(stack, key, frame.to_csv(index=False).encode(), "text/csv")
    (first,) = wait_until(lambda: scored(stack, key), timeout=120, what=f"batch.scored for {key}")
    assert (first["data"]["rows_in"], first["data"]["rows_rejected"]) == (2000, 5)
    output_uri = first["data"]["output_uri"]
    bucket, output_key = output_uri.removeprefix("s3://").split("/", 1)
    before = stack.s3().stat_object(bucket, output_key)
    report_before = read_object(stack, first["data"]["report_uri"])
    (original,) = wait_until(
        lambda: records(stack, "recorder", "rec-object", key), timeout=30, what="the object.created event"
    )
    event = from_json_bytes(json.dumps({k: v for k, v in original.items() if k != "trigger"}).encode())
    assert stack.post_event(event).status == 202  # the very same event (source + id)
    other = with_attributes(event, id=f"{event.get_id()}-again")
    assert stack.post_event(other).status == 202  # another event for the same object version
    replies = wait_until(
        lambda: (r := scored(stack, key)) and len(r) >= 3 and r,
        timeout=90,
        what="the re-sent events answered",
    )
    assert len({r["id"] for r in replies}) == 2  # the replayed reply keeps its id
    assert all(r["data"] == first["data"] for r in replies)  # same request id, counts, version
    after = stack.s3().stat_object(bucket, output_key)
    assert (after.etag, after.last_modified) == (before.etag, before.last_modified)
    assert read_object(stack, first["data"]["report_uri"]) == report_before


@integration
def test_a_file_without_the_models_inputs_is_rejected(stack: Stack, lite_champion: str) -> None:
    frame = ai4i_frame(100, seed=34).drop(columns=["Torque [Nm]"])
    key = score_key("no-torque.csv")
    drop(stack, key, frame.to_csv(index=False).encode(), "text/csv")
    (reply,) = wait_until(
        lambda: records(stack, "chain-recorder", "chain-batch-rejected", key),
        timeout=120,
        what=f"batch.rejected for {key}",
    )
    data = reply["data"]
    assert (data["rule"], data["column"], data["model_version"]) == (
        "missing_column",
        "torque_nm",
        lite_champion,
    )
    assert "Torque [Nm]" in data["message"]
    assert not scored(stack, key)


@integration
def test_ingest_ignores_files_to_score(stack: Stack) -> None:
    key = score_key("direct.csv", dataset="ai4i")
    event = CloudEvent(
        {
            "type": "dev.faaspipe.object.created.v1",
            "source": "s3://landing",
            "subject": key,
            "id": f"{key}@1",
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        {
            "bucket": layout.LANDING,
            "key": key,
            "size": 5,
            "etag": "x",
            "version": "1",
            "event_name": "ObjectCreated:Put",
            "origin": "s3",
        },
    )
    headers, body = to_http(event)
    resp = HTTP.request("POST", stack.config.function_url("ingest"), body=body, headers=headers)
    assert resp.status == 202 and resp.data == b""  # no reply, no error
