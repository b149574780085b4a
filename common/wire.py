"""Responses that are already in wire form: protobuf bytes a servicer may return as they are.

Two hot paths never need a response as a Python message: a leaf answering ListNodes from Node
messages it keeps serialized, and the top relaying a leaf's reply to a named call (it routes by
name, so it never has to look inside). Parsing and re-serializing there would be pure cost, and
at a thousand nodes a page or one extra hop per call it is most of the cost.

The generated ``add_*Servicer_to_server`` functions pin each method's response serializer to
``Message.SerializeToString``, which refuses bytes. :func:`add_servicer` registers the same
handlers with a serializer that passes ``bytes`` through and serializes anything else as
before, so a servicer can mix both freely. Bytes returned this way must be a serialized message
of the method's response type; nothing checks that on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

__all__ = ["add_servicer", "passing_bytes"]

Serializer = Callable[[Any], bytes]


def passing_bytes(serialize: Serializer | None) -> Serializer:
    """``serialize``, except that bytes (a message already serialized) go out unchanged."""

    def serializer(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        if serialize is None:
            raise TypeError(f"no serializer for {type(response).__name__}")
        return serialize(response)

    return serializer


class _Captured:
    """Stands in for the server while a generated function registers its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Ignored: the same handlers also come by name, below."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.service = service
        self.handlers = dict(handlers)


def _with_bytes(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    serializer = passing_bytes(handler.response_serializer)
    deserializer = handler.request_deserializer
    behaviour: Any
    if handler.request_streaming and handler.response_streaming:
        behaviour = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(behaviour, deserializer, serializer)
    if handler.request_streaming:
        behaviour = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(behaviour, deserializer, serializer)
    if handler.response_streaming:
        behaviour = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(behaviour, deserializer, serializer)
    behaviour = handler.unary_unary
    return grpc.unary_unary_rpc_method_handler(behaviour, deserializer, serializer)


def add_servicer(
    add_generated: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
) -> None:
    """Register ``servicer`` as ``add_generated`` would, but let its methods return bytes."""
    captured = _Captured()
    add_generated(servicer, captured)
    if not captured.handlers:
        raise RuntimeError(f"{add_generated.__name__} registered no method handlers")
    handlers = {name: _with_bytes(h) for name, h in captured.handlers.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(captured.service, handlers),)
    )
    server.add_registered_method_handlers(captured.service, handlers)
