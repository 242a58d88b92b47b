"""Idempotent event handling: drop CloudEvents that were already processed.

Delivery is at-least-once, so a handler may see the same event (same ``source`` +
``id``) more than once: a broker retry after a timeout, a replica restart before the
offset commit, a trigger replay. A store records each key as *in progress* (with a
lease) while a handler runs and as *done* (with the encoded reply) afterwards, so a
duplicate is answered from the store instead of being processed again.

Backends (pick with :func:`open_store`):

* ``sqlite:///abs/path.db[?retention_days=7]`` -- one file, shared by every process on
  one machine (WAL mode, busy timeout, claims in ``BEGIN IMMEDIATE`` transactions).
* ``redis://host:port/db[?prefix=faaspipe:idem:&ttl_days=7]`` -- shared by replicas on
  several machines (claim = one Lua script around ``SET NX PX``).

A lease that expires (the worker crashed or hung) lets the next claim take the key over.
:func:`run_once` keeps its lease short (``FAASPIPE_IDEMPOTENCY_LEASE_S``, default 5 s) and
renews it from a heartbeat thread while the handler runs, so a long handler keeps its claim
and a killed worker's claim lapses within seconds: the broker's retries of that event then
run it instead of meeting "in progress" until they are dead-lettered.
``release`` and ``renew`` only touch a claim still held by the same store object, so a slow
worker cannot wipe or extend the claim of the worker that took its key over.

Layout (after AWS Lambda Powertools' idempotency utility): the mechanism is
:mod:`.mechanism`, the backends sit behind :mod:`.persistence.base`, errors in
:mod:`.exceptions`.
"""

from shared.idempotency.exceptions import DuplicateInFlight
from shared.idempotency.mechanism import DEFAULT_LEASE_S, event_key, run_once
from shared.idempotency.persistence import open_store
from shared.idempotency.persistence.base import Claim, IdempotencyStore, NamespacedStore
from shared.idempotency.persistence.redis import RedisIdempotencyStore
from shared.idempotency.persistence.sqlite import SQLiteIdempotencyStore

__all__ = [
    "DEFAULT_LEASE_S",
    "Claim",
    "DuplicateInFlight",
    "IdempotencyStore",
    "NamespacedStore",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
    "event_key",
    "open_store",
    "run_once",
]
