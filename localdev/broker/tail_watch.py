"""Wake idle triggers when their topic grows, so an idle trigger costs no fetches.

Kafka answers a consumer's fetch at the log end by holding it until data arrives
(``fetch.max.wait.ms`` is only an upper bound), so an idle Knative trigger costs nothing on
the cluster. Tansu holds a group consumer's fetch for the whole wait even when a record
arrives meanwhile, so a trigger's delivery latency is its fetch wait, and an idle trigger
polling at 20 ms costs about 3 % of a core in kafka-python: ~40 triggers kept the
dispatcher process at one whole core while nothing happened.

Instead, one :class:`TopicWatcher` per topic reads the topic's tail without a group (a
single cheap reader) and counts every batch of new records in ``generation``. A trigger
that found nothing for a while parks: it pauses its partitions and waits until the
generation moves past what it saw before its last empty fetch, then fetches again. The
trigger's own consumer group, offsets and lag are untouched (KEDA reads them as before);
only when it fetches changes. A parked trigger also fetches every ``PARK_MAX_S`` anyway, so
a missed wake costs latency, never an event.
"""

from __future__ import annotations

import logging
import threading

from kafka import TopicPartition

from shared.kafka_offsets import offsets_consumer

log = logging.getLogger("faaspipe.dispatcher")

WATCH_FETCH_WAIT_MS = 20  # the watcher's own fetch wait: what waking a parked trigger adds
PARK_MAX_S = 5.0  # a parked trigger fetches at least this often (safety net, not the signal)


class TopicWatcher(threading.Thread):
    """Follows one topic's tail; ``generation`` counts the polls that brought new records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name=f"tail-watch-{topic}", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.generation = 0
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[threading.Event] = set()
        self.error: str | None = None

    def subscribe(self, wake: threading.Event) -> None:
        with self._lock:
            self._waiters.add(wake)

    def unsubscribe(self, wake: threading.Event) -> None:
        with self._lock:
            self._waiters.discard(wake)

    def _bump(self) -> None:
        with self._lock:
            self.generation += 1
            waiters = list(self._waiters)
        for wake in waiters:
            wake.set()

    def run(self) -> None:
        consumer = None
        try:
            consumer = offsets_consumer(
                self.bootstrap,
                client_id=f"faaspipe-tail-{self.topic}",
                fetch_max_wait_ms=WATCH_FETCH_WAIT_MS,
                max_partition_fetch_bytes=64 * 1024,  # only "something arrived" matters
            )
            partitions = [
                TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or [])
            ]
            consumer.assign(partitions)
            consumer.seek_to_end()
            while not self.stop_event.is_set():
                if consumer.poll(timeout_ms=100):
                    self._bump()
        except Exception as exc:  # noqa: BLE001 - triggers fall back to fetching every PARK_MAX_S
            log.exception(
                "tail watcher of %s failed; idle triggers fetch every %.1f s", self.topic, PARK_MAX_S
            )
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if consumer is not None:
                consumer.close(autocommit=False)

    def stop(self) -> None:
        self.stop_event.set()
