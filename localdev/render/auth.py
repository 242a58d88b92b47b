"""Authentication and authorisation on the cluster, from the same topology as localdev's
(``shared/auth``): Knative Eventing's OIDC + ``EventPolicy`` model.

* one ServiceAccount per function, which its Knative Service runs as: the function's identity
  ``system:serviceaccount:faaspipe:<function>`` (what localdev's issuer mints for its replicas);
* the function's token: a projected ServiceAccount token (audience: the Broker's OIDC audience,
  ``eventing.knative.dev/broker/<namespace>/<broker>``, as Knative's ``auth.GetAudience`` forms
  it) mounted where ``FAASPIPE_AUTH_TOKEN_DIR`` points; Kubernetes rotates it, nothing secret
  is written in a manifest;
* one ``EventPolicy`` (eventing.knative.dev/v1alpha1) per pipeline policy of
  :func:`shared.auth.pipeline.pipeline_policies`, ``to`` the Broker: each function (and its
  triggers' OIDC identities, which post its replies) may post exactly the types it emits;
  people (``user:*``) the rest;
* the feature flags (``knative/config-features.yaml``, merged into knative-eventing's
  ``config-features``): ``authentication-oidc: enabled`` and ``default-authorization-mode``.

Sources: knative.dev/docs/eventing/features/authorization (EventPolicy, default modes),
knative.dev/docs/eventing/features/sender-identity (OIDC, ``authentication-oidc``).
"""

from __future__ import annotations

from typing import Any

from localdev.render.eventing import knative_filters
from localdev.render.meta import object_meta
from localdev.render.settings import BROKER
from shared.auth.identity import NAMESPACE, function_service_account
from shared.auth.pipeline import pipeline_policies
from shared.auth.policy import DEFAULT_MODE
from shared.topology import Function, Topology

TOKEN_MOUNT = "/var/run/secrets/faaspipe/tokens"  # FAASPIPE_AUTH_TOKEN_DIR on the cluster
TOKEN_VOLUME = "faaspipe-identity"
TOKEN_TTL_S = 3600  # the kubelet rotates the projected token before it expires
FEATURES_FILE = "knative/config-features.yaml"
FEATURES_NOTE = (
    "merge into Knative's own: kubectl -n knative-eventing patch configmap config-features "
    "--type merge --patch-file manifests/knative/config-features.yaml"
)


def broker_audience(namespace: str = NAMESPACE) -> str:
    """The Broker's OIDC audience (Knative: ``<group>/<kind>/<namespace>/<name>``, lower case)."""
    return f"eventing.knative.dev/broker/{namespace}/{BROKER}".lower()


def service_account_docs(topology: Topology) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(function_service_account(fn), "identity"),
            # the API token is not mounted; the identity token is projected (token_volume)
            "automountServiceAccountToken": False,
        }
        for fn in sorted(topology.functions.values(), key=lambda f: f.name)
    ]


def token_volume(fn: Function) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume and mount that put the function's token at ``<TOKEN_MOUNT>/<name>.jwt``."""
    volume = {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": broker_audience(),
                        "expirationSeconds": TOKEN_TTL_S,
                        "path": f"{fn.name}.jwt",
                    }
                }
            ]
        },
    }
    return volume, {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True}


def event_policy_docs(topology: Topology) -> list[dict[str, Any]]:
    docs = []
    for policy in pipeline_policies(topology):
        spec: dict[str, Any] = {
            "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}}],
            "from": [{"sub": s} for s in policy.subjects],
        }
        if policy.filters:
            spec["filters"] = knative_filters(policy.filters)
        annotations = {"faaspipe.dev/description": policy.description} if policy.description else None
        docs.append(
            {
                "apiVersion": "eventing.knative.dev/v1alpha1",
                "kind": "EventPolicy",
                "metadata": object_meta(policy.name, "event-policy", annotations),
                "spec": spec,
            }
        )
    return docs


def auth_docs(topology: Topology) -> list[dict[str, Any]]:
    """``base/auth.yaml``: the functions' ServiceAccounts and the Broker's EventPolicies."""
    return [*service_account_docs(topology), *event_policy_docs(topology)]


def features_doc() -> dict[str, Any]:
    """Knative Eventing's feature flags this platform needs for authentication."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-features", "namespace": "knative-eventing"},
        "data": {
            "authentication-oidc": "enabled",
            # Knative's default, said explicitly: where no EventPolicy applies (the DLQ
            # KafkaSink), the namespace's own identities (the triggers) may send
            "default-authorization-mode": DEFAULT_MODE,
        },
    }
