"""The faaspipe CloudEvent catalogue: event types, their ``data`` schemas and typed constructors.

Every type is ``dev.faaspipe.<noun>.<verb>.v<N>``; its JSON Schema (draft 2020-12) lives in
``events/schemas/<type>.json``. Keep this package light: it is imported by every function.
"""

from events.batch_events import BatchRejected, BatchScored
from events.catalogue import EVENT_TYPES, SCHEMA_BASE_URI, EventSpec, get_spec, is_known, schema_uri
from events.data_events import (
    DatasetIngested,
    DatasetRejected,
    FeaturesMaterialised,
    ObjectCreated,
    RejectReason,
)
from events.envelope import EventData, new_event, rfc3339
from events.errors import EventDataError, UnknownEventType
from events.model_events import (
    Gate,
    Label,
    LabelRecorded,
    ModelMetrics,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    PredictionLogged,
    PredictionOutput,
    RolloutTag,
)
from events.ops_events import (
    DriftDetected,
    DriftMetric,
    DriftWindow,
    RetrainRequested,
    SamplePing,
    SamplePong,
)
from events.rollout_events import RolloutDecided, RolloutStarted
from events.stream_events import ReadingReason, SensorReading, SensorReadingRejected
from events.tuning_events import (
    Params,
    Pruner,
    StudyCompleted,
    TrainingSample,
    TrialFinished,
    TrialProgress,
    TrialRequested,
)
from events.validation import event_data, validate_data, validate_event

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_BASE_URI",
    "BatchRejected",
    "BatchScored",
    "DatasetIngested",
    "DatasetRejected",
    "DriftDetected",
    "DriftMetric",
    "DriftWindow",
    "EventData",
    "EventDataError",
    "EventSpec",
    "FeaturesMaterialised",
    "Gate",
    "Label",
    "LabelRecorded",
    "ModelMetrics",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRejected",
    "ObjectCreated",
    "Params",
    "Pruner",
    "PredictionLogged",
    "PredictionOutput",
    "ReadingReason",
    "RejectReason",
    "RetrainRequested",
    "RolloutDecided",
    "RolloutTag",
    "RolloutStarted",
    "SamplePing",
    "SamplePong",
    "SensorReading",
    "SensorReadingRejected",
    "StudyCompleted",
    "TrainingSample",
    "TrialFinished",
    "TrialProgress",
    "TrialRequested",
    "UnknownEventType",
    "event_data",
    "get_spec",
    "is_known",
    "new_event",
    "rfc3339",
    "schema_uri",
    "validate_data",
    "validate_event",
]
