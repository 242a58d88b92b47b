"""Run a handler at most once per event key, holding a short lease renewed by a heartbeat."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shared.idempotency.exceptions import DuplicateInFlight
from shared.idempotency.persistence.base import IdempotencyStore

_log = logging.getLogger("faaspipe.idempotency")
R = TypeVar("R")

DEFAULT_LEASE_S = float(os.environ.get("FAASPIPE_IDEMPOTENCY_LEASE_S", "5"))


def event_key(event: Any) -> str:
    """Unambiguous key for a CloudEvents v2 event: ``"<len(source)>:<source>:<id>"``.

    The length prefix fixes where ``source`` ends, so no ``source``/``id`` pair can
    collide with another one whatever characters they contain.
    """
    source = str(event.get_source())
    event_id = str(event.get_id())
    return f"{len(source)}:{source}:{event_id}"


def run_once(
    store: IdempotencyStore,
    event: Any,
    handler: Callable[[Any], R | None],
    *,
    encode_reply: Callable[[R], bytes],
    decode_reply: Callable[[bytes], R],
    lease_s: float | None = None,
) -> R | None:
    """Run ``handler(event)`` at most once per event key (while the store remembers it).

    * done        -> the stored reply, decoded (``None`` if there was none); handler not called.
    * in_progress -> raises :class:`DuplicateInFlight`.
    * new         -> calls the handler, renewing the claim's lease (``lease_s``, default
      ``DEFAULT_LEASE_S``) every quarter lease meanwhile; on success stores
      ``encode_reply(reply)`` (``None`` for a ``None`` reply) and returns the reply; on
      exception releases the key and re-raises, so a redelivery runs it again.
    """
    lease = DEFAULT_LEASE_S if lease_s is None else lease_s
    key = event_key(event)
    claim = store.claim(key, lease)
    if claim.state == "done":
        return None if claim.reply is None else decode_reply(claim.reply)
    if claim.state == "in_progress":
        raise DuplicateInFlight(f"event {key!r} is already being processed")
    beat = _Heartbeat(store, key, lease)
    try:
        reply = handler(event)
    except BaseException:
        beat.stop()
        store.release(key)
        raise
    beat.stop()
    store.complete(key, None if reply is None else encode_reply(reply))
    return reply


class _Heartbeat:
    """Renews one claim's lease every quarter lease until stopped (or the claim is lost)."""

    def __init__(self, store: IdempotencyStore, key: str, lease_s: float) -> None:
        self.store, self.key, self.lease_s = store, key, lease_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idempotency-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.lease_s / 4):
            try:
                if not self.store.renew(self.key, self.lease_s):
                    _log.warning("lost the claim on %s (lease expired); a retry may run it too", self.key)
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried next beat
                _log.exception("renewing the claim on %s failed", self.key)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.lease_s)
