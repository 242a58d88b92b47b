"""Log every prediction as ``dev.faaspipe.prediction.logged.v1`` without slowing the response.

The request path only appends the typed event data to a bounded in-memory queue
(``put_nowait``; a full queue drops the record and counts it). One background thread turns
records into CloudEvents and hands them to a module-level kafka-python ``KafkaProducer``
(``acks=1``, ``linger_ms``) writing straight to the broker topic in the CloudEvents Kafka
binary binding — the same records the broker ingress would append. ``send`` is asynchronous;
nothing ever waits on its future, delivery outcomes are counted by callbacks.

Records are keyed (CloudEvents ``partitionkey``) by model version, and batched (``linger_ms``
100, 128 KiB batches): a model version's predictions stay in order in one partition, and few
large batches cost Tansu's S3 storage far less than many one-record ones (it reads and writes
per batch: one-record batches drained at ~1-10/s per trigger on a loaded box, batched ones at
~40/s or more).

Trade-off: predictions are logged at-most-once. A replica that dies loses what is still
queued or in the producer's buffer (up to ~``linger_ms`` + queue depth); monitoring is
statistical, so a few lost rows do not matter, while a blocked response would.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any

from kafka import KafkaProducer
from prometheus_client import Counter, Gauge

from events import PredictionLogged
from shared import tracing
from shared.cloudevents_io import to_kafka

log = logging.getLogger("faaspipe.predict.log")
logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO chatter on every (re)connect

LOGGED = Counter(
    "faaspipe_prediction_log_total",
    "Prediction log records by outcome (sent = acked by Kafka; failed = send error; dropped = queue full)",
    ["outcome"],
)
QUEUE_DEPTH = Gauge("faaspipe_prediction_log_queue_depth", "Prediction log records waiting for the producer")
SOURCE = "/faaspipe/functions/predict"


class PredictionLogger:
    """Bounded queue + one producer thread; ``log`` never blocks."""

    def __init__(self, bootstrap: str, topic: str, *, max_queue: int = 50_000, linger_ms: int = 100) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.linger_ms = linger_ms
        self._queue: queue.Queue[PredictionLogged | None] = queue.Queue(maxsize=max_queue)
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def log(self, records: list[PredictionLogged]) -> None:
        """Queue records for sending; drops (and counts) what does not fit."""
        for record in records:
            try:
                self._queue.put_nowait(record)
                LOGGED.labels("queued").inc()
            except queue.Full:
                LOGGED.labels("dropped").inc()

    def _connect(self) -> KafkaProducer:
        delay = 0.5
        while True:
            try:
                return KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks=1,
                    linger_ms=self.linger_ms,
                    batch_size=128 * 1024,
                    retries=3,
                    max_block_ms=5000,
                    client_id=f"predict-{os.getpid()}",
                )
            except Exception as exc:  # noqa: BLE001 - Kafka may be starting; records wait in the queue
                log.warning(
                    "prediction log producer: cannot connect to %s (%s); retrying", self.bootstrap, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _send(self, record: PredictionLogged) -> None:
        event = record.to_event(
            source=SOURCE,
            subject=f"{record.model_name}/{record.model_version}",
            extensions={
                "traceparent": tracing.new_traceparent(),
                "partitionkey": f"{record.model_name}/{record.model_version}",
            },
        )
        key, headers, value = to_kafka(event)
        assert self._producer is not None
        future = self._producer.send(self.topic, key=key, value=value, headers=headers)
        future.add_callback(_sent)
        future.add_errback(_failed, event.get_id())

    def _run(self) -> None:
        self._producer = self._connect()
        while True:
            record = self._queue.get()
            QUEUE_DEPTH.set(self._queue.qsize())
            if record is None:
                return
            try:
                self._send(record)
            except Exception as exc:  # noqa: BLE001 - count and go on; never stop logging
                LOGGED.labels("failed").inc()
                log.warning("prediction log: could not send record %s: %s", record.request_id, exc)

    def close(self, timeout_s: float = 3.0) -> None:
        """Flush what is queued (best effort, bounded) — called at interpreter exit."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._producer is not None:
            self._producer.flush(timeout=max(0.1, deadline - time.monotonic()))


def _sent(_metadata: Any) -> None:
    LOGGED.labels("sent").inc()


def _failed(exc: BaseException, event_id: str) -> None:
    LOGGED.labels("failed").inc()
    log.warning("prediction log: record %s failed: %s", event_id, exc)
