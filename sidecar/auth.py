"""Who may call: an optional shared token that callers send as ``authorization: Bearer ...``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .answers import abort_with
from .errors import Unauthenticated


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Callers must send ``authorization: Bearer <authToken>``; health and reflection stay open."""

    def __init__(self, token: str, service: str) -> None:
        self._service = service
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await abort_with(context, Unauthenticated("send metadata 'authorization: Bearer <authToken>'"))

        self._deny = deny

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not details.method.startswith(f"/{self._service}/"):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        given = sent.encode() if isinstance(sent, str) else sent
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:  # no such method: let grpc answer UNIMPLEMENTED
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._deny,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
