"""Server reflection, as both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only v1alpha, while newer grpcurl, Postman and
grpcui ask for v1 first. The two protos are the same messages under another
package, field for field, so one servicer answers both: v1 requests parse as
v1alpha messages and v1alpha answers serialize as v1 ones. The v1 file is
added to the descriptor pool (renamed from v1alpha's), so a client that
describes the v1 service is answered too. Hand-written because no released
grpcio-reflection has v1 for Python; drop it when one does.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Reflection over ``service_names`` plus both reflection services, on an aio server."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer((*service_names, V1, V1ALPHA))
    for name in (V1, V1ALPHA):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=alpha.ServerReflectionRequest.FromString,
            response_serializer=alpha.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return  # another Sidecar in this process added it
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, "grpc.reflection.v1"
    file.options.Clear()  # v1alpha's are deprecated=true and v1alpha's Go/Java package names
    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for method in file.service[0].method:
        method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
        method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    pool.Add(file)
