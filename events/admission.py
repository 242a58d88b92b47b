"""Which CloudEvents the platform admits: the broker ingress and every function runtime.

A Knative broker accepts any valid CloudEvent. faaspipe does the same, with one deliberate
difference: a type in faaspipe's own namespace (``dev.faaspipe.``) must be in the catalogue
and its data must match the type's schema; an unknown ``dev.faaspipe.*`` type is a typo of
ours (the error suggests the closest catalogue type), never a foreign event. Every other type
is admitted as it is, unless strict mode (``FAASPIPE_STRICT_TYPES=1``) admits catalogue types
only.
"""

from __future__ import annotations

import os

from cloudevents.core.base import BaseCloudEvent

from events.catalogue import get_spec, is_known
from events.validation import validate_event

NAMESPACE = "dev.faaspipe."
STRICT_ENV = "FAASPIPE_STRICT_TYPES"


def strict_types_from_env(env: dict[str, str] | None = None) -> bool:
    """``FAASPIPE_STRICT_TYPES``: ``1``/``true`` admits catalogue types only (default off)."""
    value = (os.environ if env is None else env).get(STRICT_ENV, "").strip()
    if value not in ("", "0", "1", "true", "false"):
        raise ValueError(f"{STRICT_ENV} must be 0 or 1, got {value!r}")
    return value in ("1", "true")


def is_checked(event_type: str, *, strict_types: bool) -> bool:
    """Whether :func:`admit` looks beyond the type: False means a foreign type admitted as is
    (so a caller holding raw bytes need not build an SDK event for it)."""
    return strict_types or event_type.startswith(NAMESPACE) or is_known(event_type)


def admit(event: BaseCloudEvent, *, strict_types: bool) -> bool:
    """Check ``event`` may enter; True when it is a foreign (non-catalogue) type admitted as is.

    Raises ``UnknownEventType`` (a ``dev.faaspipe.*`` type not in the catalogue, or any
    non-catalogue type in strict mode) or ``EventDataError`` (catalogue data breaking its schema).
    """
    event_type = event.get_type()
    if is_known(event_type):
        validate_event(event)
        return False
    if strict_types or event_type.startswith(NAMESPACE):
        get_spec(event_type)  # raises UnknownEventType with the closest suggestion
    return True
