"""Trigger and delivery validation at load time (``faaspipe up`` and ``render`` both load the
topology), with Knative's webhook rules. Each case cites its source in knative/eventing:
``trigger_validation_test.go`` (``pkg/apis/eventing/v1``), ``trigger_validation.go`` and
``delivery_types.go`` (``pkg/apis/duck/v1``, ``DeliverySpec.Validate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.filters import matches
from shared.topology import TopologyError, load_function

TV = "trigger_validation_test.go TestFilterSpecValidation"
DV = "delivery_types.go DeliverySpec.Validate"

# (trigger document, error naming the field or None for valid, source)
CASES: list[tuple[dict[str, Any], str | None, str]] = [
    ({"filters": []}, None, f"{TV}: missing filters, match all"),
    (
        {"filters": [{"exact": {"0invalid": "v"}}]},
        "0invalid",
        f"{TV}: exact attribute name starts with number",
    ),
    ({"filters": [{"exact": {"invALID": "v"}}]}, "invALID", f"{TV}: exact attribute name capital letters"),
    ({"filters": [{"suffix": {"invALID": "v"}}]}, "invALID", f"{TV}: suffix filter invalid attribute name"),
    ({"filters": [{"prefix": {"SOURCE": "v"}}]}, "SOURCE", "trigger_validation.go validAttributeName"),
    ({"filters": [{"exact": {"s-pace-s": "v"}}]}, "s-pace-s", "trigger_validation.go validAttributeName"),
    ({"filters": [{"exact": {"123": "v"}}]}, "123", "trigger_validation.go validAttributeName"),
    (
        {"filters": [{"attributes": {"0invalid": "v"}}]},
        "0invalid",
        "trigger_validation_test.go TestTriggerSpecValidation",
    ),
    (
        {"filters": [{"exact": {"myext": "abc"}, "suffix": {"myext": "abc"}}]},
        "exactly one",
        f"{TV}: invalid multiple dialects",
    ),
    ({"filters": [{"cesql": "type = "}]}, "cesql", "trigger_validation.go ValidateCESQLExpression"),
    (
        {"filters": [{"not": {"attributes": {"type": "t"}}}]},
        "top-level",
        "legacy filter: spec.filter, top level",
    ),
    (
        {"delivery": {"backoffDelay": "invalid time"}},
        "backoffDelay",
        "trigger_validation_test.go: invalid delay string",
    ),
    ({"delivery": {"retry": -1}}, "retry", f"{DV}: retry >= 0"),
    ({"delivery": {"timeout": "PT0S"}}, "timeout", f"{DV}: timeout must be greater than 0"),
    ({"delivery": {"retryAfterMax": "soon"}}, "retryAfterMax", f"{DV}: retryAfterMax is a duration"),
    ({"delivery": {"format": "xml"}}, "format", f"{DV}: format json or binary"),
    (
        {"delivery": {"deadLetterSink": "http://example.com/dls"}},
        "deadLetterSink",
        "faaspipe: no sink is ignored",
    ),
    (
        {"delivery": {"retry": 0, "timeout": "PT1S", "retryAfterMax": "PT0S", "format": "json"}},
        None,
        f"{DV}: valid",
    ),
]


@pytest.mark.parametrize(("trigger", "error", "source"), CASES, ids=[c[2] for c in CASES])
def test_trigger_validation(tmp_path: Path, trigger: dict[str, Any], error: str | None, source: str) -> None:
    doc = {"name": "f", "module": "m", "triggers": [{"name": "t", **trigger}]}
    path = tmp_path / "f" / "function.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    if error is None:
        load_function(path)
    else:
        with pytest.raises(TopologyError, match=error):
            load_function(path)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"type": "t", "subject": "anything"}, True),
        ({"type": "t"}, True),  # missing: still matches (Knative's TriggerAnyFilter "")
        ({"type": "other", "subject": "x"}, False),
    ],
)
def test_legacy_empty_value_matches_any_value(attributes: dict[str, str], expected: bool) -> None:
    """eventing ``filter_handler`` legacy attributes: "" is TriggerAnyFilter."""
    assert matches([{"attributes": {"type": "t", "subject": ""}}], attributes) is expected
