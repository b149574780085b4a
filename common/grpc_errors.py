"""The one server interceptor that maps :class:`common.errors.RackcellsError` to gRPC statuses.

Servicers raise; they never call ``context.abort`` themselves. This keeps the status code, the
``ErrorInfo`` reason and the ``BadRequest`` field violations consistent across every RPC, and
turns anything unexpected into ``INTERNAL`` with a correlation id that is also logged.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from common.errors import ERROR_DOMAIN, RackcellsError

__all__ = ["ErrorInterceptor", "status_of"]

log = logging.getLogger(__name__)


def status_of(err: RackcellsError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with details) that carries ``err`` to the caller."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN)
    info.metadata.update(err.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in err.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, RackcellsError):
        await context.abort_with_status(rpc_status.to_status(status_of(exc)))
    incident = uuid.uuid4().hex[:12]
    log.exception("internal error %s", incident, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error {incident}; see the server log"
    )
    await context.abort_with_status(rpc_status.to_status(status))


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (RackcellsError, Exception) as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def _wrap_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc)

    return wrapper


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio signals context.abort() with this private-ish exception type; let it through.
    return type(exc).__name__ == "AbortError" or isinstance(exc, grpc.aio.AbortError)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary and unary-stream handler with the error mapping."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
