"""A study's intermediate scores, shared by its trials, and the pruning decision taken on them.

Every trial keeps one record in the object store (``layout.study_progress``: state, score by
boosting round, completed successive-halving rungs, the round it was pruned at). At each
checkpoint a trial writes its own record, reads everyone else's and applies the study's pruner
(``shared.pruning``): the decision depends only on records in the shared store, so it is the
same whichever trial replica runs the trial, and a trial killed and redelivered takes up its own
record again — its completed rungs are not contested a second time, and a prune already decided
stays decided (as with Optuna's persistent storages).

Each trial writes only its own object, so records never conflict; a record read while its
trial writes it is simply a checkpoint older.

With the pruner ``none`` nothing is shared: the reporter keeps the trial's scores in the process
(they end up in its MLflow run) and neither reads nor writes records nor calls ``on_report``, so
a study without pruning emits no ``tuning.trial.progress``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared import layout
from shared.pruning import TrialRecord, should_prune


class ProgressUnavailable(RuntimeError):
    """The shared records could not be read or written: the trial is retried, not failed."""


@dataclass
class ProgressDoc:
    """A trial's record as stored: the pruner's view (``TrialRecord``) plus the pruned round."""

    number: int
    state: str = "running"
    values: dict[int, float] = field(default_factory=dict)
    rungs: dict[int, float] = field(default_factory=dict)
    pruned_step: int | None = None

    def record(self) -> TrialRecord:
        return TrialRecord(self.number, self.state, dict(self.values), dict(self.rungs))  # type: ignore[arg-type]

    def to_doc(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "values": {str(k): v for k, v in sorted(self.values.items())},
            "rungs": {str(k): v for k, v in sorted(self.rungs.items())},
            "pruned_step": self.pruned_step,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ProgressDoc:
        return cls(
            number=int(doc["number"]),
            state=str(doc.get("state", "running")),
            values={int(k): float(v) for k, v in (doc.get("values") or {}).items()},
            rungs={int(k): float(v) for k, v in (doc.get("rungs") or {}).items()},
            pruned_step=doc.get("pruned_step"),
        )


class ProgressStore(Protocol):
    def get(self, study_id: str, number: int) -> ProgressDoc | None: ...
    def put(self, study_id: str, doc: ProgressDoc) -> None: ...
    def all(self, study_id: str) -> list[ProgressDoc]: ...


class S3ProgressStore:
    """Records as JSON objects in the models bucket (``studies/<id>/progress/<n>.json``)."""

    def get(self, study_id: str, number: int) -> ProgressDoc | None:
        from shared import modelling

        doc = modelling.get_json(layout.MODELS, layout.study_progress(study_id, number))
        return None if doc is None else ProgressDoc.from_doc(doc)

    def put(self, study_id: str, doc: ProgressDoc) -> None:
        from shared import modelling

        modelling.put_json(layout.MODELS, layout.study_progress(study_id, doc.number), doc.to_doc())

    def all(self, study_id: str) -> list[ProgressDoc]:
        from shared import modelling

        prefix = layout.study_progress(study_id)
        out = []
        for item in modelling.s3().list_objects(layout.MODELS, prefix=prefix):
            name = str(item.object_name)
            if not name.endswith(".json"):
                continue
            data = modelling.get_bytes_or_none(layout.MODELS, name)
            if data is not None:
                out.append(ProgressDoc.from_doc(json.loads(data)))
        return out


class MemoryProgressStore:
    """Records in the process (benchmarks, unit tests)."""

    def __init__(self) -> None:
        self._docs: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, study_id: str, number: int) -> ProgressDoc | None:
        with self._lock:
            doc = self._docs.get((study_id, number))
        return None if doc is None else ProgressDoc.from_doc(doc)

    def put(self, study_id: str, doc: ProgressDoc) -> None:
        with self._lock:
            self._docs[(study_id, doc.number)] = doc.to_doc()

    def all(self, study_id: str) -> list[ProgressDoc]:
        with self._lock:
            docs = [d for (s, _), d in self._docs.items() if s == study_id]
        return [ProgressDoc.from_doc(d) for d in docs]


OnReport = Callable[[int, float, bool], None]


class Reporter:
    """The checkpoint callback of one trial (``modelling.cross_validate(on_checkpoint=...)``)."""

    def __init__(
        self,
        store: ProgressStore,
        study_id: str,
        number: int,
        *,
        pruner: str,
        report_every: int,
        on_report: OnReport | None = None,
    ) -> None:
        self.store = store
        self.study_id = study_id
        self.pruner = pruner
        self.report_every = report_every
        self.on_report = on_report
        self.shared = pruner != "none"
        previous = store.get(study_id, number) if self.shared else None
        # a redelivered trial keeps its completed rungs and an earlier prune decision
        self.doc = ProgressDoc(number=number)
        if previous is not None:
            self.doc.rungs = dict(previous.rungs)
            if previous.state == "pruned":
                self.doc.pruned_step = previous.pruned_step

    def __call__(self, step: int, score: float) -> bool:
        try:
            return self._report(step, score)
        except ValueError:
            raise  # a bad pruner name: the trial fails
        except Exception as exc:  # noqa: BLE001 - the store's client errors (MinIO, urllib3, OSError)
            raise ProgressUnavailable(f"trial {self.doc.number}'s progress at round {step}: {exc}") from exc

    def _report(self, step: int, score: float) -> bool:
        doc = self.doc
        doc.values[step] = float(score)
        if not self.shared:
            return False  # no pruning: no shared record, no progress event
        if doc.pruned_step is not None and step >= doc.pruned_step:
            pruned = True  # decided before this trial was killed and redelivered
        else:
            others = [d.record() for d in self.store.all(self.study_id) if d.number != doc.number]
            pruned, doc.rungs = should_prune(
                self.pruner, doc.values, doc.rungs, others, report_every=self.report_every
            )
        if pruned:
            doc.state, doc.pruned_step = "pruned", step
        self.store.put(self.study_id, doc)
        if self.on_report is not None:
            self.on_report(step, float(score), pruned)
        return pruned

    def finish(self, state: str) -> None:
        """The trial's end (``complete`` | ``failed``): a completed trial sets the median from now on."""
        if self.doc.state != "pruned":
            self.doc.state = state
        if not self.shared:
            return
        self.store.put(self.study_id, self.doc)
