"""A trigger's dispatcher: one Kafka consumer group per trigger, delivering over HTTP.

Semantics follow the Knative Kafka broker with unordered delivery:
- events are read from the broker topic (one consumer thread per trigger); those matching
  the trigger's filters are delivered concurrently on the process's event loop, each with
  the trigger's retry policy;
- a trigger has ``consumers``, the replica count KEDA gives its consumer group on the
  cluster (eventing-kafka-broker scales a Trigger's dispatcher, not the function): the
  autoscaler sets it from the group's raw lag (``localdev/autoscaler.py``). At 0 the trigger
  reads nothing and its lag grows, as with no consumer pod; each consumer delivers up to
  ``PER_CONSUMER_IN_FLIGHT`` events at once, so one busy trigger never starves the others;
- offsets are committed only for the contiguous prefix of finished events per partition,
  so a crash re-delivers (at-least-once) and never skips;
- an event that exhausts its retries goes to the dead-letter topic with ``knativeerror*``;
- a trigger that fetched nothing for ``IDLE_BEFORE_PARK_S`` parks until its topic grows
  (``tail_watch.py``): Tansu does not hold a fetch open until data arrives as Kafka does, so
  an idle trigger would otherwise cost a fetch every ``FETCH_WAIT_MS``;
- a new trigger starts at the log end, like a Knative trigger that becomes ready: its group
  offsets are initialised before it reports ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from localdev.broker import wire
from localdev.broker.delivery import Deliverer, Outcome, dead_letter_event
from localdev.broker.protocol import REPLAY_TARGET
from localdev.broker.tail_watch import PARK_MAX_S, TopicWatcher
from shared.cloudevents_io import InvalidCloudEvent
from shared.filters import matches
from shared.kafka_offsets import offsets_consumer, true_end_offsets
from shared.topology import Trigger

log = logging.getLogger("faaspipe.dispatcher")

FETCH_WAIT_MS = 20  # what a busy trigger costs: one fetch per wait (an idle one parks)
PER_CONSUMER_IN_FLIGHT = 16  # deliveries one consumer has in flight (unordered delivery)
IDLE_BEFORE_PARK_S = 0.5  # empty fetches in a row for this long before a trigger parks
SESSION_TIMEOUT_MS = 6000  # a group join takes ~half of it; Kafka's 45 s default would stall scaling

DELIVERIES = Counter("faaspipe_trigger_deliveries_total", "Deliveries", ["trigger", "outcome"])
DELIVERY_LATENCY = Histogram(
    "faaspipe_trigger_delivery_seconds",
    "Time from ingress (event record timestamp) to acknowledged delivery",
    ["trigger"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass
class BrokerTopics:
    bootstrap: str
    topic: str
    dlq_topic: str


def initialise_group(bootstrap: str, group: str, topic: str) -> dict[int, int] | None:
    """Commit the log end for a group that has never committed; return what was set."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            raise RuntimeError(f"topic {topic} has no partitions (not created?)")
        committed = {tp: consumer.committed(tp) for tp in partitions}
        if any(c is not None and c >= 0 for c in committed.values()):
            return None
        reader = offsets_consumer(bootstrap)
        try:
            ends = true_end_offsets(reader, partitions)
        finally:
            reader.close(autocommit=False)
        consumer.assign(partitions)
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in ends.items()})
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        consumer.close(autocommit=False)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, dispatcher: TriggerDispatcher) -> None:
        self.dispatcher = dispatcher

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.dispatcher.drain(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "trigger %s: assigned %s", self.dispatcher.trigger.name, sorted(tp.partition for tp in assigned)
        )


