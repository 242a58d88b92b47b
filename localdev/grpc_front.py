"""The gateway's gRPC front: ``grpc://127.0.0.1:<port base + 5>`` for every gRPC function.

What the Knative ingress and activator do for an h2c Service, for unary RPCs: a call is routed
on its service name (``/inference.GRPCInferenceService/ModelInfer`` → the function whose
``grpc.services`` lists it), held while the function has no ready replica (the supervisor is
told to start one), then forwarded as opaque bytes to a ready replica, round robin, with the
caller's metadata and deadline. The callee's status, details and trailing metadata come back
unchanged. In-flight and held calls count in the gateway's concurrency samples, so the KPA
scales the function on gRPC load as it does on HTTP load.

Not proxied (deliberately; no faaspipe service has them): streaming RPCs. An unknown service
is ``UNIMPLEMENTED``; no ready replica within the hold time is ``UNAVAILABLE``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from localdev.gateway import Gateway
from shared.auth import AuthError
from shared.auth.bearer import SUBJECT_HEADER, authenticate

log = logging.getLogger("faaspipe.grpc_front")

# metadata gRPC itself manages: never forwarded
RESERVED_METADATA = frozenset({"user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# the caller's credential and any subject it claims: never forwarded (the verified one is added)
AUTH_METADATA = frozenset({"authorization", SUBJECT_HEADER.lower()})
NOT_FORWARDED = RESERVED_METADATA | AUTH_METADATA


def _identity(data: bytes) -> bytes:
    return data


class GrpcFront(grpc.GenericRpcHandler):
    """Routes unary calls by service name to the gateway's ready replicas of a function."""

    def __init__(self, gateway: Gateway, routes: Mapping[str, str], port: int, *, threads: int = 32) -> None:
        """``routes``: fully qualified service name → function."""
        self.gateway = gateway
        self.routes = dict(routes)
        self.port = port
        self.threads = threads
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._server: grpc.Server | None = None

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="grpc-front"),
            handlers=[self],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        if server.add_insecure_port(f"127.0.0.1:{self.port}") == 0:
            raise OSError(f"could not bind the gRPC front on 127.0.0.1:{self.port}")
        server.start()
        self._server = server
        log.info("gRPC front on 127.0.0.1:%d for %s", self.port, sorted(self.routes))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=5).wait()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    # --- grpc.GenericRpcHandler ----------------------------------------------------
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # "/package.Service/Method"
        function = self.routes.get(method.split("/")[1] if method.count("/") == 2 else "")
        if function is None:
            return None  # UNIMPLEMENTED
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._forward(function, method, request, context),
            request_deserializer=_identity,
            response_serializer=_identity,
        )

    # --- forwarding ------------------------------------------------------------------
    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        """The gateway's rule over gRPC: with auth on, ``authorization: Bearer`` metadata is
        required (``UNAUTHENTICATED`` otherwise); the token stays here, the subject goes on."""
        if self.gateway.verifier is None:
            return None
        headers = {item.key: str(item.value) for item in context.invocation_metadata() or ()}
        try:
            return authenticate(headers, self.gateway.verifier).sub
        except AuthError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this line is never reached

    def _replicas(self, function: str) -> list[str]:
        """Ready replicas as host:port, rotated; held up to the gateway's hold time."""
        replicas = self.gateway.resolve(function) or []
        if not replicas:
            replicas = self._hold(function)
        targets = [url.split("://", 1)[-1] for url in replicas]
        if not targets:
            return []
        start = next(self._counter) % len(targets)
        return targets[start:] + targets[:start]

    def _hold(self, function: str) -> list[str]:
        stats = self.gateway.stats[function]
        with stats.lock:
            if stats.held >= self.gateway.max_held:
                return []
            stats.held += 1
        started = time.monotonic()
        try:
            if self.gateway.demand is not None:
                self.gateway.demand(function)
            while time.monotonic() - started < self.gateway.hold_s:
                replicas = self.gateway.resolve(function) or []
                if replicas:
                    held = time.monotonic() - started
                    self.gateway.cold_starts.append((function, held))
                    log.info("%s: gRPC call held %.2fs until a replica was ready", function, held)
                    return replicas
                time.sleep(0.02)
            return []
        finally:
            with stats.lock:
                stats.held -= 1

    def _channel(self, target: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                channel = grpc.insecure_channel(
                    target,
                    options=[
                        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ],
                )
                self._channels[target] = channel
            return channel

    def _forward(self, function: str, method: str, request: bytes, context: grpc.ServicerContext) -> Any:
        subject = self._authenticate(context)  # auth on: before a replica is looked for (as the gateway)
        targets = self._replicas(function)
        if not targets:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"function {function!r} has no ready replica after {self.gateway.hold_s:.0f}s "
                "(or too many calls held)",
            )
        metadata = [
            (item.key, item.value)
            for item in context.invocation_metadata() or ()
            if item.key not in NOT_FORWARDED and not item.key.startswith(":")
        ]
        if subject is not None:  # the verified caller, as the gateway forwards it (shared/auth)
            metadata.append((SUBJECT_HEADER.lower(), subject))
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > self.gateway.timeout_s else remaining
        stats = self.gateway.stats[function]
        with stats.lock:
            stats.in_flight += 1
            stats.last_request = time.monotonic()
        try:
            return self._call(targets, method, request, metadata, timeout, context)
        finally:
            with stats.lock:
                stats.in_flight -= 1
                stats.last_request = time.monotonic()

    def _call(
        self,
        targets: list[str],
        method: str,
        request: bytes,
        metadata: list[tuple[str, Any]],
        timeout: float | None,
        context: grpc.ServicerContext,
    ) -> Any:
        error: grpc.RpcError | None = None
        for target in targets[:2]:  # a replica that just went away: try one other
            stub: Callable[..., Any] = self._channel(target).unary_unary(
                method, request_serializer=_identity, response_deserializer=_identity
            )
            try:
                response, call = stub.with_call(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as exc:
                error = exc
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
                    continue  # refused before the replica saw the call: safe to send elsewhere
                break
            context.set_trailing_metadata(call.trailing_metadata() or ())
            return response
        assert error is not None
        context.set_trailing_metadata(error.trailing_metadata() or ())
        context.abort(error.code(), error.details() or "")
