"""The local autoscaler: applies the KEDA/KPA decisions of scaling_policy to real processes.

Per function, every ``pollingInterval``: the true lag of each of its triggers' consumer groups
(KEDA; the function's replica count is the max over its triggers, as an HPA with several
metrics takes the max) and the request concurrency the gateway measured (KPA); the higher
count wins. Scaling up starts replica processes; scaling down drains the newest ones.
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
from localdev.scaling_policy import ScaleState, keda_desired, kpa_desired
from localdev.topology import Function, Trigger
from shared.kafka_offsets import group_lag, offsets_consumer

log = logging.getLogger("faaspipe.autoscaler")


@dataclass
class FunctionScaling:
    function: Function
    keda: ScaleState = field(default_factory=ScaleState)
    kpa: ScaleState = field(default_factory=ScaleState)
    next_poll: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    desired: int = 0
    last_event: str = ""
    last_event_at: float | None = None
    reason: str = ""  # why the latest poll wants ``desired`` (also when nothing changed)
    last_error: str = ""


class LagReader:
    """A trigger's backlog: the undelivered events its filters match.

    The group's Kafka lag counts every unconsumed event of the broker topic, also those the
    trigger's filter will skip, so an idle function would wake for unrelated traffic. While
    the dispatcher is not saturated it has read everything there is, and its count of active
    (matching, undelivered) events is exact; when it is saturated, the true Kafka lag of the
    group is used (KEDA's number, an upper bound).
    """

    def __init__(self, bootstrap: str, topic: str, dispatcher_url: str | None = None) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.dispatcher_url = dispatcher_url
        self._clients: dict[str, tuple[KafkaAdminClient, KafkaConsumer]] = {}
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=2.0))
        self._backlog: dict[str, dict[str, object]] = {}

    def refresh(self) -> None:
        """Read every dispatcher's backlog once per autoscaler round."""
        if not self.dispatcher_url:
            return
        try:
            resp = self._http.request("GET", self.dispatcher_url + "/triggers")
            self._backlog = json.loads(resp.data) if resp.status == 200 else {}
        except (urllib3.exceptions.HTTPError, ValueError):
            self._backlog = {}

    def partitions(self) -> int:
        _, consumer = self._client("_partitions")
        return len(consumer.partitions_for_topic(self.topic) or ())

    def lag(self, trigger: Trigger) -> int:
        known = self._backlog.get(trigger.name)
        if known is not None and not known.get("saturated"):
            return int(known.get("active", 0))  # type: ignore[call-overload]
        admin, consumer = self._client(trigger.name)
        return group_lag(
            self.bootstrap,
            trigger.consumer_group,
            trigger.topic or self.topic,
            admin=admin,
            consumer=consumer,
        ).total

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
        partitions = self.lag_reader.partitions()
        while not self.stop_event.wait(0.25):
            self.gateway.sample()
            self.lag_reader.refresh()
            now = time.monotonic()
            for fs in self.state.values():
                if now < fs.next_poll:
                    continue
                fs.next_poll = now + fs.function.scaling.polling_interval_s
                try:
                    self._decide(fs, partitions, now)
                    fs.last_error = ""
                except Exception as exc:  # noqa: BLE001 - a failed poll must not stop autoscaling
                    log.exception("autoscaling %s failed", fs.function.name)
                    fs.last_error = f"{type(exc).__name__}: {exc}"
        self.lag_reader.close()

    def _decide(self, fs: FunctionScaling, partitions: int, now: float) -> None:
        fn, policy = fs.function, fs.function.scaling
        current = self.current(fn.name)
        candidates: list[tuple[int, str]] = []
        if fn.subscriptions:
            fs.lag = {t.name: self.lag_reader.lag(t) for t in fn.subscriptions}
            per_trigger = []
            for trigger in fn.subscriptions:
                state = ScaleState(last_active=fs.keda.last_active, lower_since=fs.keda.lower_since)
                per_trigger.append(
                    (keda_desired(fs.lag[trigger.name], partitions, current, policy, state, now), state)
                )
            (count, reason), chosen = max(per_trigger, key=lambda item: item[0][0])
            fs.keda.last_active = max(s.last_active for _, s in per_trigger)
            fs.keda.lower_since = chosen.lower_since
            candidates.append((count, reason))
        stats = self.gateway.stats[fn.name]
        stable, panic = stats.averages(now)
        candidates.append(kpa_desired(stable, panic, stats.idle_seconds(now), current, policy, fs.kpa, now))
        desired, reason = max(candidates, key=lambda c: c[0])
        fs.desired, fs.reason = desired, reason
        if desired != current:
            fs.last_event = f"{current} -> {desired}: {reason}"
            fs.last_event_at = time.time()
            log.info("scale %s %s", fn.name, fs.last_event)
            self.scale_to(fn.name, desired, reason)

    def status(self, name: str) -> dict[str, object]:
        fs = self.state[name]
        stats = self.gateway.stats[name]
        cold = [seconds for fn, seconds in self.gateway.cold_starts if fn == name]
        return {
            "desired": fs.desired,
            "lag": fs.lag,
            "in_flight": stats.in_flight,
            "held": stats.held,
            "decision": fs.reason,
            "poll_error": fs.last_error or None,
            "last_scale_event": fs.last_event,
            "last_scale_event_at": fs.last_event_at,
            "last_cold_start_s": round(cold[-1], 3) if cold else None,
        }
