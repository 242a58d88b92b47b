"""``faaspipe rollout``: see a model's progressive rollout, and decide it by hand.

``status`` reads the rollout tag and the aliases from the registry, and the history of the
model's rollouts (which version answered which share, from when to when, how it ended, who
decided) from promote's history objects. ``promote`` / ``rollback``
post ``dev.faaspipe.rollout.decided.v1`` to the broker, as the monitor does: promote carries it
out (compare-and-set on the champion alias), so a person's decision and the monitor's take the
same path and leave the same audit record, naming who decided.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal
from urllib.parse import urlparse

import urllib3
from minio import Minio

from events import RolloutDecided, rfc3339
from localdev.actor import cli_actor, cli_authorization
from localdev.config import StackConfig
from shared import layout, settings
from shared.cloudevents_io import to_http
from shared.registry_alias import CHAMPION, RegistryClient
from shared.rollout import CANARY, ROLLOUT_TAG, Rollout

_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=15.0))


def running(config: StackConfig, model: str) -> Rollout | None:
    text = RegistryClient(config.url("mlflow")).model_tag(model, ROLLOUT_TAG)
    return Rollout.from_json(text) if text else None


def history(config: StackConfig, model: str) -> list[dict[str, Any]]:
    """Every rollout of ``model`` (promote's history objects), oldest first."""
    env = config.function_env()
    endpoint = urlparse(env["FAASPIPE_S3_ENDPOINT"])
    s3 = Minio(
        endpoint.netloc,
        access_key=env["FAASPIPE_S3_ACCESS_KEY"],
        secret_key=env["FAASPIPE_S3_SECRET_KEY"],
        secure=endpoint.scheme == "https",
    )
    prefix = layout.rollout_history(model)
    docs = [
        json.loads(settings.read_object(layout.MODELS, obj.object_name, s3))
        for obj in s3.list_objects(layout.MODELS, prefix=prefix)
        if obj.object_name and obj.object_name.endswith(".json")
    ]
    return sorted(docs, key=lambda d: str(d.get("started_at")))


def status(config: StackConfig, model: str, *, as_json: bool = False) -> int:
    registry = RegistryClient(config.url("mlflow"))
    rollout = running(config, model)
    doc = {
        "model": model,
        "champion": registry.alias_version(model, CHAMPION),
        "canary": registry.alias_version(model, CANARY),
        "rollout": json.loads(rollout.to_json()) if rollout else None,
        "shares": rollout.shares() if rollout else None,
        "history": history(config, model),
    }
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    if rollout is None:
        print(f"{model}: no rollout running; champion v{doc['champion']}")
    else:
        print(
            f"{model}: {rollout.mode} rollout {rollout.id} since {rollout.started_at}: "
            f"candidate v{rollout.candidate} vs champion v{rollout.champion}; shares {doc['shares']}"
        )
    for past in doc["history"]:
        shares = ", ".join(f"v{v} {share:.0%}" for v, share in past["shares"].items())
        end = (
            f"→ {past['ended_at']} {past['outcome']} by {past['decided_by']}"
            if past.get("ended_at")
            else "(running)"
        )
        print(f"  {past['started_at']} {past['mode']:<6} {shares}  {end}")
    return 0


def decide(config: StackConfig, model: str, decision: Literal["promote", "rollback"], reason: str) -> int:
    rollout = running(config, model)
    if rollout is None:
        print(f"{model}: no rollout running; nothing to {decision}", file=sys.stderr)
        return 1
    who = cli_actor(config)
    event = RolloutDecided(
        model_name=model,
        rollout_id=rollout.id,
        candidate_version=rollout.candidate,
        champion_version=rollout.champion,
        decision=decision,
        checks=[
            {
                "name": "manual",
                "passed": decision == "promote",
                "value": None,
                "threshold": None,
                "detail": reason,
            }
        ],
        evidence={"reason": reason},
        decided_by=who,
        decided_at=rfc3339(),
    ).to_event(source="/faaspipe/cli", subject=f"{model}/{rollout.candidate}", id=f"{rollout.id}.manual")
    headers, body = to_http(event)
    headers.update(cli_authorization(config))
    resp = _HTTP.request("POST", config.ingress_url, body=body, headers=headers)
    if resp.status >= 300:
        print(f"the broker refused the decision: {resp.status} {resp.data[:300]!r}", file=sys.stderr)
        return 1
    print(f"{model}: {decision} of v{rollout.candidate} (rollout {rollout.id}) sent by {who}")
    return 0
