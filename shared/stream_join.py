"""The streamed rolling aggregates joined onto a training frame (train environment only).

``join_aggregates`` is what ``shared.modelling.load_training_frame`` calls for a contract with a
``streaming:`` section. It lists the stream view's offline Parquet parts
(``s3://features/stream/<dataset>/``); when there are some it joins them point-in-time
(``shared.feast_stream.training_frame``): each row gets the aggregates of its entity's newest
streamed reading at or before the row's event time, and rows with no such reading are dropped
(Feast's file offline store drops them). The joined frame is used when it keeps at least
``MIN_ROWS_PER_CLASS`` rows of each label class (enough to cross-validate); otherwise, and when
there are no parts, the frame is returned unchanged: the model is trained on the contract's
features only (``shared.feature_set``, recorded as ``faaspipe.feature_set=contract``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import layout
from shared.contracts import Contract

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MIN_ROWS_PER_CLASS", "has_stream_rows", "join_aggregates"]

log = logging.getLogger("faaspipe.stream_join")

MIN_ROWS_PER_CLASS = 5  # modelling.CV_FOLDS: stratified CV needs one row of each class per fold


def has_stream_rows(contract: Contract) -> bool:
    """True if the stream view of ``contract`` has at least one offline part."""
    from shared import settings

    parts = settings.s3_client().list_objects(
        layout.FEATURES, prefix=layout.stream_prefix(contract.name), recursive=True
    )
    return any(str(p.object_name).endswith(".parquet") for p in parts)


def join_aggregates(contract: Contract, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (entity key, ``event_timestamp``, label, ...) with the declared aggregates joined
    point-in-time, or ``frame`` unchanged when the stream does not cover enough of it."""
    from shared import feast_stream

    if contract.streaming is None or not has_stream_rows(contract):
        return frame
    names = list(contract.streaming.feature_names)
    joined = feast_stream.training_frame(contract, frame)
    joined = joined.dropna(subset=names)
    counts = joined[contract.label].value_counts()
    if len(counts) < 2 or int(counts.min()) < MIN_ROWS_PER_CLASS:
        log.info(
            "%s: %d of %d training rows have a streamed window (classes %s): training on the "
            "contract's features only",
            contract.ref,
            len(joined),
            len(frame),
            counts.to_dict(),
        )
        return frame
    log.info(
        "%s: %d of %d training rows joined with streamed aggregates", contract.ref, len(joined), len(frame)
    )
    joined = joined.drop(columns=[c for c in joined.columns if c not in (*frame.columns, *names)])
    for name in names:
        joined[name] = joined[name].astype("float64")
    return joined.reset_index(drop=True)
