"""The streamed rolling aggregates a model scores, put into its request rows.

A model trained with the contract's rolling aggregates (``shared.feature_set``; ``LoadedModel.
aggregates``) scores them after the contract's features. By entity they come from the online
row the feature server returned (the stream view's latest values); in an instance the caller
sends them beside the raw inputs. A row without them is a 422 naming what is missing, never a
default: a zero torque mean is a real (and wrong) input.

By entity, the other declared aggregates the online row has are carried along too (``carry``),
not required: in a canary or shadow rollout the candidate may score aggregates the champion
does not, and it is given the same fresh values rather than failing on rows that lack them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from functions.predict.inputs import BadInput, RawRow
from shared import feature_set

__all__ = ["with_aggregates"]


def with_aggregates(
    rows: Sequence[RawRow],
    sources: Sequence[Any],
    aggregates: Sequence[str],
    labels: Sequence[str],
    carry: Sequence[str] = (),
) -> list[RawRow]:
    """``rows`` with the ``aggregates`` of their ``sources`` (same order; ``labels`` name them in
    messages, e.g. ``entity 7``), checked: a missing one is a 422, a non-number or a non-finite
    number a 400. The ``carry`` names a source has as finite numbers are added too, unchecked."""
    rows = _carried(rows, sources, [name for name in carry if name not in aggregates])
    if not aggregates:
        return rows
    out: list[RawRow] = []
    for row, source, where in zip(rows, sources, labels, strict=True):
        try:
            values = feature_set.aggregate_values(
                aggregates, source if isinstance(source, Mapping) else None, where
            )
        except feature_set.MissingAggregates as exc:
            raise BadInput(str(exc), status=422) from None
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{where}: rolling aggregates must be numbers: {exc}") from None
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise BadInput(f"{where}: rolling aggregate(s) {bad} are not finite numbers")
        out.append({**row, **values})
    return out


def _carried(rows: Sequence[RawRow], sources: Sequence[Any], names: Sequence[str]) -> list[RawRow]:
    if not names:
        return list(rows)
    out: list[RawRow] = []
    for row, source in zip(rows, sources, strict=True):
        extra: dict[str, float] = {}
        if isinstance(source, Mapping):
            for name in names:
                value = source.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    extra[name] = float(value)
        out.append({**row, **extra})
    return out