class TriggerDispatcher(threading.Thread):
    def __init__(
        self,
        trigger: Trigger,
        subscriber_url: str,
        topics: BrokerTopics,
        deliverer: Deliverer,
        dlq_producer: KafkaProducer,
        loop: asyncio.AbstractEventLoop,
        *,
        consumers: int = 1,
        per_consumer: int = PER_CONSUMER_IN_FLIGHT,
        watcher: TopicWatcher | None = None,
    ) -> None:
        super().__init__(name=f"dispatch-{trigger.name}", daemon=True)
        self.trigger = trigger
        self.subscriber_url = subscriber_url
        self.topics = topics
        self.topic = trigger.topic or topics.topic  # a Kafka source reads its own topic
        self.deliverer = deliverer
        self.dlq_producer = dlq_producer
        self.per_consumer = per_consumer
        self.consumers = consumers  # set by the autoscaler (KEDA's decision for this trigger)
        self.loop = loop  # deliveries run here; this thread only consumes and commits
        self.stop_event = threading.Event()
        self._slot_free = threading.Event()
        self._active_lock = threading.Lock()
        self.active = 0  # matching events submitted and not yet finished
        self.saturated = False
        self.ready = threading.Event()
        self.error: str | None = None
        self._pending: dict[TopicPartition, deque[tuple[int, Future[None] | None]]] = {}
        self._consumer: KafkaConsumer | None = None
        # parking while idle (see tail_watch.py): the watcher sets _wake when the topic grows
        self.watcher = watcher
        self._wake = threading.Event()
        self._idle_since: float | None = None  # monotonic time of the first empty fetch in a row
        self.parked = False

    # --- consumer loop (only this thread touches the consumer) ---------------
    def run(self) -> None:
        try:
            initialise_group(self.topics.bootstrap, self.trigger.consumer_group, self.topic)
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.topics.bootstrap,
                group_id=self.trigger.consumer_group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=1000,
                max_poll_records=self.per_consumer,
                # Tansu answers a group consumer's fetch only when its wait runs out (measured
                # with the broker bench: 20 ms gives p50 13.6 ms at 100 events/s, 250 ms 77 ms)
                fetch_max_wait_ms=FETCH_WAIT_MS,
            )
            self._consumer.subscribe([self.topic], listener=_Rebalance(self))
            if self.watcher is not None:
                self.watcher.subscribe(self._wake)
            self.ready.set()
            while not self.stop_event.is_set():
                self._poll_once()
            self.drain(list(self._pending))
        except Exception as exc:  # noqa: BLE001 - surfaced on the broker's readiness route
            log.exception("trigger %s dispatcher failed", self.trigger.name)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.watcher is not None:
                self.watcher.unsubscribe(self._wake)
            if self._consumer is not None:
                self._consumer.close(autocommit=False)

    def _in_flight(self) -> int:
        return self.active

    @property
    def max_in_flight(self) -> int:
        return self.consumers * self.per_consumer

    def set_consumers(self, count: int) -> None:
        """Scale this trigger's consumers (0 pauses it; the group keeps its offsets)."""
        if count < 0:
            raise ValueError(f"consumers must be >= 0, got {count}")
        self.consumers = count
        self._slot_free.set()  # wake a paused loop now, not at its next tick
        self._wake.set()

    def backlog(self) -> dict[str, object]:
        """What the autoscaler reads: consumers, and matching events in flight (``active``);
        ``saturated`` when every consumer's slots are taken (or there is no consumer);
        ``parked`` while an idle trigger waits for its topic to grow (``tail_watch.py``)."""
        return {
            "consumers": self.consumers,
            "active": self.active,
            "saturated": self.saturated,
            "parked": self.parked,
        }

    def _done(self, _future: Future[None]) -> None:
        with self._active_lock:
            self.active -= 1
        self._slot_free.set()
        self._wake.set()  # a parked trigger commits what finished now

    def _poll_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        free = self.max_in_flight - self._in_flight()
        self.saturated = free <= 0
        if free <= 0:
            # Saturated or scaled to zero: keep the group alive but wait for a delivery to
            # finish or a new consumer count, not for a poll timeout (kafka-python sleeps the
            # whole timeout when every partition is paused).
            consumer.pause(*consumer.assignment())
            consumer.poll(timeout_ms=0)
            self._slot_free.wait(1.0)  # set by a finished delivery, a new count or stop
            self._slot_free.clear()
            self._commit_finished()
            return
        generation = self.watcher.generation if self.watcher is not None else 0
        consumer.resume(*consumer.paused())
        batches = consumer.poll(timeout_ms=100, max_records=free)
        if batches:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = time.monotonic()
        elif self._should_park():
            self._park(generation)
        for tp, records in batches.items():
            queue = self._pending.setdefault(tp, deque())
            for record in records:
                queue.append((record.offset, self._submit(record)))
        self._commit_finished()

    def _should_park(self) -> bool:
        """Idle long enough, with partitions assigned: the group join and rebalances make
        progress only inside ``poll``, so a member that parked before its assignment arrived
        would never get one."""
        watcher = self.watcher
        consumer = self._consumer
        return (
            watcher is not None
            and consumer is not None
            and bool(consumer.assignment())
            and watcher.error is None
            and watcher.is_alive()
            and self._idle_since is not None
            and time.monotonic() - self._idle_since >= IDLE_BEFORE_PARK_S
        )

    def _park(self, generation: int) -> None:
        """Fetch nothing until the topic grows past ``generation`` (read before the last empty
        fetch, so a record that fetch missed has already moved it), a new consumer count,
        stop, or ``PARK_MAX_S``. In-flight deliveries go on and are committed on waking."""
        consumer = self._consumer
        assert consumer is not None and self.watcher is not None
        self._wake.clear()
        if self.watcher.generation != generation or self.stop_event.is_set():
            return
        consumer.pause(*consumer.assignment())
        consumer.poll(timeout_ms=0)  # keeps the member's poll interval alive
        self.parked = True
        self._wake.wait(PARK_MAX_S)
        self.parked = False
        # fetch for a whole idle window again before parking: a fetch sent on resuming may
        # answer after the next poll returns, and pausing would throw its records away
        self._idle_since = time.monotonic()

    def _submit(self, record) -> Future[None] | None:  # type: ignore[no-untyped-def]
        try:
            event = wire.from_kafka(record.key, record.headers, record.value)
        except InvalidCloudEvent as exc:
            log.error(
                "trigger %s: skipping a record that is not a CloudEvent at %s: %s",
                self.trigger.name,
                record.offset,
                exc,
            )
            return None
        target = event.get(REPLAY_TARGET)
        if target is not None:
            if target != self.trigger.name:
                return None
            event = event.with_attributes(drop=[REPLAY_TARGET])
        elif not matches(self.trigger.filters, event.attributes):
            return None
        with self._active_lock:
            self.active += 1
        future = asyncio.run_coroutine_threadsafe(self._deliver(event, record.timestamp), self.loop)
        future.add_done_callback(self._done)
        return future

    async def _deliver(self, event: wire.WireEvent, produced_ms: int) -> None:
        outcome = await self.deliverer.deliver(
            event,
            self.subscriber_url,
            self.trigger.delivery,
            trigger=self.trigger.name,
            stop=self.stop_event,
            forward_replies=not self.trigger.is_kafka_source,
        )
        if outcome.ok:
            DELIVERIES.labels(self.trigger.name, "ok").inc()
            DELIVERY_LATENCY.labels(self.trigger.name).observe(max(0.0, time.time() - produced_ms / 1000))
            return
        if self.stop_event.is_set() and outcome.error == "dispatcher stopping":
            raise RuntimeError("dispatcher stopping: event left uncommitted for redelivery")
        await self._dead_letter(event, outcome)

    async def _dead_letter(self, event: wire.WireEvent, outcome: Outcome) -> None:
        if not self.trigger.delivery.dead_letter_sink:
            DELIVERIES.labels(self.trigger.name, "dropped").inc()
            log.error(
                "trigger %s: dropping event %s after %d attempts (no dead-letter sink): %s",
                self.trigger.name,
                event.id,
                outcome.attempts,
                outcome.error,
            )
            return
        dead = dead_letter_event(
            event, trigger=self.trigger.name, destination=self.subscriber_url, outcome=outcome
        )
        key, headers, value = wire.to_kafka(dead)
        sent = self.dlq_producer.send(self.topics.dlq_topic, key=key, value=value, headers=headers)
        await asyncio.get_running_loop().run_in_executor(None, sent.get, 30)  # rare: a thread is fine
        DELIVERIES.labels(self.trigger.name, "dead_lettered").inc()
        log.warning(
            "trigger %s: event %s dead-lettered after %d attempts: %s (%s)",
            self.trigger.name,
            event.id,
            outcome.attempts,
            outcome.status,
            outcome.error,
        )

    # --- offsets ------------------------------------------------------------
    def _commit_finished(self, only: list[TopicPartition] | None = None) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, queue in self._pending.items():
            if only is not None and tp not in only:
                continue
            last = None
            while queue and (queue[0][1] is None or queue[0][1].done()):
                offset, future = queue[0]
                if future is not None and future.exception() is not None:
                    break  # stopping mid-delivery: leave it for redelivery
                queue.popleft()
                last = offset
            if last is not None:
                offsets[tp] = OffsetAndMetadata(last + 1, "", -1)
        if offsets and self._consumer is not None:
            self._consumer.commit(offsets)

    def drain(self, partitions: list[TopicPartition], timeout_s: float = 60.0) -> None:
        """Let in-flight deliveries of ``partitions`` finish, then commit them (rebalance/stop)."""
        deadline = time.monotonic() + timeout_s
        futures = [f for tp in partitions for _, f in self._pending.get(tp, ()) if f is not None]
        done, _not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        log.debug("trigger %s: drained %d of %d deliveries", self.trigger.name, len(done), len(futures))
        self._commit_finished(partitions)
        for tp in partitions:
            self._pending.pop(tp, None)

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
        self._slot_free.set()


def start_dispatchers(
    triggers: list[Trigger],
    url_of: Callable[[Trigger], str],
    topics: BrokerTopics,
    deliverer: Deliverer,
    dlq_producer: KafkaProducer,
    loop: asyncio.AbstractEventLoop,
    consumers_of: Callable[[Trigger], int] = lambda _t: 1,
) -> list[TriggerDispatcher]:
    """One dispatcher per trigger, each starting with ``consumers_of(trigger)`` consumers (what
    KEDA creates a ScaledObject's target with: ``minReplicaCount``), and one tail watcher per
    topic they read (``tail_watch.py``): idle triggers park on it instead of fetching."""
    watchers = {
        topic: TopicWatcher(topics.bootstrap, topic) for topic in {t.topic or topics.topic for t in triggers}
    }
    dispatchers = [
        TriggerDispatcher(
            t,
            url_of(t),
            topics,
            deliverer,
            dlq_producer,
            loop,
            consumers=consumers_of(t),
            watcher=watchers[t.topic or topics.topic],
        )
        for t in triggers
    ]
    for w in watchers.values():
        w.start()
    for d in dispatchers:
        d.start()
    return dispatchers
