"""The local autoscaler: applies KEDA's and Knative's decisions to real processes.

Per function, every ``pollingInterval``: KEDA's decision (``localdev/keda``) over its
triggers' lag, and the KPA's over the request concurrency the gateway measured; the higher
count wins. Scaling up starts replica processes; scaling down drains the newest ones.

The lag is each trigger's backlog: the events its filters match that are not delivered
yet, exact while its dispatcher keeps up, and KEDA's raw consumer-group lag (every
unconsumed record of the topic, with all of KEDA's per-partition rules) while the
dispatcher is saturated. On the cluster KEDA reads the raw lag, but its decision scales
the trigger's dispatcher, not the function; applied here to function replicas, the raw
lag woke ``predict`` (minReplicaCount 0) for other functions' events and held a second
``trial`` behind a long delivery (measured in the CI run of this change): see README.
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
from kafka import KafkaAdminClient, KafkaConsumer

from localdev.gateway import Gateway
from localdev.keda.executor import Bounds, HpaState, decide
from localdev.keda.lag import PartitionOffsets, TriggerLag, backlog_lag, total_lag
from localdev.scaling_policy import ScaleState, kpa_desired
from shared.kafka_offsets import group_lag, offsets_consumer
from shared.topology import Function, Trigger

log = logging.getLogger("faaspipe.autoscaler")


@dataclass
class FunctionScaling:
    function: Function
    hpa: HpaState = field(default_factory=HpaState)
    kpa: ScaleState = field(default_factory=ScaleState)
    previous: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)  # excludePersistentLag
    next_poll: float = 0.0
    lag: dict[str, TriggerLag] = field(default_factory=dict)
    desired: int = 0
    last_event: str = ""
    last_event_at: float | None = None
    reason: str = ""  # why the latest poll wants ``desired`` (also when nothing changed)
    rule: str = ""  # the rule behind it: threshold, cap, activation, cooldown, stabilisation, min, kpa
    last_error: str = ""


class LagReader:
    """A trigger's backlog from its dispatcher (``/triggers``), and the committed and log-end
    offsets of its consumer group, what KEDA's kafka scaler reads, with Tansu's log end
    corrected (``shared/kafka_offsets.py``)."""

    def __init__(self, bootstrap: str, topic: str, dispatcher_url: str | None = None) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.dispatcher_url = dispatcher_url
        self._clients: dict[str, tuple[KafkaAdminClient, KafkaConsumer]] = {}
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=2.0))
        self._backlog: dict[str, dict[str, object]] = {}

    def refresh(self) -> None:
        """Read every trigger's backlog from the dispatcher once per autoscaler round."""
        if not self.dispatcher_url:
            return
        try:
            resp = self._http.request("GET", self.dispatcher_url + "/triggers")
            self._backlog = json.loads(resp.data) if resp.status == 200 else {}
        except (urllib3.exceptions.HTTPError, ValueError):
            self._backlog = {}

    def backlog(self, trigger: Trigger) -> int | None:
        """Matching undelivered events, exact while the dispatcher is not saturated; else None."""
        known = self._backlog.get(trigger.name)
        if known is None or known.get("saturated"):
            return None
        return int(str(known.get("active", 0)))

    def partitions(self, trigger: Trigger) -> int:
        _, consumer = self._client(trigger.name)
        return len(consumer.partitions_for_topic(self.topic_of(trigger)) or ())

    def topic_of(self, trigger: Trigger) -> str:
        return trigger.topic or self.topic

    def offsets(self, trigger: Trigger) -> list[PartitionOffsets]:
        admin, consumer = self._client(trigger.name)
        topic = self.topic_of(trigger)
        lag = group_lag(self.bootstrap, trigger.consumer_group, topic, admin=admin, consumer=consumer)
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
        self.state = {f.name: FunctionScaling(f, desired=f.scaling.min_replicas) for f in functions}
        self.gateway, self.lag_reader = gateway, lag_reader
        self.current, self.scale_to = current, scale_to
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            self.gateway.sample()
            self.lag_reader.refresh()
            now = time.monotonic()
            for fs in self.state.values():
                if now < fs.next_poll:
                    continue
                fs.next_poll = now + fs.function.scaling.polling_interval_s
                try:
                    self._decide(fs, now)
                    fs.last_error = ""
                except Exception as exc:  # noqa: BLE001 - a failed poll must not stop autoscaling
                    log.exception("autoscaling %s failed", fs.function.name)
                    fs.last_error = f"{type(exc).__name__}: {exc}"
        self.lag_reader.close()

    def _decide(self, fs: FunctionScaling, now: float) -> None:
        fn, policy = fs.function, fs.function.scaling
        current = self.current(fn.name)
        candidates: list[tuple[int, str, str]] = []
        if fn.subscriptions:
            fs.lag = {t.name: self._lag(fs, t) for t in fn.subscriptions}
            bounds = Bounds(
                policy.min_replicas,
                policy.max_replicas,
                policy.cooldown_period_s,
                policy.scale_down_stabilization_s,
            )
            keda = decide([(lag, policy.keda) for lag in fs.lag.values()], current, bounds, fs.hpa, now)
            candidates.append((keda.replicas, keda.rule, f"KEDA {keda.rule}: {keda.reason}"))
        stats = self.gateway.stats[fn.name]
        stable, panic = stats.averages(now)
        count, reason = kpa_desired(stable, panic, stats.idle_seconds(now), current, policy, fs.kpa, now)
        candidates.append((count, "kpa", f"KPA: {reason}"))
        desired, rule, reason = max(candidates, key=lambda c: c[0])
        fs.desired, fs.rule, fs.reason = desired, rule, reason
        if desired != current:
            fs.last_event = f"{current} -> {desired}: {reason}"
            fs.last_event_at = time.time()
            log.info("scale %s %s", fn.name, fs.last_event)
            self.scale_to(fn.name, desired, reason)

    def _lag(self, fs: FunctionScaling, trigger: Trigger) -> TriggerLag:
        keda = fs.function.scaling.keda
        backlog = self.lag_reader.backlog(trigger)
        if backlog is not None:
            return backlog_lag(backlog, self.lag_reader.partitions(trigger), keda)
        offsets = self.lag_reader.offsets(trigger)
        previous = fs.previous.setdefault(trigger.name, {})
        return total_lag(offsets, keda, previous, topic=self.lag_reader.topic_of(trigger))

    def status(self, name: str) -> dict[str, object]:
        fs = self.state[name]
        stats = self.gateway.stats[name]
        cold = [seconds for fn, seconds in self.gateway.cold_starts if fn == name]
        return {
            "desired": fs.desired,
            "lag": {name: lag.raw for name, lag in fs.lag.items()},
            "lag_metric": {name: lag.metric for name, lag in fs.lag.items()},
            "rule": fs.rule or None,
            "in_flight": stats.in_flight,
            "held": stats.held,
            "decision": fs.reason,
            "poll_error": fs.last_error or None,
            "last_scale_event": fs.last_event,
            "last_scale_event_at": fs.last_event_at,
            "last_cold_start_s": round(cold[-1], 3) if cold else None,
        }
