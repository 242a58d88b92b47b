"""Which CloudEvents enter (events.admission): catalogue types validated, foreign types admitted
as a Knative broker admits any valid CloudEvent, our own namespace never guessed."""

from __future__ import annotations

import pytest

from events import EventDataError, UnknownEventType
from events.admission import admit, strict_types_from_env
from shared.cloudevents_io import CloudEvent

PING = "dev.faaspipe.sample.ping.v1"


def event(event_type: str, data: object, content_type: str = "application/json") -> CloudEvent:
    return CloudEvent(
        {
            "id": "1",
            "source": "/t",
            "type": event_type,
            "specversion": "1.0",
            "datacontenttype": content_type,
        },
        data,
    )


@pytest.mark.parametrize(
    ("case", "ev", "strict", "outcome"),
    [
        ("catalogue type, valid data", event(PING, {"message": "x"}), False, False),
        ("catalogue type, strict mode", event(PING, {"message": "x"}), True, False),
        ("foreign type, JSON data", event("com.example.foreign.v1", {"any": [1, 2]}), False, True),
        ("foreign type, text data", event("com.example.foreign.v1", "h\u00e9llo", "text/plain"), False, True),
        (
            "foreign type, binary data",
            event("org.acme.blob", b"\x00\xff", "application/octet-stream"),
            False,
            True,
        ),
        ("foreign type, strict mode", event("com.example.foreign.v1", {}), True, UnknownEventType),
        ("typo in our namespace", event("dev.faaspipe.sample.pingg.v1", {}), False, UnknownEventType),
        ("catalogue type, bad data", event(PING, {"message": 5}), False, EventDataError),
    ],
)
def test_admission(case: str, ev: CloudEvent, strict: bool, outcome: object) -> None:
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            admit(ev, strict_types=strict)
    else:
        assert admit(ev, strict_types=strict) is outcome, case


@pytest.mark.parametrize(
    ("value", "strict"), [("", False), ("0", False), ("false", False), ("1", True), ("true", True)]
)
def test_strict_types_setting(value: str, strict: bool) -> None:
    assert strict_types_from_env({"FAASPIPE_STRICT_TYPES": value}) is strict


def test_strict_types_setting_refuses_other_values() -> None:
    with pytest.raises(ValueError, match="FAASPIPE_STRICT_TYPES"):
        strict_types_from_env({"FAASPIPE_STRICT_TYPES": "yes please"})
