"""EventPolicy evaluation: may this subject post this event to this broker?

A port of Knative Eventing's authorization (eventing.knative.dev/v1alpha1 ``EventPolicy``;
knative.dev/docs/eventing/features/authorization; eventing ``pkg/auth/verifier.go`` and
``pkg/auth/event_policy.go``):

* authentication comes first: no token or an invalid one is ``401`` whatever the policies;
* no EventPolicy applies to the resource → the ``default-authorization-mode`` feature flag
  decides: ``allow-all``, ``deny-all``, or ``allow-same-namespace`` (Knative's default: subjects
  ``system:serviceaccount:<the resource's namespace>:…`` only);
* one or more apply → the request passes only if one policy lists the subject in ``from``
  (``sub`` exact, or a pattern ending in ``*`` matching any suffix) **and** the event passes
  every one of that policy's ``filters`` (SubscriptionsAPI filters, evaluated by the same
  engine as Trigger filters, :mod:`shared.filters`); otherwise ``403``.

``spec.to`` is kept for rendering; locally one broker exists, so every policy here applies to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import filters as trigger_filters
from shared.auth.exceptions import Forbidden
from shared.auth.identity import NAMESPACE, SERVICE_ACCOUNT_PREFIX

ALLOW_ALL = "allow-all"
DENY_ALL = "deny-all"
ALLOW_SAME_NAMESPACE = "allow-same-namespace"
MODES = (ALLOW_ALL, DENY_ALL, ALLOW_SAME_NAMESPACE)
DEFAULT_MODE = ALLOW_SAME_NAMESPACE  # Knative's default for default-authorization-mode


@dataclass(frozen=True)
class EventPolicy:
    """One ``EventPolicy``: ``subjects`` = ``spec.from[].sub``, ``filters`` = ``spec.filters``."""

    name: str
    subjects: tuple[str, ...]
    filters: tuple[Mapping[str, Any], ...] = ()
    to_broker: str = "default"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        trigger_filters.check_filters(self.filters)  # refused as Knative's webhook refuses them

    def allows_subject(self, subject: str) -> bool:
        return any(subject_matches(subject, pattern) for pattern in self.subjects)


def subject_matches(subject: str, pattern: str) -> bool:
    """``from[].sub``: exact, or a trailing ``*`` matching any suffix (Knative's glob-like form)."""
    if pattern.endswith("*"):
        return subject.startswith(pattern[:-1])
    return subject == pattern


def authorize(
    subject: str,
    attributes: Mapping[str, Any],
    policies: Sequence[EventPolicy],
    *,
    default_mode: str = DEFAULT_MODE,
    namespace: str = NAMESPACE,
) -> EventPolicy | None:
    """Return the policy that allows ``subject`` to post the event with ``attributes`` (None:
    the default mode allowed it); raise :class:`Forbidden` naming why not."""
    if default_mode not in MODES:
        raise ValueError(f"default-authorization-mode must be one of {MODES}, got {default_mode!r}")
    if not policies:
        if default_mode == ALLOW_ALL:
            return None
        if default_mode == DENY_ALL:
            raise Forbidden("no EventPolicy applies and the default authorization mode is deny-all")
        if subject.startswith(f"{SERVICE_ACCOUNT_PREFIX}:{namespace}:"):
            return None
        raise Forbidden(
            f"no EventPolicy applies; the default mode allow-same-namespace admits subjects of "
            f"namespace {namespace!r} only, not {subject!r}"
        )
    for_subject = [p for p in policies if p.allows_subject(subject)]
    if not for_subject:
        raise Forbidden(f"subject {subject!r} is not in the 'from' of any EventPolicy of the broker")
    for policy in for_subject:
        if trigger_filters.matches(policy.filters, attributes):
            return policy
    event_type = attributes.get("type")
    names = ", ".join(p.name for p in for_subject)
    raise Forbidden(f"subject {subject!r} may not post events of type {event_type!r} (EventPolicy {names})")
