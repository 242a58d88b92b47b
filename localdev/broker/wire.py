"""Events as the broker carries them: context attributes as strings, data as the bytes received.

The Knative Eventing data-plane spec: a broker MUST NOT modify the event data. Parsing data
into objects and serialising it again changes its bytes (spacing, escapes, key order,
timestamp precision), so the broker never does: ``data`` stays the exact bytes of the binary
body, of the ``data_base64`` member, or of the ``data`` member's JSON text in structured
mode, from ingress to the Kafka log, to every subscriber and into the dead-letter topic.
Attributes keep their canonical string form (``time`` keeps its nanoseconds).

Bindings (CloudEvents 1.0): HTTP binary and structured (JSON format) in, HTTP binary or
structured out, Kafka binary in and out (structured Kafka records are read too). Validation
follows the core spec: required ``id``, ``source``, ``specversion`` ("1.0"), ``type``;
attribute names of lowercase letters and digits; ``time`` as RFC 3339.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from shared.cloudevents_io import InvalidCloudEvent, changed_attributes

__all__ = ["WireEvent", "from_http", "from_kafka", "from_structured", "to_http", "to_kafka", "to_structured"]

REQUIRED = ("id", "source", "specversion", "type")
STRUCTURED = "application/cloudevents+json"
_NAME = re.compile(r"^[a-z0-9]+$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
# HTTP binding 3.1.3.2: percent-encode space, '"', '%' and anything outside printable ASCII.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


@dataclass(frozen=True)
class WireEvent:
    attributes: Mapping[str, str]
    data: bytes | None

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    def with_attributes(self, drop: Iterable[str] = (), **changes: str | None) -> WireEvent:
        """A copy with attributes changed (``None`` removes) and ``drop`` removed; data untouched."""
        return WireEvent(changed_attributes(self.attributes, drop, changes), self.data)


def _checked(attributes: dict[str, str], data: bytes | None, mode: str) -> WireEvent:
    missing = [a for a in REQUIRED if not attributes.get(a)]
    if missing:
        raise InvalidCloudEvent(
            f"{mode} CloudEvent is missing required attributes: {', '.join(missing)}", missing
        )
    if attributes["specversion"] != "1.0":
        raise InvalidCloudEvent(f"unsupported specversion {attributes['specversion']!r}: only 1.0 is")
    for name in attributes:
        if not _NAME.match(name):
            raise InvalidCloudEvent(f"attribute name {name!r} must be lowercase letters and digits")
    if "time" in attributes and not _RFC3339.match(attributes["time"]):
        raise InvalidCloudEvent(f"attribute time {attributes['time']!r} is not an RFC 3339 timestamp")
    return WireEvent(attributes, data)


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media in ("", "application/json", "text/json") or media.endswith("+json")


# --- HTTP -------------------------------------------------------------------------------------


def from_http(headers: Mapping[str, str], body: bytes) -> WireEvent:
    """An HTTP request or response in binary or structured content mode."""
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type")
    if any(k.startswith("ce-") for k in lowered):
        missing = [a for a in REQUIRED if not lowered.get(f"ce-{a}")]
        if missing:
            raise InvalidCloudEvent(
                "binary-mode CloudEvent is missing required headers: "
                + ", ".join(f"ce-{a}" for a in missing),
                missing,
            )
        attributes = {k[3:]: unquote(v) for k, v in lowered.items() if k.startswith("ce-")}
        if content_type is not None:
            attributes["datacontenttype"] = content_type
        if body and content_type is not None and _is_json(content_type):
            try:
                json.loads(body)
            except ValueError as exc:
                raise InvalidCloudEvent(f"event data is not valid JSON ({content_type}): {exc}") from exc
        return _checked(attributes, body if body else None, "binary-mode")
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/cloudevents-batch+json":
        raise InvalidCloudEvent("batched CloudEvents are not supported; send one event per request")
    if media != STRUCTURED:
        raise InvalidCloudEvent(
            "not a CloudEvent: send binary mode (headers ce-id, ce-source, ce-type, ce-specversion) "
            f"or structured mode (Content-Type: {STRUCTURED}); got Content-Type "
            f"{media or 'none'!r} and no ce- headers",
            REQUIRED,
        )
    return from_structured(body)


def from_structured(body: bytes) -> WireEvent:
    """The JSON event format; ``data`` keeps the exact text of its JSON value."""
    try:
        text = body.decode("utf-8")
        if text[_skip(text, 0) : _skip(text, 0) + 1] not in ("{", ""):
            json.loads(text)  # valid JSON, but not an object: said below
            raise InvalidCloudEvent("structured CloudEvent body must be a JSON object")
        members = _top_level_members(text)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidCloudEvent):
            raise
        raise InvalidCloudEvent(f"structured CloudEvent body is not valid JSON: {exc}") from exc
    attributes: dict[str, str] = {}
    data: bytes | None = None
    for name, (value, raw) in members.items():
        if name == "data":
            data = raw.encode()
        elif name == "data_base64":
            if value is not None:
                try:
                    data = base64.b64decode(value, validate=True)
                except (ValueError, TypeError) as exc:
                    raise InvalidCloudEvent(f"data_base64 is not base64: {exc}") from exc
        elif value is None:
            continue  # a null attribute is an absent one
        elif isinstance(value, bool):
            attributes[name] = "true" if value else "false"
        elif isinstance(value, int | str):
            attributes[name] = str(value)
        else:
            raise InvalidCloudEvent(f"attribute {name!r} must be a string, integer or boolean")
    if "data" in members:
        value = members["data"][0]
        if not _is_json(attributes.get("datacontenttype")) and isinstance(value, str):
            data = value.encode()  # a text payload is carried as a JSON string
        attributes.setdefault("datacontenttype", "application/json")
    return _checked(attributes, data, "structured")


def _top_level_members(text: str) -> dict[str, tuple[Any, str]]:
    """Each member of a JSON object: its value and the exact text of the value."""
    decoder = json.JSONDecoder()
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    out: dict[str, tuple[Any, str]] = {}
    i = _skip(text, i + 1)
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            key, i = decoder.raw_decode(text, i)
            if not isinstance(key, str):
                raise ValueError("member names must be strings")
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                raise ValueError(f"expected ':' at {i}")
            start = _skip(text, i + 1)
            value, end = decoder.raw_decode(text, start)
            out[key] = (value, text[start:end])
            i = _skip(text, end)
            if text[i : i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i : i + 1] != "}":
                raise ValueError(f"expected ',' or '}}' at {i}")
            i += 1
            break
    if text[_skip(text, i) :]:
        raise ValueError("text after the JSON object")
    return out


def _skip(text: str, i: int) -> int:
    """The index of the first non-whitespace character (JSON whitespace) at or after ``i``."""
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def to_http(event: WireEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode: ``ce-`` headers (percent-encoded), data as the body."""
    headers = {f"ce-{k}": quote(v, safe=_SAFE) for k, v in event.attributes.items() if k != "datacontenttype"}
    if "datacontenttype" in event.attributes:
        headers["content-type"] = event.attributes["datacontenttype"]
    return headers, event.data or b""


