"""Validation of event data against the catalogue schemas.

Hot path: a compiled pre-check accepts valid data; jsonschema (imported lazily, it costs ~90 ms at
start-up, which matters for cold starts) only runs when the pre-check is not sure, and builds the error.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from cloudevents.core.base import BaseCloudEvent

from events._fastpath import Check, compile_check
from events.catalogue import get_spec
from events.errors import EventDataError

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

__all__ = ["event_data", "validate_data", "validate_event"]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time with a mandatory offset (jsonschema's own check needs an extra package)."""
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.upper())
    return True


@cache
def _validator_class() -> tuple[type[Validator], Any]:
    from jsonschema import Draft202012Validator, FormatChecker, validators

    def is_finite_number(checker: Any, instance: object) -> bool:
        """JSON has no NaN or infinity: reject them instead of emitting invalid JSON."""
        return Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(instance)  # type: ignore[arg-type]

    formats = FormatChecker(formats=())
    formats.checks("date-time", raises=ValueError)(_is_date_time)
    type_checker = Draft202012Validator.TYPE_CHECKER.redefine("number", is_finite_number)
    return validators.extend(Draft202012Validator, type_checker=type_checker), formats


@cache
def _validator(event_type: str) -> Validator:
    """The full jsonschema validator of ``event_type`` (the authority; also builds errors)."""
    cls, formats = _validator_class()
    return cls(get_spec(event_type).schema, format_checker=formats)


def _reject(data: object) -> bool:
    return False


@cache
def _fast_check(event_type: str) -> Check:
    """Compiled pre-check: ``True`` means surely valid; otherwise jsonschema decides."""
    return compile_check(get_spec(event_type).schema, {"date-time": _is_date_time}) or _reject


def _path_key(error: ValidationError) -> tuple[str, ...]:
    return tuple(str(part) for part in error.absolute_path)


def _to_data_error(event_type: str, errors: list[ValidationError]) -> EventDataError:
    from jsonschema.exceptions import best_match

    errors.sort(key=_path_key)  # best_match keeps the first of equally relevant errors: make it stable
    error = best_match(errors)
    path = [str(part) for part in error.absolute_path]
    reason = error.message
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        path.append(missing[0])
        reason = "required property is missing"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = sorted(str(name) for name in error.instance if name not in known)
        path.append(extra[0])
        reason = "unexpected property"
        if len(extra) > 1:
            reason += f" (also: {', '.join(extra[1:])})"
    return EventDataError(event_type, ".".join(path), reason)


def validate_data(event_type: str, data: object) -> None:
    """Check ``data`` against the schema of ``event_type``.

    Raises :class:`UnknownEventType` or :class:`EventDataError` (naming the offending field).
    """
    if _fast_check(event_type)(data):
        return
    errors = list(_validator(event_type).iter_errors(data))
    if errors:
        raise _to_data_error(event_type, errors)


def event_data(event: BaseCloudEvent) -> dict[str, Any]:
    """The validated ``data`` object of a CloudEvent (JSON text or bytes are decoded first)."""
    event_type = event.get_type()
    data = event.get_data()
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as exc:
            get_spec(event_type)
            raise EventDataError(event_type, "", f"data is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        get_spec(event_type)
        raise EventDataError(event_type, "", f"data must be a JSON object, got {type(data).__name__}")
    validate_data(event_type, data)
    return data


def validate_event(event: BaseCloudEvent) -> None:
    """Check a CloudEvent's type is known and its ``data`` is a JSON object matching the schema."""
    event_data(event)
