"""Data contracts: one YAML per dataset in this folder, read by ingest, features, training and serving.

Stdlib + PyYAML only (it is imported by the lean serving image too). Derived features are
arithmetic expressions over canonical columns, evaluated by a tiny AST walker (no ``eval``)
that works on Python numbers and on numpy arrays / pandas Series alike.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from shared.contracts.streaming import StreamingSpec, parse_streaming
from shared.contracts.training import DEFAULT_MAX_ROWS, SampleRule, parse_training
from shared.rollout import RolloutPolicy, RolloutPolicyError

CONTRACTS_DIR = Path(__file__).resolve().parent
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.USub,
    ast.UAdd,
    *_BINOPS,
)


class ContractError(ValueError):
    """A contract file is malformed."""


@dataclass(frozen=True)
class Column:
    source: str
    name: str
    type: str  # int | float | string | category
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    description: str
    landing_prefix: str
    formats: tuple[str, ...]
    max_rejected_fraction: float
    columns: tuple[Column, ...]
    entity_key: str
    label: str
    timestamp_origin: datetime
    timestamp_unit: str
    timestamp_source: str
    derived: dict[str, str]
    model_features: tuple[str, ...]
    feature_view: str
    model_name: str
    rollout: RolloutPolicy = RolloutPolicy()  # how a new challenger reaches live traffic
    streaming: StreamingSpec | None = None  # rolling windows of streamed readings (None: no stream)
    training: SampleRule | None = None  # how a big version's training set is sampled (set by load_contract)

    @property
    def stream_feature_view(self) -> str:
        """The Feast view streamed readings are pushed to: latest values + rolling aggregates."""
        return f"{self.feature_view}_stream"

    @property
    def sample_rule(self) -> SampleRule:
        """The declared training-set rule (the section's defaults when it has none)."""
        return self.training or SampleRule(max_rows=DEFAULT_MAX_ROWS, stratify=self.label)

    @property
    def ref(self) -> str:
        """``name@version``, as carried on events."""
        return f"{self.name}@{self.version}"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def categoricals(self) -> dict[str, tuple[Any, ...]]:
        return {c.name: tuple(c.values or ()) for c in self.columns if c.type == "category"}

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        """Columns a caller must send to get a prediction from raw values (features before derivation)."""
        needed: list[str] = []
        for feature in self.model_features:
            names = _names(self.derived[feature]) if feature in self.derived else [feature]
            needed.extend(n for n in names if n not in needed)
        return tuple(needed)

    @property
    def encoded_features(self) -> tuple[str, ...]:
        """The model's input columns after one-hot encoding of categoricals, in order."""
        out: list[str] = []
        for feature in self.model_features:
            if feature in self.categoricals:
                out.extend(f"{feature}_{v}" for v in self.categoricals[feature])
            else:
                out.append(feature)
        return tuple(out)

    def derive(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` plus the derived features (works for scalars, numpy arrays or pandas Series)."""
        out = dict(row)
        for name, expression in self.derived.items():
            out[name] = evaluate(expression, out)
        return out

    def encode(self, row: dict[str, Any]) -> list[float]:
        """One row (canonical + derived columns) → the model's numeric input vector."""
        vector: list[float] = []
        for feature in self.model_features:
            if feature in self.categoricals:
                vector.extend(1.0 if row[feature] == v else 0.0 for v in self.categoricals[feature])
            else:
                vector.append(float(row[feature]))
        return vector


@functools.lru_cache(maxsize=256)
def _parse(expression: str) -> ast.Expression:
    tree = ast.parse(expression, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ContractError(f"derived expression {expression!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ContractError(f"derived expression {expression!r}: only numeric constants are allowed")
    return tree


@functools.lru_cache(maxsize=256)
def _names(expression: str) -> tuple[str, ...]:
    """The names an expression reads (cached: a streamed reading's check asks for each one)."""
    return tuple(n.id for n in ast.walk(_parse(expression)) if isinstance(n, ast.Name))


def evaluate(expression: str, values: dict[str, Any]) -> Any:
    """Evaluate an arithmetic expression over ``values`` without ``eval``."""
    return _compiled(expression)(values)


@functools.lru_cache(maxsize=256)
def _compiled(expression: str) -> Callable[[dict[str, Any]], Any]:
    """The expression's tree as nested closures, built once (a streamed reading evaluates each
    derived feature: walking the tree per reading was most of its check)."""
    return _closure(_parse(expression).body)


def _closure(node: ast.AST) -> Callable[[dict[str, Any]], Any]:
    if isinstance(node, ast.BinOp):
        op, left, right = _BINOPS[type(node.op)], _closure(node.left), _closure(node.right)
        return lambda values: op(left(values), right(values))
    if isinstance(node, ast.UnaryOp):
        operand = _closure(node.operand)
        return (lambda values: -operand(values)) if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Name):
        name = node.id
        return lambda values: values[name]
    constant = node.value  # type: ignore[attr-defined]
    return lambda values: constant


def _column(doc: dict[str, Any]) -> Column:
    values = doc.get("values")
    return Column(
        source=doc["source"],
        name=doc["name"],
        type=doc["type"],
        nullable=bool(doc.get("nullable")),
        min=doc.get("min"),
        max=doc.get("max"),
        values=tuple(values) if values is not None else None,
        pattern=doc.get("pattern"),
    )


def load_contract(path: Path) -> Contract:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        ts = doc["event_timestamp"]
        contract = Contract(
            name=doc["name"],
            version=int(doc["version"]),
            description=doc.get("description", ""),
            landing_prefix=doc["landing_prefix"],
            formats=tuple(doc.get("formats", ["csv", "parquet"])),
            max_rejected_fraction=float(doc.get("max_rejected_fraction", 0.0)),
            columns=tuple(_column(c) for c in doc["columns"]),
            entity_key=doc["entity_key"],
            label=doc["label"],
            timestamp_origin=datetime.fromisoformat(ts["origin"]),
            timestamp_unit=ts.get("unit", "minutes"),
            timestamp_source=ts["derive_from"],
            derived=dict(doc.get("derived", {})),
            model_features=tuple(doc["model_features"]),
            feature_view=doc["feature_view"],
            model_name=doc["model_name"],
            rollout=RolloutPolicy.parse(doc.get("rollout"), str(path)),
        )
        numeric = [c.name for c in contract.columns if c.type in ("int", "float")] + list(contract.derived)
        numeric = [n for n in numeric if n not in (contract.entity_key, contract.label)]
        discrete = [c.name for c in contract.columns if c.type in ("int", "string", "category")]
        contract = dataclasses.replace(
            contract,
            streaming=parse_streaming(doc.get("streaming"), str(path), numeric),
            training=parse_training(
                doc.get("training"),
                str(path),
                label=contract.label,
                columns=discrete,
                classes={c.name: c.values for c in contract.columns},
            ),
        )
    except (RolloutPolicyError, ValueError) as exc:
        raise ContractError(str(exc)) from exc
    except KeyError as exc:
        raise ContractError(f"{path}: missing required field {exc}") from exc
    known = {c.name for c in contract.columns} | set(contract.derived)
    for expression in contract.derived.values():
        unknown = set(_names(expression)) - known
        if unknown:
            raise ContractError(
                f"{path}: derived expression {expression!r} uses unknown columns {sorted(unknown)}"
            )
    missing = [f for f in contract.model_features if f not in known]
    if missing:
        raise ContractError(f"{path}: model_features not declared as columns or derived: {missing}")
    return contract


def contract_dirs() -> list[Path]:
    """This folder, then the ``:``-separated folders of ``FAASPIPE_CONTRACT_DIRS`` (if set)."""
    extra = [Path(p) for p in os.environ.get("FAASPIPE_CONTRACT_DIRS", "").split(os.pathsep) if p]
    return [CONTRACTS_DIR, *extra]


@functools.cache
def all_contracts() -> dict[str, Contract]:
    """Every contract by name; a name or a model name declared twice is an error."""
    found: dict[str, Contract] = {}
    models: dict[str, str] = {}
    for folder in contract_dirs():
        for path in sorted(folder.glob("*.yaml")):
            contract = load_contract(path)
            if contract.name in found:
                raise ContractError(f"{path}: contract {contract.name!r} is declared twice")
            if contract.model_name in models:
                raise ContractError(
                    f"{path}: model {contract.model_name!r} is already the model of {models[contract.model_name]!r}"
                )
            found[contract.name] = contract
            models[contract.model_name] = contract.name
    return found


def contract_for_model(model_name: str) -> Contract | None:
    """The contract that declares ``model_name`` (None if none does)."""
    return next((c for c in all_contracts().values() if c.model_name == model_name), None)


def get_contract(name: str) -> Contract:
    try:
        return all_contracts()[name]
    except KeyError:
        raise ContractError(f"no data contract named {name!r}; have {sorted(all_contracts())}") from None


def contract_for_key(key: str) -> Contract | None:
    """The contract whose ``landing_prefix`` the object key falls under (longest prefix wins)."""
    matches = [c for c in all_contracts().values() if key.startswith(c.landing_prefix)]
    return max(matches, key=lambda c: len(c.landing_prefix)) if matches else None
