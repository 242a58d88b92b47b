"""Streamed readings on a real stack: readings -> stream-features -> Feast online store ->
predict by entity (the latest reading and its rolling aggregates); bad readings rejected with
a reason per field and never written; the rows reach the offline store as Parquet parts.

A stack of its own (stream-features, feature-server, predict, a recorder of rejections) at
``FAASPIPE_TEST_PORT_BASE + 3500``; the champion is a fixture model (``tests/fixtures_model.py``),
then, in the last test, one trained on the streamed aggregates (``tests/fixtures_stream_model.py``).
"""

from __future__ import annotations

import io
import json
import random
import statistics
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3

from events import SensorReading
from shared import layout
from shared.cloudevents_io import CloudEvent
from shared.contracts import get_contract
from tests.conftest import REPO, TEST_PORT_BASE, Stack, running_stack, wait_until
from tests.fixtures_model import promote, publish_models, wait_served
from tests.fixtures_stream_model import publish_stream_model

CONTRACT = get_contract("ai4i")
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))
SOURCE = "/tests/stream"
RECORDER_YAML = """
name: stream-recorder
description: Records sensor.reading.rejected replies for the streaming tests.
kind: http
module: tests.functions.recorder.app
environment: serving
scaling: {minReplicaCount: 1, maxReplicaCount: 1}
triggers:
  - name: rec-reading-rejected
    filters:
      - exact: {type: dev.faaspipe.sensor.reading.rejected.v1}
"""
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fns = tmp_path_factory.mktemp("stream-functions")
    for name in ("stream_features", "feature_server", "predict"):
        (fns / name).symlink_to(REPO / "functions" / name)
    (fns / "stream_recorder").mkdir()
    (fns / "stream_recorder" / "function.yaml").write_text(RECORDER_YAML)
    with running_stack(
        tmp_path_factory.mktemp("stream-state"), TEST_PORT_BASE + 3500, str(fns), "memory"
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def champion(stream_stack: Stack) -> dict[str, Any]:
    (current,) = publish_models(stream_stack.config.function_env(), [301])
    promote(stream_stack, current["version"], None)
    wait_served(stream_stack, current["version"], timeout=120)
    return current


def reading_event(entity: int, at: datetime, **values: Any) -> Any:
    reading = {
        "udi": entity,
        "type": "M",
        "air_temperature_k": 299.0,
        "process_temperature_k": 309.5,
        "rotational_speed_rpm": 1500.0,
        "torque_nm": 40.0,
        "tool_wear_min": 100.0,
        **values,
    }
    drop = [k for k, v in reading.items() if v is ...]
    for name in drop:
        del reading[name]
    event = SensorReading(dataset="ai4i", reading=reading).to_event(source=SOURCE, subject=str(entity))
    return CloudEvent({**event.get_attributes(), "time": at}, event.get_data())  # when it was taken


def post(stack: Stack, event: Any) -> None:
    resp = stack.post_event(event)
    assert resp.status == 202, resp.data


def online(stack: Stack, entities: list[int]) -> list[dict[str, Any] | None]:
    resp = HTTP.request(
        "POST",
        stack.config.function_url("feature-server") + "online",
        body=json.dumps({"dataset": "ai4i", "entities": entities}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    return json.loads(resp.data)["rows"]


def predict(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = HTTP.request(
        "POST",
        stack.config.function_url("predict") + "predict",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-cache"},
    )
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def fresh_entity() -> int:
    return random.randint(10**8, 2 * 10**8)


def test_a_prediction_by_entity_uses_the_latest_rolling_features(
    stream_stack: Stack, champion: dict[str, Any]
) -> None:
    entity = fresh_entity()
    start = datetime.now(UTC) - timedelta(minutes=5)
    torques = [20.0 + 3 * i for i in range(13)]
    events = [
        reading_event(entity, start + timedelta(seconds=i), torque_nm=t, tool_wear_min=100.0 + i)
        for i, t in enumerate(torques)
    ]
    for event in events:
        post(stream_stack, event)
    last = f"{SOURCE}/{events[-1].get_id()}"
    (row,) = wait_until(
        lambda: [r for r in online(stream_stack, [entity]) if r and r["reading_id"] == last],
        timeout=60,
        what="the last reading's features online",
    )
    window = torques[-10:]
    assert row["torque_nm"] == torques[-1] and row["window_readings"] == 10
    assert row["torque_nm_mean_10"] == pytest.approx(statistics.fmean(window))
    assert row["torque_nm_max_10"] == max(window)
    assert row["tool_wear_min_max_10"] == 112.0

    body = predict(stream_stack, {"entities": [entity]})
    assert body["model_version"] == champion["version"]
    (features,) = body["features"]
    assert features["reading_id"] == last and features["torque_nm_mean_10"] == row["torque_nm_mean_10"]
    # the score is the latest reading's: the same values sent as an instance score the same
    instance = {name: features[name] for name in CONTRACT.raw_inputs}
    assert instance["torque_nm"] == torques[-1]
    same = predict(stream_stack, {"instances": [instance]})
    assert body["predictions"] == same["predictions"]

    # a newer reading is what the next prediction sees
    newer = reading_event(entity, start + timedelta(seconds=60), torque_nm=90.0, tool_wear_min=113.0)
    post(stream_stack, newer)
    newer_id = f"{SOURCE}/{newer.get_id()}"
    wait_until(
        lambda: predict(stream_stack, {"entities": [entity]})["features"][0]["reading_id"] == newer_id,
        timeout=60,
        what="predict to see the newer reading",
    )
    features = predict(stream_stack, {"entities": [entity]})["features"][0]
    assert features["torque_nm"] == 90.0 and features["torque_nm_max_10"] == 90.0
    assert features["torque_nm_mean_10"] == pytest.approx(statistics.fmean([*torques[-9:], 90.0]))


def recorded_rejections(stack: Stack) -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url("stream-recorder") + "records")
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == "rec-reading-rejected"]


def test_bad_readings_are_rejected_with_a_reason_and_never_written(stream_stack: Stack) -> None:
    entity = fresh_entity()
    now = datetime.now(UTC)
    bad = {
        "torque": reading_event(entity, now, torque_nm=400.0),
        "type": reading_event(entity, now, type="X", rotational_speed_rpm="fast"),
        "label": reading_event(entity, now, machine_failure=1),
        "missing": reading_event(entity, now, tool_wear_min=...),
    }
    for event in bad.values():
        post(stream_stack, event)
    ids = {e.get_id(): name for name, e in bad.items()}
    records = wait_until(
        lambda: (
            got
            if len(got := [r for r in recorded_rejections(stream_stack) if r["data"]["reading_id"] in ids])
            == 4
            else None
        ),
        timeout=60,
        what="four sensor.reading.rejected replies",
    )
    reasons = {
        ids[r["data"]["reading_id"]]: {(x["field"], x["rule"]) for x in r["data"]["reasons"]} for r in records
    }
    assert reasons == {
        "torque": {("torque_nm", "max")},
        "type": {("type", "allowed_values"), ("rotational_speed_rpm", "type")},
        "label": {("machine_failure", "unknown_field")},
        "missing": {("tool_wear_min", "required")},
    }
    assert all(r["data"]["reading_source"] == SOURCE for r in records)
    # every reply came after its reading was checked and dropped: nothing reached the store
    assert online(stream_stack, [entity]) == [None]


def test_a_reading_without_a_dataset_is_refused_at_the_ingress(stream_stack: Stack) -> None:
    event = reading_event(fresh_entity(), datetime.now(UTC))
    data = {k: v for k, v in event.get_data().items() if k != "dataset"}
    resp = stream_stack.post_event(CloudEvent(event.get_attributes(), data))
    assert resp.status == 400 and b"dataset" in resp.data, resp.data


def test_streamed_rows_reach_the_offline_store(stream_stack: Stack) -> None:
    """The buffered rows are written as a Parquet part once the oldest waited
    FAASPIPE_STREAM_OFFLINE_SECONDS; readings of another entity keep arriving meanwhile (the
    flush is checked on each reading)."""
    import pyarrow.parquet as pq

    entity = fresh_entity()
    first = reading_event(entity, datetime.now(UTC), torque_nm=55.5)
    post(stream_stack, first)
    wanted = f"{SOURCE}/{first.get_id()}"
    s3 = stream_stack.s3()
    ticker = fresh_entity()

    def part_with_reading() -> dict[str, Any] | None:
        post(stream_stack, reading_event(ticker, datetime.now(UTC)))
        for obj in s3.list_objects(layout.FEATURES, prefix=layout.stream_prefix("ai4i"), recursive=True):
            response = s3.get_object(layout.FEATURES, obj.object_name)
            try:
                table = pq.read_table(io.BytesIO(response.read())).to_pylist()
            finally:
                response.close()
                response.release_conn()
            hits = [r for r in table if r["reading_id"] == wanted]
            if hits:
                return hits[0]
        return None

    row = wait_until(part_with_reading, timeout=90, interval=1.0, what="the reading in an offline part")
    assert row["udi"] == entity and row["torque_nm"] == 55.5 and row["window_readings"] == 1
    assert abs(row["event_timestamp"].replace(tzinfo=UTC) - first.get_time()) < timedelta(milliseconds=1)

    # the offline parts are the push source's batch source: a point-in-time join sees the
    # reading from its event time on, and nothing before it
    taken = first.get_time()
    script = (
        "import json, sys\n"
        "import pandas as pd\n"
        "from shared import feast_stream\n"
        "from shared.contracts import get_contract\n"
        "entity, taken = int(sys.argv[1]), pd.Timestamp(sys.argv[2])\n"
        "frame = pd.DataFrame({'udi': [entity, entity], 'event_timestamp': [taken + pd.Timedelta('1s'),"
        " taken - pd.Timedelta('1s')]})\n"
        "out = feast_stream.training_frame(get_contract('ai4i'), frame).sort_values('event_timestamp')\n"
        "print(out.to_json(orient='records', date_format='iso'))\n"
    )
    result = subprocess.run(
        [str(TRAIN_PYTHON), "-c", script, str(entity), taken.isoformat()],
        cwd=REPO,
        env={**stream_stack.env, **stream_stack.config.function_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (joined,) = json.loads(result.stdout.strip().splitlines()[-1])  # Feast's file store drops the earlier row
    assert joined["reading_id"] == wanted and joined["torque_nm_mean_10"] == 55.5
    assert joined["event_timestamp"].startswith((taken + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S"))


def test_readings_written_to_the_kafka_topic_are_streamed_too(stream_stack: Stack) -> None:
    """A sensor gateway producing to ``faaspipe.readings`` (Kafka binary binding), read by the
    function's own consumer: a good reading is online, a bad one rejected with its reason."""
    import kafka

    from shared.cloudevents_io import to_kafka

    entity = fresh_entity()
    good = reading_event(entity, datetime.now(UTC), torque_nm=61.0)
    bad = reading_event(entity, datetime.now(UTC), torque_nm=-3.0)
    producer = kafka.KafkaProducer(bootstrap_servers=stream_stack.config.kafka_bootstrap, acks="all")
    try:
        for event in (bad, good):
            key, headers, value = to_kafka(event)
            producer.send("faaspipe.readings", key=key, value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close()
    wanted = f"{SOURCE}/{good.get_id()}"
    (row,) = wait_until(
        lambda: [r for r in online(stream_stack, [entity]) if r and r["reading_id"] == wanted],
        timeout=60,
        what="the Kafka reading online",
    )
    assert row["torque_nm"] == 61.0 and row["window_readings"] == 1  # the bad one never counted
    (rejected,) = wait_until(
        lambda: [r for r in recorded_rejections(stream_stack) if r["data"]["reading_id"] == bad.get_id()],
        timeout=60,
        what="the Kafka reading's rejection",
    )
    assert [(x["field"], x["rule"]) for x in rejected["data"]["reasons"]] == [("torque_nm", "min")]


def offline_reading_ids(stack: Stack) -> set[str]:
    """The reading ids of every row in the stream view's offline parts."""
    import pyarrow.parquet as pq

    s3 = stack.s3()
    ids: set[str] = set()
    for obj in s3.list_objects(layout.FEATURES, prefix=layout.stream_prefix("ai4i"), recursive=True):
        response = s3.get_object(layout.FEATURES, obj.object_name)
        try:
            ids.update(
                pq.read_table(io.BytesIO(response.read()), columns=["reading_id"]).column(0).to_pylist()
            )
        finally:
            response.close()
            response.release_conn()
    return ids


def stream_history(stack: Stack, entity: int, torques: list[float], start: datetime) -> str:
    """Post one reading per torque (a second apart; the other inputs fixed); the last reading's id."""
    events = [reading_event(entity, start + timedelta(seconds=i), torque_nm=t) for i, t in enumerate(torques)]
    for event in events:
        post(stack, event)
    return f"{SOURCE}/{events[-1].get_id()}"


def aggregates_of(torques: list[float]) -> dict[str, float]:
    window = torques[-10:]
    return {"torque_nm_mean_10": statistics.fmean(window), "torque_nm_max_10": max(window)}


HIGH, LOW = [70.0, 70.0, 40.0], [20.0, 20.0, 40.0]  # the latest torque is the same: only the window differs


def test_a_model_trained_on_the_rolling_aggregates_scores_the_latest_ones(stream_stack: Stack) -> None:
    """Readings of 32 machines (half with a high-torque history, labelled failures) are streamed;
    a model is trained on them joined point-in-time with the stream's offline parts (the
    pipeline's ``stream_join`` and ``train_final``) and promoted; predict by entity then scores
    each machine's online aggregates, and one more reading changes what the next one scores."""
    start = datetime.now(UTC) - timedelta(minutes=10)
    labelled: list[dict[str, Any]] = []
    last_ids = []
    for i in range(32):
        entity, failing = fresh_entity(), i % 2 == 0
        last_ids.append(stream_history(stream_stack, entity, HIGH if failing else LOW, start))
        reading = reading_event(entity, start).get_data()["reading"]
        labelled.append(
            {
                **{k: v for k, v in reading.items() if k != "torque_nm"},
                "torque_nm": 40.0,
                "machine_failure": int(failing),
                "event_timestamp": (start + timedelta(minutes=5)).isoformat(),
            }
        )
    ticker = fresh_entity()

    def flushed() -> bool:
        post(stream_stack, reading_event(ticker, datetime.now(UTC)))  # the flush is checked per reading
        return set(last_ids) <= offline_reading_ids(stream_stack)

    wait_until(flushed, timeout=120, interval=1.0, what="the training readings in offline parts")
    model = publish_stream_model({**stream_stack.env, **stream_stack.config.function_env()}, labelled)
    names = CONTRACT.streaming.feature_names if CONTRACT.streaming else ()
    assert model["meta"]["features"] == [*CONTRACT.encoded_features, *names]
    promote(stream_stack, model["version"], None)
    wait_served(stream_stack, model["version"], timeout=120)

    low, high = fresh_entity(), fresh_entity()
    now = datetime.now(UTC) - timedelta(minutes=1)
    latest = {
        low: stream_history(stream_stack, low, LOW, now),
        high: stream_history(stream_stack, high, HIGH, now),
    }
    wait_until(
        lambda: (
            [r["reading_id"] if r else None for r in online(stream_stack, [low, high])]
            == [latest[low], latest[high]]
        ),
        timeout=60,
        what="both machines' last readings online",
    )
    body = predict(stream_stack, {"entities": [low, high]})
    assert body["model_version"] == model["version"]
    scored = {e: f for e, f in zip((low, high), body["features"], strict=True)}
    for entity, torques in ((low, LOW), (high, HIGH)):
        assert {k: scored[entity][k] for k in aggregates_of(torques)} == pytest.approx(aggregates_of(torques))
    p_low, p_high = (p["probability"] for p in body["predictions"])
    assert p_high > p_low  # the latest readings are identical: the window is what tells them apart

    # the scored vector is the contract's features + the online aggregates: the same values sent
    # as an instance score the same; without the aggregates an instance is refused
    def instance(features: dict[str, Any]) -> dict[str, Any]:
        return {n: features[n] for n in (*CONTRACT.raw_inputs, *names)}

    same = predict(stream_stack, {"instances": [instance(scored[low]), instance(scored[high])]})
    assert same["predictions"] == body["predictions"]
    refused = HTTP.request(
        "POST",
        stream_stack.config.function_url("predict") + "predict",
        body=json.dumps({"instances": [{n: scored[low][n] for n in CONTRACT.raw_inputs}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert refused.status == 422 and b"torque_nm_mean_10" in refused.data, refused.data

    # one more reading: the next prediction scores the new window
    newer = reading_event(low, now + timedelta(seconds=30), torque_nm=70.0)
    post(stream_stack, newer)
    newer_id = f"{SOURCE}/{newer.get_id()}"
    after = wait_until(
        lambda: (
            (b := predict(stream_stack, {"entities": [low]}))["features"][0]["reading_id"] == newer_id and b
        ),
        timeout=60,
        what="predict to score the newer reading's window",
    )
    (features,) = after["features"]
    assert {k: features[k] for k in aggregates_of([*LOW, 70.0])} == pytest.approx(aggregates_of([*LOW, 70.0]))
    assert features["window_readings"] == 4
    assert predict(stream_stack, {"instances": [instance(features)]})["predictions"] == after["predictions"]


def test_readings_produced_twice_to_the_topic_count_once(stream_stack: Stack) -> None:
    """At-least-once from the producer (a gateway that re-sends a batch): the same records twice,
    then one more reading, all keyed by the entity (one partition: read in order). When that
    last one is online its window holds each reading once."""
    import kafka

    from shared.cloudevents_io import to_kafka

    entity = fresh_entity()
    start = datetime.now(UTC)
    batch = [reading_event(entity, start + timedelta(seconds=i), torque_nm=50.0 + i) for i in range(3)]
    last = reading_event(entity, start + timedelta(seconds=10), torque_nm=60.0)
    producer = kafka.KafkaProducer(bootstrap_servers=stream_stack.config.kafka_bootstrap, acks="all")
    try:
        for event in (*batch, *batch, last):
            _, headers, value = to_kafka(event)
            producer.send("faaspipe.readings", key=str(entity).encode(), value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close()
    wanted = f"{SOURCE}/{last.get_id()}"
    (row,) = wait_until(
        lambda: [r for r in online(stream_stack, [entity]) if r and r["reading_id"] == wanted],
        timeout=60,
        what="the last Kafka reading online",
    )
    assert row["window_readings"] == 4
    assert row["torque_nm_mean_10"] == statistics.mean([50.0, 51.0, 52.0, 60.0])


def test_a_poison_reading_on_the_topic_is_dead_lettered_and_the_consumer_goes_on(stream_stack: Stack) -> None:
    """A reading every write fails on (a machine id past 64-bit integers: the contract lets it
    through, the state database cannot store it), followed on its partition by a good one: after
    the retries the poison reading is in the dead-letter topic with ``knativeerror*`` and the
    good one is online; ``dlq replay`` puts it back on the readings topic (where it fails again)."""
    import kafka

    from localdev.broker import dlq
    from shared.cloudevents_io import to_kafka

    entity = fresh_entity()
    start = datetime.now(UTC)
    poison = reading_event(2**63, start, torque_nm=45.0)
    good = reading_event(entity, start + timedelta(seconds=1), torque_nm=46.0)
    producer = kafka.KafkaProducer(bootstrap_servers=stream_stack.config.kafka_bootstrap, acks="all")
    try:
        for event in (poison, good):
            _, headers, value = to_kafka(event)
            producer.send("faaspipe.readings", key=b"same-partition", value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close()
    wanted = f"{SOURCE}/{good.get_id()}"
    wait_until(
        lambda: [r for r in online(stream_stack, [entity]) if r and r["reading_id"] == wanted],
        timeout=90,
        what="the reading after the poison one online",
    )

    def letters() -> list[dict[str, Any]]:
        return [
            d.summary() for d in dlq.list_dead_letters(stream_stack.config) if d.event.id == poison.get_id()
        ]

    (letter,) = wait_until(letters, timeout=60, interval=1.0, what="the poison reading dead-lettered")
    assert letter["code"] == "500" and letter["error"].startswith("OverflowError")
    assert letter["destination"].startswith("kafka://faaspipe.readings")
    (replayed,) = dlq.replay(stream_stack.config, {letter["ref"]})
    assert replayed.event.get("faaspipetopic") == "faaspipe.readings"
    again = wait_until(
        lambda: len(letters()) == 2 and letters(),
        timeout=90,
        interval=1.0,
        what="the replayed reading read again",
    )
    assert [d["replayed"] for d in again] == [True, False]
