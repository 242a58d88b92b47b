"""The local autoscaler: applies KEDA's and Knative's decisions to real processes, in the
two layers the cluster has.

On the cluster (eventing-kafka-broker with its KEDA autoscaler, Knative Serving) KEDA scales
a Trigger's *consumers* on the raw lag of the trigger's consumer group, and the KPA scales
the *function* on the concurrency of what those consumers push to it. localdev does the same,
every ``pollingInterval`` per function:

- per trigger, KEDA's decision (``localdev/keda``) over the group's raw lag (committed
  offsets against the true log end, every unconsumed record of the topic, matching or not,
  with all of KEDA's per-partition rules) sets the trigger's consumer count in the
  dispatcher process (``POST /triggers/<name>/consumers``); at 0 the trigger reads nothing;
- per function, the KPA's decision (``localdev/scaling_policy.py``) over the concurrency the
  gateway measured (requests and pushes alike) sets its replicas. Scaling up starts replica
  processes; scaling down drains the newest ones. A push to a function at zero is held by
  the gateway (the activator) while a replica starts.

So a backlog of other functions' events wakes a trigger's consumer, which reads and skips
them, and never a function replica; and the same backlog gives the same consumer and
replica decisions locally and on the cluster (README, "Scaling").
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from localdev.gateway import Gateway
from localdev.keda.executor import Bounds, HpaState, decide
from localdev.keda.lag import PartitionOffsets, TriggerLag, total_lag
from localdev.scaling_policy import ScaleState, kpa_desired
from shared.kafka_offsets import group_lag, offsets_consumer, true_end_offsets
from shared.topology import Function, Trigger

log = logging.getLogger("faaspipe.autoscaler")


@dataclass
class TriggerScaling:
    """What KEDA keeps for one trigger's ScaledObject, and its latest decision."""

    trigger: Trigger
    hpa: HpaState = field(default_factory=HpaState)
    previous: dict[tuple[str, int], int] = field(default_factory=dict)  # excludePersistentLag
    lag: TriggerLag | None = None
    consumers: int = 0
    desired: int = 0
    rule: str = ""  # threshold, cap, activation, cooldown, stabilisation or min
    reason: str = ""
    last_event: str = ""
    last_event_at: float | None = None


@dataclass
class FunctionScaling:
    function: Function
    kpa: ScaleState = field(default_factory=ScaleState)
    triggers: dict[str, TriggerScaling] = field(default_factory=dict)
    next_poll: float = 0.0
    desired: int = 0
    last_event: str = ""
    last_event_at: float | None = None
    reason: str = ""  # why the latest poll wants ``desired`` (also when nothing changed)
    rule: str = ""  # the KPA's, or min
    last_error: str = ""


class LagReader:
    """Each trigger's consumer count (the dispatcher's ``/triggers``), and the committed and
    log-end offsets of its consumer group, what KEDA's kafka scaler reads, with Tansu's log
    end corrected (``shared/kafka_offsets.py``) and read once per topic per round."""

    def __init__(self, bootstrap: str, topics: dict[str, str], dispatcher_url: str | None = None) -> None:
        """``topics``: the topic each trigger reads (its broker's, or a Kafka source's own)."""
        self.bootstrap, self.topics = bootstrap, topics
        self.dispatcher_url = dispatcher_url
        self._clients: dict[str, tuple[KafkaAdminClient, KafkaConsumer]] = {}
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=2.0))
        self._dispatchers: dict[str, dict[str, object]] = {}
        self._ends: dict[str, dict[TopicPartition, int]] = {}

    def refresh(self) -> None:
        """Start a round: read every trigger's consumers once, forget last round's log ends."""
        self._ends.clear()
        if not self.dispatcher_url:
            return
        try:
            resp = self._http.request("GET", self.dispatcher_url + "/triggers")
            self._dispatchers = json.loads(resp.data) if resp.status == 200 else {}
        except (urllib3.exceptions.HTTPError, ValueError):
            self._dispatchers = {}

    def consumers(self, trigger: Trigger) -> int | None:
        """The trigger's consumer count now (None when the dispatcher did not answer)."""
        known = self._dispatchers.get(trigger.name)
        return None if known is None else int(str(known.get("consumers", 0)))

    def set_consumers(self, trigger: Trigger, count: int) -> None:
        if not self.dispatcher_url:
            return
        resp = self._http.request(
            "POST",
            f"{self.dispatcher_url}/triggers/{trigger.name}/consumers",
            body=json.dumps({"consumers": count}).encode(),
            headers={"Content-Type": "application/json"},
        )
        if resp.status != 200:
            raise RuntimeError(f"dispatcher refused {count} consumers for {trigger.name}: {resp.status}")
        self._dispatchers[trigger.name] = json.loads(resp.data)

    def partitions(self, trigger: Trigger) -> int:
        _, consumer = self._client(self.topic_of(trigger))
        return len(consumer.partitions_for_topic(self.topic_of(trigger)) or ())

    def topic_of(self, trigger: Trigger) -> str:
        return self.topics[trigger.name]

    def offsets(self, trigger: Trigger) -> list[PartitionOffsets]:
        topic = self.topic_of(trigger)
        admin, consumer = self._client(topic)
        if topic not in self._ends:
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            self._ends[topic] = true_end_offsets(consumer, partitions)
        lag = group_lag(
            self.bootstrap,
            trigger.consumer_group,
            topic,
            admin=admin,
            consumer=consumer,
            ends=self._ends[topic],
        )
        return [PartitionOffsets(topic, p.partition, p.committed, p.end) for p in lag.partitions]

    def _client(self, key: str) -> tuple[KafkaAdminClient, KafkaConsumer]:
        if key not in self._clients:
            self._clients[key] = (
                KafkaAdminClient(bootstrap_servers=self.bootstrap),
                offsets_consumer(self.bootstrap),
            )
        return self._clients[key]

    def close(self) -> None:
        for admin, consumer in self._clients.values():
            with contextlib.suppress(Exception):
                admin.close()
                consumer.close()


