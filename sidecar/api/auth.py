"""Who may call: an optional shared token that callers send as ``authorization: Bearer ...``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..errors import SidecarError, Unauthenticated
from .answers import abort_with


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Callers must send ``authorization: Bearer <authToken>``; health and reflection stay open."""

    def __init__(
        self,
        token: str,
        service: str,
        refused: Callable[[str, SidecarError, grpc.aio.ServicerContext], None] | None = None,
    ) -> None:
        """``refused(method, error, context)`` logs and counts a call turned away (the servicer's)."""
        self._service = service
        self._expected = f"Bearer {token}".encode()
        self._refused = refused

    def _deny(self, method: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            error = Unauthenticated("send metadata 'authorization: Bearer <authToken>'")
            if self._refused is not None:
                self._refused(method, error, context)
            await abort_with(context, error)

        return deny

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
        deny = self._deny(details.method.rsplit("/", 1)[-1])
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                deny,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
