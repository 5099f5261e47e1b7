"""The table of CRI methods, derived from the descriptors of the generated schema.

Every method of `runtime.v1.RuntimeService` and `runtime.v1.ImageService` appears in
`METHODS`, keyed by its full gRPC path (`/runtime.v1.RuntimeService/Version`), with
its service, short name, request and response message classes and whether the server
streams its replies. Nothing here is a hand-written list: adding a method to
`api.proto` and regenerating adds it to the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from cri_resmgr.cri import api_pb2

log = logging.getLogger(__name__)

#: Full names of the two CRI services.
RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"
#: Protobuf package of the CRI schema.
PACKAGE = "runtime.v1"


@dataclass(frozen=True)
class MethodInfo:
    """One CRI method.

    `path` is the gRPC method path the relay sees (`/runtime.v1.RuntimeService/Version`),
    `service` the full service name (`runtime.v1.RuntimeService`), `name` the short
    method name (`Version`). `request` and `response` are the generated message
    classes. `server_streaming` is true for methods whose reply is a stream of
    messages (GetContainerEvents and the Stream* list calls); no CRI method streams
    its request, but `client_streaming` is kept for completeness.
    """

    path: str
    service: str
    name: str
    request: type[Message]
    response: type[Message]
    server_streaming: bool
    client_streaming: bool = False

    @property
    def unary(self) -> bool:
        """True when both the request and the reply are single messages."""
        return not (self.server_streaming or self.client_streaming)


def method_path(service_short: str, name: str) -> str:
    """The gRPC path of method `name` of service `service_short`.

    `service_short` is the service name without the package (`RuntimeService`,
    `ImageService`); a full name (`runtime.v1.RuntimeService`) is accepted as well.
    `method_path("RuntimeService", "Version")` is `/runtime.v1.RuntimeService/Version`.
    """
    service = service_short if "." in service_short else f"{PACKAGE}.{service_short}"
    return f"/{service}/{name}"


def short_name(path: str) -> str:
    """The short method name of a gRPC path.

    `/runtime.v1.RuntimeService/Version` gives `Version`; a path that is not a CRI
    method gives its last `/`-separated component (`/x.Y/Z` gives `Z`).
    """
    info = METHODS.get(path)
    if info is not None:
        return info.name
    return path.rstrip("/").rsplit("/", 1)[-1]


def _service_methods(service: ServiceDescriptor) -> dict[str, MethodInfo]:
    table: dict[str, MethodInfo] = {}
    for method in service.methods:
        info = MethodInfo(
            path=f"/{service.full_name}/{method.name}",
            service=service.full_name,
            name=method.name,
            request=message_factory.GetMessageClass(method.input_type),
            response=message_factory.GetMessageClass(method.output_type),
            server_streaming=bool(method.server_streaming),
            client_streaming=bool(method.client_streaming),
        )
        table[info.path] = info
    return table


def _build_table() -> Mapping[str, MethodInfo]:
    table: dict[str, MethodInfo] = {}
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        table.update(_service_methods(service))
    return MappingProxyType(table)


#: Every CRI method by full gRPC path, in the order of api.proto (read-only).
METHODS: Mapping[str, MethodInfo] = _build_table()


def service_methods(service: str) -> list[MethodInfo]:
    """The methods of one service (`RUNTIME_SERVICE` or `IMAGE_SERVICE`), in schema order."""
    return [info for info in METHODS.values() if info.service == service]
