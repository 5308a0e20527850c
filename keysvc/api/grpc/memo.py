"""Serialized answers kept for reuse, and the registration that sends them as they are.

A hit's answer is the same message every time (one shared Decision per
cached key, module-level denials, one AuthzResult per key and route), so
Validate and Check keep its wire bytes and hand them to gRPC with no
response serializer: no message is built or serialized per call. The
request is still parsed by the generated message class (C++/upb), and the
reflection descriptors are the generated ones, untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

__all__ = ["AnswerMemo", "add_service"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class AnswerMemo(Generic[_K, _V]):
    """Values by key, at most `max_entries`, the oldest dropped first.

    Any thread reads; writers (sync-stack threads and the loop) insert and
    evict under one lock, held for O(1) dict work only. Values are never
    mutated once kept.
    """

    def __init__(self, max_entries: int) -> None:
        self._entries: dict[_K, _V] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _K) -> _V | None:
        """The value kept for `key`, or None."""
        return self._entries.get(key)

    def keep(self, key: _K, value: _V) -> _V:
        """Keep `value` for `key` unless another thread kept one meanwhile; return the one kept."""
        with self._lock:
            entries = self._entries
            kept = entries.get(key)
            if kept is not None:
                return kept
            if len(entries) >= self._max:
                del entries[next(iter(entries))]
            entries[key] = value
        return value


def add_service(
    server: grpc.Server | grpc.aio.Server, service: ServiceDescriptor, servicer: Any,
    raw_responses: Collection[str] = (),
) -> None:
    """Register `servicer`'s methods for `service` as the generated `add_*_to_server` does.

    Args:
        server: either stack's server.
        service: the generated service descriptor (the contract, as reflection serves it).
        servicer: an object with one handler attribute per method.
        raw_responses: methods whose handler returns the serialized response (bytes).
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise TypeError(f"{method.full_name}: client streams are not served")
        parse = message_factory.GetMessageClass(method.input_type).FromString
        serialize: Callable[[Any], bytes] | None = None
        if method.name not in raw_responses:
            serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming \
            else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=parse,
                                     response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods skip the per-call lookup by name (grpcio >= 1.62; not in types-grpcio yet).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[union-attr]

