"""Tests of cri_resmgr.cri.methods: the method table derived from the descriptors."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from cri_resmgr.cri import api_pb2, api_pb2_grpc, methods
from cri_resmgr.cri.methods import (
    IMAGE_SERVICE,
    METHODS,
    RUNTIME_SERVICE,
    MethodInfo,
    method_path,
    short_name,
)

# The upstream runtime.v1 method set (Kubernetes cri-api, v1.37 and later), written
# out here as the specification the generated schema must meet.
RUNTIME_UNARY = [
    "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
    "ListPodSandbox", "CreateContainer", "StartContainer", "StopContainer",
    "RemoveContainer", "ListContainers", "ContainerStatus", "UpdateContainerResources",
    "ReopenContainerLog", "ExecSync", "Exec", "Attach", "PortForward", "ContainerStats",
    "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats", "UpdateRuntimeConfig",
    "Status", "CheckpointContainer", "CheckpointPod", "RestorePod",
    "ListMetricDescriptors", "ListPodSandboxMetrics", "RuntimeConfig",
    "UpdatePodSandboxResources",
]  # fmt: skip
RUNTIME_STREAMING = [
    "StreamPodSandboxes", "StreamContainers", "StreamContainerStats",
    "StreamPodSandboxStats", "GetContainerEvents", "StreamPodSandboxMetrics",
]  # fmt: skip
IMAGE_UNARY = ["ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"]
IMAGE_STREAMING = ["StreamImages"]


def test_count_matches_descriptors() -> None:
    services = api_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    assert len(METHODS) == sum(len(s.methods) for s in services.values())
    assert len(METHODS) == (
        len(RUNTIME_UNARY) + len(RUNTIME_STREAMING) + len(IMAGE_UNARY) + len(IMAGE_STREAMING)
    )


@pytest.mark.parametrize(
    "service, names, streaming",
    [
        (RUNTIME_SERVICE, RUNTIME_UNARY, False),
        (RUNTIME_SERVICE, RUNTIME_STREAMING, True),
        (IMAGE_SERVICE, IMAGE_UNARY, False),
        (IMAGE_SERVICE, IMAGE_STREAMING, True),
    ],
)
def test_every_method_present_with_streaming_flag(
    service: str, names: list, streaming: bool
) -> None:
    for name in names:
        path = f"/{service}/{name}"
        info = METHODS[path]
        assert info.path == path
        assert info.service == service
        assert info.name == name
        assert info.server_streaming is streaming, name
        assert info.client_streaming is False
        assert info.unary is (not streaming)


def test_each_entry_matches_its_descriptor() -> None:
    for info in METHODS.values():
        service = api_pb2.DESCRIPTOR.services_by_name[info.service.rsplit(".", 1)[1]]
        method = service.methods_by_name[info.name]
        assert info.request.DESCRIPTOR is method.input_type
        assert info.response.DESCRIPTOR is method.output_type
        assert info.server_streaming == method.server_streaming


def test_request_and_response_classes() -> None:
    info = METHODS["/runtime.v1.RuntimeService/CreateContainer"]
    assert info.request is api_pb2.CreateContainerRequest
    assert info.response is api_pb2.CreateContainerResponse
    events = METHODS["/runtime.v1.RuntimeService/GetContainerEvents"]
    assert events.request is api_pb2.GetEventsRequest
    assert events.response is api_pb2.ContainerEventResponse
    images = METHODS["/runtime.v1.ImageService/StreamImages"]
    assert images.request is api_pb2.StreamImagesRequest
    assert images.response is api_pb2.StreamImagesResponse


def test_table_is_read_only_and_entries_frozen() -> None:
    with pytest.raises(TypeError):
        METHODS["/x/y"] = METHODS["/runtime.v1.RuntimeService/Version"]  # type: ignore[index]
    info = METHODS["/runtime.v1.RuntimeService/Version"]
    with pytest.raises(AttributeError):
        info.name = "Other"  # type: ignore[misc]
    assert isinstance(info, MethodInfo)


def test_service_methods_in_schema_order() -> None:
    runtime = methods.service_methods(RUNTIME_SERVICE)
    assert [m.name for m in runtime][:3] == ["Version", "RunPodSandbox", "StopPodSandbox"]
    assert len(runtime) == len(RUNTIME_UNARY) + len(RUNTIME_STREAMING)
    image = methods.service_methods(IMAGE_SERVICE)
    assert [m.name for m in image] == [
        "ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo",
    ]  # fmt: skip


def test_method_path() -> None:
    assert method_path("RuntimeService", "Version") == "/runtime.v1.RuntimeService/Version"
    assert method_path("ImageService", "PullImage") == "/runtime.v1.ImageService/PullImage"
    assert method_path(RUNTIME_SERVICE, "Status") == "/runtime.v1.RuntimeService/Status"
    for path in METHODS:
        service, name = path[1:].split("/")
        assert method_path(service.rsplit(".", 1)[1], name) == path


@pytest.mark.parametrize(
    "path, name",
    [
        ("/runtime.v1.RuntimeService/Version", "Version"),
        ("/runtime.v1.ImageService/ImageFsInfo", "ImageFsInfo"),
        ("/runtime.v1.RuntimeService/SomeFutureCall", "SomeFutureCall"),
        ("/runtime.v1alpha2.RuntimeService/Version", "Version"),
        ("/grpc.health.v1.Health/Check", "Check"),
        ("NoSlash", "NoSlash"),
        ("/trailing/", "trailing"),
    ],
)
def test_short_name(path: str, name: str) -> None:
    assert short_name(path) == name


class _RecordingChannel:
    """Stands in for grpc.Channel and records how each method path is created."""

    def __init__(self) -> None:
        self.kinds: dict = {}

    def _factory(self, kind: str) -> Callable[..., Any]:
        def make(path: str, **_: Any) -> str:
            self.kinds[path] = kind
            return path

        return make

    def __getattr__(self, kind: str) -> Callable[..., Any]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._factory(kind)
        raise AttributeError(kind)


def test_generated_stubs_agree_with_table() -> None:
    channel = _RecordingChannel()
    api_pb2_grpc.RuntimeServiceStub(channel)
    api_pb2_grpc.ImageServiceStub(channel)
    assert set(channel.kinds) == set(METHODS)
    for path, kind in channel.kinds.items():
        expected = "unary_stream" if METHODS[path].server_streaming else "unary_unary"
        assert kind == expected, path
