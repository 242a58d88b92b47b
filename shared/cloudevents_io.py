"""CloudEvents on the wire: HTTP (binary + structured) and Kafka (binary) bindings.

A thin layer over the ``cloudevents`` v2 SDK (``cloudevents.core.bindings``) that turns
malformed input into one clear error saying what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

JSON_FORMAT = JSONFormat()
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
REQUIRED_ATTRIBUTES = ("id", "source", "type", "specversion")

__all__ = [
    "CloudEvent",
    "InvalidCloudEvent",
    "parse_http",
    "to_http",
    "to_kafka",
    "from_kafka",
    "to_json_dict",
    "with_attributes",
]


class InvalidCloudEvent(ValueError):
    """The input is not a valid CloudEvent; ``missing`` names absent required attributes."""

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.missing:
            body["missing"] = self.missing
        return body


def _sdk_error(exc: Exception) -> InvalidCloudEvent:
    return InvalidCloudEvent(f"invalid CloudEvent: {exc}")


def parse_http(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Parse an HTTP request (binary or structured content mode) into a CloudEvent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if any(k.startswith("ce-") for k in lowered):
        missing = [a for a in REQUIRED_ATTRIBUTES if f"ce-{a}" not in lowered]
        if missing:
            raise InvalidCloudEvent(
                "binary-mode CloudEvent is missing required headers: "
                + ", ".join(f"ce-{a}" for a in missing),
                missing,
            )
        if content_type in ("application/json", "") and body:
            try:
                json.loads(body)
            except ValueError as exc:
                raise InvalidCloudEvent(f"event data is not valid JSON: {exc}") from exc
        try:
            return ce_http.from_binary(ce_http.HTTPMessage(dict(headers), body), JSON_FORMAT, CloudEvent)
        except (BaseCloudEventException, ValueError, TypeError) as exc:
            raise _sdk_error(exc) from exc
    if content_type == BATCH_CONTENT_TYPE:
        raise InvalidCloudEvent("batched CloudEvents are not supported; send one event per request")
    if content_type != STRUCTURED_CONTENT_TYPE:
        raise InvalidCloudEvent(
            "not a CloudEvent: send binary mode (headers ce-id, ce-source, ce-type, ce-specversion) "
            f"or structured mode (Content-Type: {STRUCTURED_CONTENT_TYPE}); got Content-Type "
            f"{content_type or 'none'!r} and no ce- headers",
            REQUIRED_ATTRIBUTES,
        )
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise InvalidCloudEvent(f"structured CloudEvent body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidCloudEvent("structured CloudEvent body must be a JSON object")
    missing = [a for a in REQUIRED_ATTRIBUTES if a not in doc]
    if missing:
        raise InvalidCloudEvent(
            "structured CloudEvent is missing required attributes: " + ", ".join(missing), missing
        )
    try:
        return ce_http.from_structured(ce_http.HTTPMessage(dict(headers), body), JSON_FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise _sdk_error(exc) from exc


def to_http(event: CloudEvent, *, structured: bool = False) -> tuple[dict[str, str], bytes]:
    """Serialise an event for HTTP; binary content mode unless ``structured``."""
    message = (
        ce_http.to_structured(event, JSON_FORMAT) if structured else ce_http.to_binary(event, JSON_FORMAT)
    )
    return dict(message.headers), message.body


def to_kafka(event: CloudEvent) -> tuple[bytes | None, list[tuple[str, bytes]], bytes]:
    """Kafka binary content mode: (key, headers, value). Key = ``partitionkey`` extension."""
    message = ce_kafka.to_binary(event, JSON_FORMAT)
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return key, list(message.headers.items()), message.value


def from_kafka(key: bytes | None, headers: Iterable[tuple[str, bytes]], value: bytes | None) -> CloudEvent:
    """Parse a Kafka record (binary or structured mode) into a CloudEvent."""
    header_map = {name: val for name, val in headers}
    message = ce_kafka.KafkaMessage(headers=header_map, key=key, value=value or b"")
    try:
        return ce_kafka.from_kafka(message, JSON_FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise _sdk_error(exc) from exc


def to_json_dict(event: CloudEvent) -> dict[str, Any]:
    """The structured JSON representation, as a dict (for logs, DLQ listings, caches)."""
    return json.loads(JSON_FORMAT.write(event))


def from_json_bytes(raw: bytes) -> CloudEvent:
    """Inverse of ``JSON_FORMAT.write``: read a structured-mode event."""
    return JSON_FORMAT.read(CloudEvent, raw)


def changed_attributes(
    attributes: Mapping[str, Any], drop: Iterable[str] = (), changes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of ``attributes`` with ``changes`` applied (``None`` removes) and ``drop`` removed."""
    out = dict(attributes)
    for name in drop:
        out.pop(name, None)
    for name, value in (changes or {}).items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def with_attributes(event: CloudEvent, drop: Iterable[str] = (), **changes: Any) -> CloudEvent:
    """A copy of ``event`` with attributes changed (``None`` removes) and ``drop`` removed."""
    return CloudEvent(changed_attributes(event.get_attributes(), drop, changes), event.get_data())
