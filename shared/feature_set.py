"""A model's feature set: the contract's encoded features, then the streamed rolling aggregates
it was trained on (none, or all the contract declares).

Training decides it from the training frame (:func:`aggregates_in`): a contract with a
``streaming:`` section whose stream view has offline rows for the training rows gets the
aggregates joined point-in-time (``shared.modelling.load_training_frame``); otherwise the model
is trained on the contract's features only, as before streaming existed. The list is recorded
in the model's ``meta.json`` (``features``), its MLflow signature and the tag
``faaspipe.feature_set`` (``contract`` or ``contract+stream``); serving reads the aggregates a
model needs back from ``meta.json`` (:func:`model_aggregates`) and takes them from the online
stream view. A missing aggregate is an error, never a default.

Stdlib only (the serving image imports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.contracts import Contract

__all__ = [
    "CONTRACT_ONLY",
    "WITH_STREAM",
    "MissingAggregates",
    "aggregate_values",
    "aggregates_in",
    "encoded_features",
    "label",
    "model_aggregates",
]

CONTRACT_ONLY = "contract"
WITH_STREAM = "contract+stream"


class MissingAggregates(ValueError):
    """A row lacks rolling aggregates the model scores."""


def declared_aggregates(contract: Contract) -> tuple[str, ...]:
    return contract.streaming.feature_names if contract.streaming is not None else ()


def aggregates_in(contract: Contract, columns: Iterable[str]) -> tuple[str, ...]:
    """The aggregates a frame with ``columns`` trains on: all the contract declares, or none.

    A frame with only some of them is an error (a partial join is a bug, not a feature set)."""
    declared = declared_aggregates(contract)
    present = set(columns)
    found = [name for name in declared if name in present]
    if found and len(found) != len(declared):
        missing = [name for name in declared if name not in present]
        raise ValueError(f"training frame of {contract.ref} has aggregates {found} but lacks {missing}")
    return tuple(found)


def encoded_features(contract: Contract, aggregates: Sequence[str] = ()) -> tuple[str, ...]:
    """The model's input columns: ``contract.encoded_features``, then ``aggregates``."""
    return (*contract.encoded_features, *aggregates)


def label(aggregates: Sequence[str]) -> str:
    """The feature set's name recorded in MLflow (``contract`` or ``contract+stream``)."""
    return WITH_STREAM if aggregates else CONTRACT_ONLY


def model_aggregates(contract: Contract, features: Sequence[str]) -> tuple[str, ...]:
    """The aggregates of a model whose ``meta.json`` lists ``features``; ValueError if the list is
    neither the contract's encoded features nor those followed by its declared aggregates."""
    base = list(contract.encoded_features)
    for aggregates in ((), declared_aggregates(contract)):
        if list(features) == [*base, *aggregates]:
            return tuple(aggregates)
    raise ValueError(
        f"features {list(features)} are neither {contract.ref}'s {base} "
        f"nor those followed by its rolling aggregates {list(declared_aggregates(contract))}"
    )


def aggregate_values(
    aggregates: Sequence[str], row: Mapping[str, Any] | None, where: str
) -> dict[str, float]:
    """``aggregates`` of one row as floats; :class:`MissingAggregates` names the absent ones."""
    missing = [name for name in aggregates if row is None or row.get(name) is None]
    if missing:
        raise MissingAggregates(
            f"{where}: no rolling aggregate(s) {missing}; this model scores the streamed window "
            "(send sensor readings for the entity first)"
        )
    assert row is not None
    return {name: float(row[name]) for name in aggregates}
