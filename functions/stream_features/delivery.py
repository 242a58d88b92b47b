"""A batch of readings from the topic, delivered as the broker delivers an event (Knative's
``DeliverySpec``): retried, then its failing readings isolated and dead-lettered.

The batch is processed; if that raises, it is processed again after ``backoffDelay * 2^n``
(exponential, or ``* n`` linear), up to ``retry`` more times (the state is untouched by a
failed attempt: one transaction, and a redelivered reading changes nothing). If it still
fails, the batch is split in halves, each processed once, in order; a half that fails is
split again, down to single readings. A single reading gets its own ``retry`` attempts with
the back-off; if it still fails it is dead-lettered: the reading as it came, with the
``knativeerror*`` extensions the broker's dispatcher adds (``knativeerrordest`` the topic and
consumer group, ``knativeerrorcode`` ``500``: the function failed, ``knativeerrordata`` the
error, base64) plus ``faaspipetrigger`` (the consumer group) and ``faaspipetopic`` (where
``faaspipe dlq replay`` puts it back). Only then are the batch's offsets committed: nothing is
lost, and one poison reading no longer holds the partition back forever.

A failure of the dead-letter write itself raises: the batch stays uncommitted and is read again.
"""

from __future__ import annotations

import base64
import logging
import threading
import traceback
from collections.abc import Callable, Sequence

from shared.cloudevents_io import CloudEvent, with_attributes
from shared.topology import Delivery

__all__ = ["ERROR_DATA_LIMIT", "Stopping", "deliver", "dead_letter_event"]

log = logging.getLogger("faaspipe.stream_features.delivery")

ERROR_DATA_LIMIT = 1024  # bytes of the error kept in knativeerrordata, as the dispatcher keeps


class Stopping(Exception):
    """The consumer is stopping during a back-off: the batch is left uncommitted."""


def dead_letter_event(event: CloudEvent, *, topic: str, group: str, error: BaseException) -> CloudEvent:
    """The reading as the broker dead-letters an event: ``knativeerror*`` added, data untouched."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return with_attributes(
        event,
        knativeerrordest=f"kafka://{topic}?group={group}",
        knativeerrorcode="500",
        knativeerrordata=base64.b64encode(text.encode()[:ERROR_DATA_LIMIT]).decode(),
        faaspipetrigger=group,
        faaspipetopic=topic,
    )


def deliver(
    events: Sequence[CloudEvent],
    process: Callable[[Sequence[CloudEvent]], object],
    spec: Delivery,
    dead_letter: Callable[[CloudEvent, BaseException], None],
    stopping: threading.Event,
) -> int:
    """Process ``events`` with ``spec``'s retries; the failing readings that remain are handed
    to ``dead_letter`` (which must raise if it could not store them). Returns how many were."""
    error = _attempts(events, process, spec, stopping, 1 + spec.retry)
    if error is None:
        return 0
    if len(events) == 1:  # it had its retries alone
        _dead(events[0], error, spec, dead_letter)
        return 1
    log.warning(
        "a batch of %d readings failed %d times (%s); isolating the failing readings",
        len(events),
        1 + spec.retry,
        error,
    )
    return _isolate(events, process, spec, dead_letter, stopping, error)


def _isolate(
    events: Sequence[CloudEvent],
    process: Callable[[Sequence[CloudEvent]], object],
    spec: Delivery,
    dead_letter: Callable[[CloudEvent, BaseException], None],
    stopping: threading.Event,
    error: BaseException,
) -> int:
    if len(events) == 1:
        # it failed once alone (the split's attempt): now its retries
        last = _attempts(events, process, spec, stopping, spec.retry, first_retry=1)
        if last is None:
            return 0
        _dead(events[0], last, spec, dead_letter)
        return 1
    half = len(events) // 2
    dead = 0
    for part in (events[:half], events[half:]):
        failed = _attempts(part, process, spec, stopping, 1)
        if failed is not None:
            dead += _isolate(part, process, spec, dead_letter, stopping, failed)
    return dead


def _dead(
    event: CloudEvent,
    error: BaseException,
    spec: Delivery,
    dead_letter: Callable[[CloudEvent, BaseException], None],
) -> None:
    log.error(
        "reading %s failed %d times alone: dead-lettering it (%s: %s)",
        event.get_id(),
        1 + spec.retry,
        type(error).__name__,
        error,
    )
    dead_letter(event, error)


def _attempts(
    events: Sequence[CloudEvent],
    process: Callable[[Sequence[CloudEvent]], object],
    spec: Delivery,
    stopping: threading.Event,
    tries: int,
    first_retry: int = 0,
) -> BaseException | None:
    """Up to ``tries`` attempts, backing off before each retry (``first_retry``: how many
    attempts came before these); None once one succeeded, else the last error."""
    error: BaseException | None = None
    for n in range(first_retry, first_retry + tries):
        if n and stopping.wait(spec.delay_before(n)):
            raise Stopping("stopping during a back-off")
        try:
            process(events)
            return None
        except Exception as exc:  # noqa: BLE001 - retried, then isolated and dead-lettered
            error = exc
    return error
