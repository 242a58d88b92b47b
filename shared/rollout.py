"""Progressive rollouts: the policy a contract declares and the rollout in progress.

A challenger that passes promote's offline gates does not take the ``champion`` alias at once
when its contract has a ``rollout:`` block. It takes the ``canary`` alias, and the registered
model's tag ``faaspipe.rollout`` (JSON, :class:`Rollout`) says how it is served:

* ``canary``: ``share`` of requests (chosen by a hash of the request id, so one request id
  always lands on the same side) are answered by the candidate;
* ``shadow``: every request is answered by the champion and mirrored to the candidate, whose
  answers are logged, never returned.

The monitor compares the two on live signals once ``window_s`` has passed and the candidate has
``min_requests`` (``functions/monitor/rollout.py``) and announces ``rollout.decided`` with its
evidence; promote acts on it: the champion alias moves by compare-and-set, or the canary
alias goes. Every process reads the same tag, so replicas agree without talking.

Pure and light (stdlib only): promote, predict, the monitor and the CLI all import it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

CANARY = "canary"
ROLLOUT_TAG = "faaspipe.rollout"
MODES = ("off", "canary", "shadow")


class RolloutPolicyError(ValueError):
    """A contract's ``rollout`` block is invalid; the message names the field."""


@dataclass(frozen=True)
class RolloutPolicy:
    """How a new challenger reaches live traffic, and what it must show to be promoted."""

    mode: str = "off"  # off: a challenger that passes the gates is champion at once
    share: float = 0.05  # canary: the fraction of requests it answers
    window_s: float = 300.0  # the least time it is watched
    min_requests: int = 200  # ... and the least number of requests it must have seen
    max_error_rate: float = 0.01  # requests the candidate failed / requests sent to it
    max_latency_ratio: float = 2.0  # (candidate p95 + floor) / (champion p95 + floor), latencies in ms
    latency_floor_ms: float = 5.0  # ... so that jitter below a few ms is not a regression
    max_psi: float = 0.25  # population stability index between the two probability distributions
    auc_tolerance: float = 0.01  # labelled: candidate ROC-AUC >= champion's - tolerance
    min_labelled: int = 50  # labelled rows per side before labelled performance counts

    @classmethod
    def parse(cls, doc: Any, where: str) -> RolloutPolicy:
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise RolloutPolicyError(f"{where}.rollout: expected a mapping, got {doc!r}")
        known = {f.name: f.type for f in fields(cls)}
        names = {_camel(n): n for n in known}
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise RolloutPolicyError(f"{where}.rollout: unknown field(s) {unknown}; known: {sorted(names)}")
        values: dict[str, Any] = {}
        for key, value in doc.items():
            name = names[key]
            if name == "mode":
                if value not in MODES:
                    raise RolloutPolicyError(f"{where}.rollout.mode must be one of {MODES}, got {value!r}")
                values[name] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise RolloutPolicyError(f"{where}.rollout.{key} must be a number >= 0, got {value!r}")
            values[name] = int(value) if name in ("min_requests", "min_labelled") else float(value)
        policy = cls(**values)
        if not 0 < policy.share <= 1:
            raise RolloutPolicyError(f"{where}.rollout.share must be in (0, 1], got {policy.share}")
        return policy


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Rollout:
    """A rollout in progress: the registered model's ``faaspipe.rollout`` tag."""

    id: str
    model_name: str
    candidate: str  # the version carrying the canary alias
    champion: str  # the champion when it started (the compare-and-set's expected value)
    started_at: str  # RFC 3339
    started_by: str
    policy: RolloutPolicy

    @property
    def mode(self) -> str:
        return self.policy.mode

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        doc = json.loads(text)
        policy = RolloutPolicy(**doc.pop("policy"))
        return cls(policy=policy, **doc)

    def candidate_answers(self, request_id: str) -> bool:
        """Canary: does the candidate answer this request? (Shadow: it never does.)"""
        return self.mode == "canary" and bucket(request_id) < self.policy.share

    def shares(self) -> dict[str, float]:
        """Version → share of answers it gives while this rollout runs."""
        if self.mode == "canary":
            return {self.champion: round(1 - self.policy.share, 6), self.candidate: self.policy.share}
        return {self.champion: 1.0, self.candidate: 0.0}

    def with_policy(self, **changes: Any) -> Rollout:
        return replace(self, policy=replace(self.policy, **changes))


def bucket(request_id: str) -> float:
    """A request id's place in [0, 1): uniform, and the same on every replica."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