class Autoscaler(threading.Thread):
    def __init__(
        self,
        functions: list[Function],
        gateway: Gateway,
        lag_reader: LagReader,
        current: Callable[[str], int],
        scale_to: Callable[[str, int, str], None],
    ) -> None:
        super().__init__(name="autoscaler", daemon=True)
        self.state = {
            f.name: FunctionScaling(
                f,
                desired=f.scaling.min_replicas,
                triggers={
                    t.name: TriggerScaling(
                        t, consumers=f.scaling.min_replicas, desired=f.scaling.min_replicas
                    )
                    for t in f.subscriptions
                },
            )
            for f in functions
        }
        self.gateway, self.lag_reader = gateway, lag_reader
        self.current, self.scale_to = current, scale_to
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            self.gateway.sample()
            now = time.monotonic()
            due = [fs for fs in self.state.values() if now >= fs.next_poll]
            if not due:
                continue
            self.lag_reader.refresh()
            for fs in due:
                fs.next_poll = now + fs.function.scaling.polling_interval_s
                try:
                    self._decide(fs, now)
                    fs.last_error = ""
                except Exception as exc:  # noqa: BLE001 - a failed poll must not stop autoscaling
                    log.exception("autoscaling %s failed", fs.function.name)
                    fs.last_error = f"{type(exc).__name__}: {exc}"
        self.lag_reader.close()

    def _decide(self, fs: FunctionScaling, now: float) -> None:
        for ts in fs.triggers.values():
            self._decide_consumers(fs.function, ts, now)
        fn, policy = fs.function, fs.function.scaling
        current = self.current(fn.name)
        stats = self.gateway.stats[fn.name]
        stable, panic = stats.averages(now)
        desired, reason = kpa_desired(
            stable, panic, stats.idle_seconds(now), current, policy, fs.kpa, now, fn.concurrency
        )
        fs.desired, fs.reason = desired, f"KPA: {reason}"
        fs.rule = "min" if desired == policy.min_replicas and stable == panic == 0 else "kpa"
        if desired != current:
            fs.last_event = f"{current} -> {desired}: {fs.reason}"
            fs.last_event_at = time.time()
            log.info("scale %s %s", fn.name, fs.last_event)
            self.scale_to(fn.name, desired, fs.reason)

    def _decide_consumers(self, fn: Function, ts: TriggerScaling, now: float) -> None:
        """KEDA's decision for one trigger's ScaledObject, applied to its consumer count."""
        policy, trigger = fn.scaling, ts.trigger
        current = self.lag_reader.consumers(trigger)
        if current is None:
            return  # the dispatcher is restarting: decide on its next answer
        ts.consumers = current
        offsets = self.lag_reader.offsets(trigger)
        ts.lag = total_lag(offsets, policy.keda, ts.previous, topic=self.lag_reader.topic_of(trigger))
        bounds = Bounds(
            policy.min_replicas,
            policy.max_replicas,
            policy.cooldown_period_s,
            policy.scale_down_stabilization_s,
        )
        keda = decide([(ts.lag, policy.keda)], current, bounds, ts.hpa, now)
        ts.desired, ts.rule, ts.reason = keda.replicas, keda.rule, f"KEDA {keda.rule}: {keda.reason}"
        if keda.replicas != current:
            ts.last_event = f"{current} -> {keda.replicas}: {ts.reason}"
            ts.last_event_at = time.time()
            log.info("scale trigger %s consumers %s", trigger.name, ts.last_event)
            self.lag_reader.set_consumers(trigger, keda.replicas)
            ts.consumers = keda.replicas

    def status(self, name: str) -> dict[str, object]:
        fs = self.state[name]
        stats = self.gateway.stats[name]
        cold = [seconds for fn, seconds in self.gateway.cold_starts if fn == name]
        triggers = {
            t.trigger.name: {
                "consumers": t.consumers,
                "desired": t.desired,
                "lag": t.lag.raw if t.lag else None,
                "lag_metric": t.lag.metric if t.lag else None,
                "rule": t.rule or None,
                "decision": t.reason,
                "last_scale_event": t.last_event,
                "last_scale_event_at": t.last_event_at,
            }
            for t in fs.triggers.values()
        }
        return {
            "desired": fs.desired,
            "lag": {name: t.lag.raw for name, t in fs.triggers.items() if t.lag},
            "triggers": triggers,
            "rule": fs.rule or None,
            "in_flight": stats.in_flight,
            "held": stats.held,
            "decision": fs.reason,
            "poll_error": fs.last_error or None,
            "last_scale_event": fs.last_event,
            "last_scale_event_at": fs.last_event_at,
            "last_cold_start_s": round(cold[-1], 3) if cold else None,
        }
