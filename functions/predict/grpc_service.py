"""predict over gRPC: the Open Inference Protocol's ``inference.GRPCInferenceService``.

Served by ``python -m shared.runtime --kind grpc`` (``shared/grpc_server.py``) as the derived
function ``predict-grpc`` (``grpc:`` in ``functions/predict/function.yaml``): the same data
plane as the REST app (``functions/predict/dataplane.py``), on its own port, an h2c Knative
Service on the cluster (Knative gives a container one port).

Tensors come as typed ``contents`` or as ``raw_input_contents`` (what ``tritonclient.grpc``
sends); outputs are answered the way the inputs came. Errors follow the protocol: the gRPC
status carries them, ``INVALID_ARGUMENT`` for a bad request, ``NOT_FOUND`` for an unknown
model or version, ``UNAVAILABLE`` while a model cannot be loaded. Metadata ``x-request-id``
names the request when ``id`` is empty; ``cache-control: no-cache`` skips the response cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from functions.predict import dataplane
from functions.predict.dataplane import init  # noqa: F401 - the runtime calls it
from functions.predict.grpc_tensors import infer_response, tensors_from_request
from functions.predict.inputs import BadInput
from functions.predict.oip import inference_pb2 as pb
from functions.predict.oip import inference_pb2_grpc as pb_grpc
from functions.predict.repository import Unavailable

SERVICE = "inference.GRPCInferenceService"
REQUESTS = Counter("faaspipe_predict_grpc_requests_total", "gRPC requests", ["method", "code"])
LATENCY = Histogram(
    "faaspipe_predict_grpc_seconds",
    "Server-side gRPC latency",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
}


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key and isinstance(item.value, str):
            return item.value
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six OIP RPCs over the data plane; each maps the data plane's errors to a status."""

    def _run(self, method: str, context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return call()
        except BadInput as exc:
            code = HTTP_TO_GRPC.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
            message = str(exc)
        except Unavailable as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        finally:
            REQUESTS.labels(method, code.name).inc()
            LATENCY.labels(method).observe(time.perf_counter() - started)
        context.abort(code, message)

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            dataplane.model(dataplane.state())
        except Unavailable:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> pb.ModelReadyResponse:
            serving = dataplane.state()
            serving.models.resolve(request.name)  # an unknown model is NOT_FOUND, not "not ready"
            try:
                dataplane.model(serving, request.name, request.version or None)
            except Unavailable:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return self._run("ModelReady", context, call)

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        # The model repository and binary tensors are REST extensions: none apply over gRPC.
        return pb.ServerMetadataResponse(**dataplane.server_metadata([]))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> pb.ModelMetadataResponse:
            serving = dataplane.state()
            doc = dataplane.metadata(serving, dataplane.model(serving, request.name, request.version or None))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=doc["name"],
                versions=doc["versions"],
                platform=doc["platform"],
                inputs=[tensor(**t) for t in doc["inputs"]],
                outputs=[tensor(**t) for t in doc["outputs"]],
            )

        return self._run("ModelMetadata", context, call)

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> pb.ModelInferResponse:
            serving = dataplane.state()
            dataplane.model(serving, request.model_name, request.model_version or None)
            directives = (_metadata_value(context, "cache-control") or "").lower()
            result, wanted = dataplane.infer_v2(
                serving,
                request.model_name,
                request.model_version or None,
                tensors_from_request(request),
                requested=[o.name for o in request.outputs],
                request_id_hint=request.id or _metadata_value(context, "x-request-id"),
                route="grpc",
                fresh="no-cache" in directives or "no-store" in directives,
            )
            produced = result.outputs()
            return infer_response(
                result.model.name,
                result.model.version,
                result.request_id,
                [(name, *produced[name]) for name in wanted],
                raw=bool(request.raw_input_contents),
            )

        return self._run("ModelInfer", context, call)


def register(server: grpc.Server) -> None:
    """Add predict's services to a gRPC server (``shared/grpc_server.py`` calls this)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(), server)
