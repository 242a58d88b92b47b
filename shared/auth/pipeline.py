"""The pipeline's EventPolicies, derived from the topology: the ONE source for the local ingress
(:mod:`localdev.broker.ingress`) and the rendered ``EventPolicy`` resources
(:mod:`localdev.render.auth`).

* one policy per function that emits events: its own identity and the OIDC identities of its
  triggers and Kafka sources (a reply reaches the broker from the trigger's identity) may post
  exactly the types its ``function.yaml`` declares under ``emits``;
* one policy for people (``user:*``): any type that no function emits (``sample.ping``, a
  ``com.example.*`` event, ...) plus the manual decisions of :data:`MANUAL_TYPES`, so a person
  cannot forge a pipeline fact such as ``model.promoted``.

A subject listed nowhere (say another namespace's workload) is refused, as Knative refuses a
subject no applying policy names. The types the product's functions (``functions/``) emit are
reserved in every stack, even one that deploys only some of them (a test stack): a person can
never post ``model.promoted``, whether or not promote runs there.
"""

from __future__ import annotations

from typing import Any

from shared.auth.identity import function_subject, subscription_subject, user_subject
from shared.auth.policy import EventPolicy
from shared.topology import Topology, load_topology

# Posted by hand through the CLI (`faaspipe rollout promote|rollback`), recorded with the
# person's subject in the audit record.
MANUAL_TYPES = ("dev.faaspipe.rollout.decided.v1",)
USERS_POLICY = "faaspipe-users"


def _any_type(types: list[str]) -> dict[str, Any]:
    exact = [{"exact": {"type": t}} for t in types]
    return exact[0] if len(exact) == 1 else {"any": exact}


def function_policy_name(function: str) -> str:
    return f"faaspipe-{function}"


def pipeline_policies(topology: Topology) -> list[EventPolicy]:
    """Every EventPolicy of the broker, in a stable order."""
    policies = []
    emitted: set[str] = set()
    for fn in sorted(topology.functions.values(), key=lambda f: f.name):
        if not fn.emits:
            continue
        emitted.update(fn.emits)
        subjects = (function_subject(fn), *(subscription_subject(s) for s in fn.subscriptions))
        policies.append(
            EventPolicy(
                name=function_policy_name(fn.name),
                subjects=subjects,
                filters=(_any_type(sorted(fn.emits)),),
                description=f"{fn.name} posts the events it declares under emits",
            )
        )
    product = {t for fn in load_topology().functions.values() for t in fn.emits}
    reserved = sorted((emitted | product) - set(MANUAL_TYPES))
    user_filter: dict[str, Any] = {"not": _any_type(reserved)} if reserved else {}
    if user_filter:
        user_filter = {"any": [*({"exact": {"type": t}} for t in MANUAL_TYPES), user_filter]}
    policies.append(
        EventPolicy(
            name=USERS_POLICY,
            subjects=(user_subject("*"),),
            filters=(user_filter,) if user_filter else (),
            description="people post manual decisions and any type no function emits",
        )
    )
    return policies