def to_structured(event: WireEvent) -> tuple[dict[str, str], bytes]:
    """Structured content mode (JSON format): the envelope is new, the data bytes are not."""
    envelope = json.dumps(dict(event.attributes), ensure_ascii=False, separators=(",", ":"))
    data = event.data
    if data is None:
        member = ""
    elif _is_json(event.get("datacontenttype")) and _valid_json(data):
        member = ',"data":' + data.decode()
    else:
        member = ',"data_base64":"' + base64.b64encode(data).decode() + '"'
    body = (envelope[:-1] + member + "}").encode()
    return {"content-type": f"{STRUCTURED}; charset=utf-8"}, body


def _valid_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# --- Kafka ------------------------------------------------------------------------------------


def to_kafka(event: WireEvent) -> tuple[bytes | None, list[tuple[str, bytes]], bytes]:
    """Kafka binary content mode: (key = ``partitionkey``, ``ce_`` headers, data)."""
    headers = [(f"ce_{k}", v.encode()) for k, v in event.attributes.items() if k != "datacontenttype"]
    if "datacontenttype" in event.attributes:
        headers.append(("content-type", event.attributes["datacontenttype"].encode()))
    key = event.get("partitionkey")
    return (key.encode() if key is not None else None), headers, event.data or b""


def from_kafka(key: bytes | None, headers: Iterable[tuple[str, bytes]], value: bytes | None) -> WireEvent:
    """A Kafka record in binary (or structured) content mode."""
    pairs = [(name.lower(), raw.decode("utf-8", errors="replace")) for name, raw in headers]
    content_type = dict(pairs).get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == STRUCTURED:
        return from_structured(value or b"")
    attributes = {name[3:]: v for name, v in pairs if name.startswith("ce_")}
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return _checked(attributes, value if value else None, "Kafka")
