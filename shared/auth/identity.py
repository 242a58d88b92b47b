"""Who is who: the subjects of the pipeline's workloads, of Knative's own senders and of people.

Knative Eventing's OIDC subjects are Kubernetes service-account subjects,
``system:serviceaccount:<namespace>:<name>`` (knative.dev/docs eventing/features/sender-identity).
Each function runs as its own ServiceAccount, named after the function, so its subject is
``system:serviceaccount:faaspipe:<function>``. A broker Trigger (and a KafkaSource) sends with
the OIDC identity Knative creates for it: the ServiceAccount
``kmeta.ChildName(<name>, "-oidc-<group>-<kind>")`` (eventing ``pkg/auth/serviceaccount.go``,
``GetOIDCServiceAccountNameForResource``); a function's replies reach the broker from its
trigger's identity, so its EventPolicy lists those too. People and CLIs are ``user:<name>``.
"""

from __future__ import annotations

import hashlib

from shared.topology import Function, Trigger

NAMESPACE = "faaspipe"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount"
USER_PREFIX = "user:"
ADMIN_GROUP_PREFIX = "user:"  # control API: any authenticated person (not a workload)
NOTIFIER = "seaweedfs-filer"  # the object store's webhook, calling the object-events source

_LONGEST = 63
_MD5_LEN = 32
_HEAD = _LONGEST - _MD5_LEN


def child_name(parent: str, suffix: str) -> str:
    """Port of ``knative.dev/pkg/kmeta.ChildName``: ``parent + suffix``, shortened with an MD5
    so the result fits a Kubernetes name (63 characters)."""
    if len(parent) <= _LONGEST - len(suffix):
        return parent + suffix
    if _HEAD - len(suffix) <= 0:
        digest = hashlib.md5((parent + suffix).encode()).hexdigest()  # noqa: S324 - a name, not security
        ret = parent[:_HEAD] + digest
        if (room := _LONGEST - len(ret)) > 0:
            ret += suffix[:room]
        return ret.rstrip("-")
    digest = hashlib.md5(parent.encode()).hexdigest()  # noqa: S324
    return parent[: _HEAD - len(suffix)] + digest + suffix


def service_account_subject(name: str, namespace: str = NAMESPACE) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}:{namespace}:{name}"


def function_service_account(fn: Function | str) -> str:
    """The ServiceAccount a function runs as (its own, named after it)."""
    return fn if isinstance(fn, str) else fn.name


def function_subject(fn: Function | str, namespace: str = NAMESPACE) -> str:
    return service_account_subject(function_service_account(fn), namespace)


def subscription_service_account(sub: Trigger) -> str:
    """Knative's OIDC ServiceAccount of a Trigger or KafkaSource."""
    suffix = (
        "-oidc-sources.knative.dev-kafkasource"
        if sub.is_kafka_source
        else "-oidc-eventing.knative.dev-trigger"
    )
    return child_name(sub.name, suffix)


def subscription_subject(sub: Trigger, namespace: str = NAMESPACE) -> str:
    return service_account_subject(subscription_service_account(sub), namespace)


def user_subject(name: str) -> str:
    return USER_PREFIX + name


def is_admin(subject: str) -> bool:
    """The control API (status, scale, shutdown) is for people, not for workloads."""
    return subject.startswith(ADMIN_GROUP_PREFIX)
