"""KEDA kafka-scaler trigger metadata: parsing and validation as KEDA does it.

Source: kedacore/keda ``pkg/scalers/kafka_scaler.go`` (``kafkaMetadata``, its ``Validate``
and ``parsePartitionLimitation``). Only the scaling options are ported; connection and
authentication options (``bootstrapServers``, ``sasl``, ``tls``, ``version`` ...) come from
the platform, not from ``function.yaml``. A bad value raises :class:`KedaMetadataError`
naming the field, so ``faaspipe up`` and ``render`` refuse it before any poll runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["KafkaScalerMetadata", "KedaMetadataError", "OPTIONS", "parse_partition_limitation"]


class KedaMetadataError(ValueError):
    """Trigger metadata KEDA would refuse; ``field`` is KEDA's name for the bad option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.detail = field, message


# KEDA's option name -> (attribute, kind, default). Defaults are KEDA's.
OPTIONS: dict[str, tuple[str, str, object]] = {
    "lagThreshold": ("lag_threshold", "int", 10),
    "activationLagThreshold": ("activation_lag_threshold", "int", 0),
    "offsetResetPolicy": ("offset_reset_policy", "enum:latest,earliest", "latest"),
    "allowIdleConsumers": ("allow_idle_consumers", "bool", False),
    "excludePersistentLag": ("exclude_persistent_lag", "bool", False),
    "scaleToZeroOnInvalidOffset": ("scale_to_zero_on_invalid_offset", "bool", False),
    "limitToPartitionsWithLag": ("limit_to_partitions_with_lag", "bool", False),
    "ensureEvenDistributionOfPartitions": ("ensure_even_distribution_of_partitions", "bool", False),
    "partitionLimitation": ("partition_limitation_text", "str", ""),
}


@dataclass(frozen=True)
class KafkaScalerMetadata:
    """The scaling options of one KEDA kafka trigger (KEDA's defaults)."""

    lag_threshold: int = 10
    activation_lag_threshold: int = 0
    offset_reset_policy: str = "latest"
    allow_idle_consumers: bool = False
    exclude_persistent_lag: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    limit_to_partitions_with_lag: bool = False
    ensure_even_distribution_of_partitions: bool = False
    partition_limitation_text: str = ""

    def partition_limitation(self, topic: str | None) -> tuple[int, ...] | None:
        """The partitions scaled on, or None for all; KEDA ignores the option without a topic."""
        if not topic or not self.partition_limitation_text.strip():
            return None
        return parse_partition_limitation(self.partition_limitation_text)

    @classmethod
    def parse(cls, metadata: Mapping[str, object], *, topic: str | None = "topic") -> KafkaScalerMetadata:
        """KEDA's ``parseKafkaMetadata`` + ``Validate`` for the scaling options.

        ``metadata`` holds KEDA's option names; values may be strings (as in a ScaledObject)
        or YAML scalars. ``topic`` is the trigger's topic (None: every topic of the group)."""
        values: dict[str, Any] = {}
        for name, value in metadata.items():
            if name not in OPTIONS:
                raise KedaMetadataError(name, f"not a KEDA kafka scaling option; known: {sorted(OPTIONS)}")
            attribute, kind, _default = OPTIONS[name]
            values[attribute] = _convert(name, kind, value)
        meta = cls(**values)
        meta.validate(topic)
        return meta

    def validate(self, topic: str | None) -> None:
        """The rules of KEDA's ``kafkaMetadata.Validate`` (same order, same conflicts)."""
        if self.lag_threshold <= 0:
            raise KedaMetadataError("lagThreshold", "must be a positive number")
        if self.activation_lag_threshold < 0:
            raise KedaMetadataError("activationLagThreshold", "must be a non-negative number")
        if topic and self.partition_limitation_text.strip():
            parse_partition_limitation(self.partition_limitation_text)
        if self.allow_idle_consumers and self.limit_to_partitions_with_lag:
            raise KedaMetadataError(
                "limitToPartitionsWithLag",
                "allowIdleConsumers and limitToPartitionsWithLag cannot both be true",
            )
        if not topic and self.limit_to_partitions_with_lag:
            raise KedaMetadataError("limitToPartitionsWithLag", "needs a topic")
        if self.limit_to_partitions_with_lag and self.ensure_even_distribution_of_partitions:
            raise KedaMetadataError(
                "ensureEvenDistributionOfPartitions",
                "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot both be true",
            )
        if not topic and self.ensure_even_distribution_of_partitions:
            raise KedaMetadataError("ensureEvenDistributionOfPartitions", "needs a topic")

    def as_trigger_metadata(self) -> dict[str, str]:
        """KEDA's string form of every option that differs from KEDA's default, plus the
        two thresholds (always written, so a reader sees them)."""
        out: dict[str, str] = {}
        for name, (attribute, kind, default) in OPTIONS.items():
            value = getattr(self, attribute)
            if value == default and name not in ("lagThreshold", "activationLagThreshold"):
                continue
            out[name] = ("true" if value else "false") if kind == "bool" else str(value)
        return out


def parse_partition_limitation(text: str) -> tuple[int, ...]:
    """``"1-4,8,10-12"`` -> (1, 2, 3, 4, 8, 10, 11, 12), KEDA's ``parsePartitionLimitation``."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            bounds = part.split("-")
            if len(bounds) != 2:
                raise KedaMetadataError("partitionLimitation", f"invalid partition limitation range: {part}")
            start, end = (_int32("partitionLimitation", b.strip(), part) for b in bounds)
            out.extend(range(start, end + 1))
        else:
            out.append(_int32("partitionLimitation", part, part))
    return tuple(out)


def _int32(field: str, text: str, part: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise KedaMetadataError(field, f"invalid partition limitation: {part}") from None
    if not -(2**31) <= value < 2**31:
        raise KedaMetadataError(field, f"invalid partition limitation: {part}")
    return value


def _convert(name: str, kind: str, value: object) -> object:
    """KEDA's typed-config conversion: Go ``strconv`` rules for ints and bools."""
    text = value if isinstance(value, str) else _yaml_scalar(value)
    if kind == "int":
        try:
            if isinstance(value, bool) or not _GO_INT.fullmatch(text):
                raise ValueError
            return int(text, 10)
        except ValueError:
            raise KedaMetadataError(name, f"must be an integer, got {value!r}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        parsed = _GO_BOOLS.get(text)
        if parsed is None:
            raise KedaMetadataError(name, f"must be true or false, got {value!r}")
        return parsed
    if kind.startswith("enum:"):
        allowed = kind.removeprefix("enum:").split(",")
        if text not in allowed:
            raise KedaMetadataError(name, f"must be one of {allowed}, got {value!r}")
        return text
    return text


_GO_INT = re.compile(r"[+-]?[0-9]+")  # Go's strconv.ParseInt: no spaces, no '_', no fractions
# Go's strconv.ParseBool, which KEDA's typed config uses.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


assert {f.name for f in fields(KafkaScalerMetadata)} == {a for a, _k, _d in OPTIONS.values()}
