"""Tests of cri_resmgr.cri.client: address normalization and a client against an
in-process CRI server on a unix socket (no root, no network)."""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from cri_resmgr.cri import api_pb2, api_pb2_grpc
from cri_resmgr.cri.client import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    AddressError,
    CriClient,
    RuntimeNotReady,
    normalize_address,
)
from cri_resmgr.errors import Error, RuntimeUnavailable


@pytest.mark.parametrize(
    "address, target",
    [
        ("/run/containerd/containerd.sock", "unix:/run/containerd/containerd.sock"),
        ("unix:///run/containerd/containerd.sock", "unix:/run/containerd/containerd.sock"),
        ("unix:/var/run/crio/crio.sock", "unix:/var/run/crio/crio.sock"),
        ("  /var/run/cri-resmgr/cri-resmgr.sock\n", "unix:/var/run/cri-resmgr/cri-resmgr.sock"),
        ("unix:////run/x.sock", "unix:/run/x.sock"),
        ("//run/x.sock", "unix:/run/x.sock"),
    ],
)
def test_normalize_address(address: str, target: str) -> None:
    assert normalize_address(address) == target


def test_normalize_relative_path_becomes_absolute() -> None:
    assert normalize_address("x/cri.sock") == "unix:" + os.path.abspath("x/cri.sock")


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "tcp://127.0.0.1:1234",
        "dns:///localhost:50051",
        "ipv4:127.0.0.1:1234",
        "npipe:////./pipe/containerd",
        "unix://host/run/x.sock",
        "unix:relative.sock",
        "unix://",
    ],
)
def test_normalize_rejects(address: str) -> None:
    with pytest.raises(AddressError) as info:
        normalize_address(address)
    message = str(info.value)
    assert "allowed" in message
    if address.strip():
        assert repr(address) in message
    # Usable both as the project's Error and as the ValueError callers expect.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, Error)


def test_client_rejects_bad_address() -> None:
    with pytest.raises(ValueError, match="tcp://"):
        CriClient("tcp://127.0.0.1:1")


def test_channel_options_are_kubelet_limits() -> None:
    assert MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert dict(CHANNEL_OPTIONS) == {
        "grpc.max_send_message_length": 16 * 1024 * 1024,
        "grpc.max_receive_message_length": 16 * 1024 * 1024,
        # reconnect within a second of a restarted runtime (not grpc's 2-minute backoff)
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    """A fake runtime: Version, a 5 MiB ExecSync reply and a two-batch stream."""

    def __init__(self) -> None:
        self.versions: list = []

    def Version(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        self.versions.append(request.version)
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name="fake",
            runtime_version="1.0",
            runtime_api_version="v1",
        )

    def ExecSync(self, request: Any, context: Any) -> Any:  # noqa: N802
        # Larger than gRPC's default 4 MiB receive limit: needs the client's option.
        return api_pb2.ExecSyncResponse(stdout=b"x" * (5 * 1024 * 1024))

    def StreamContainers(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        yield api_pb2.StreamContainersResponse(containers=[api_pb2.Container(id="a")])
        yield api_pb2.StreamContainersResponse(
            containers=[api_pb2.Container(id="b"), api_pb2.Container(id="c")]
        )


class _Images(api_pb2_grpc.ImageServiceServicer):
    def ImageFsInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        usage = api_pb2.FilesystemUsage(fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var"))
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])


@pytest.fixture()
def socket_dir() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def fake_runtime(socket_dir: Path) -> Iterator[tuple]:
    sock = socket_dir / "rt.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=list(CHANNEL_OPTIONS))
    runtime = _Runtime()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(_Images(), server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield sock, runtime
    finally:
        server.stop(grace=None)


def test_client_against_fake_runtime(fake_runtime: tuple) -> None:
    sock, runtime = fake_runtime
    for address in (str(sock), f"unix://{sock}", f"unix:{sock}"):
        with CriClient(address) as client:
            assert client.target == f"unix:{sock}"
            reply = client.wait_ready(timeout=10)
            assert reply.runtime_name == "fake"
            assert client.version(timeout=5).runtime_api_version == "v1"
            info = client.image.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=5)
            assert info.image_filesystems[0].fs_id.mountpoint == "/var"
    assert runtime.versions and set(runtime.versions) == {"v1"}


def test_client_receives_messages_above_grpc_default_limit(fake_runtime: tuple) -> None:
    sock, _ = fake_runtime
    with CriClient(str(sock)) as client:
        reply = client.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id="c"), timeout=10)
        assert len(reply.stdout) == 5 * 1024 * 1024


def test_client_server_streaming(fake_runtime: tuple) -> None:
    sock, _ = fake_runtime
    with CriClient(str(sock)) as client:
        batches = list(
            client.runtime.StreamContainers(api_pb2.StreamContainersRequest(), timeout=10)
        )
        assert [[c.id for c in b.containers] for b in batches] == [["a"], ["b", "c"]]


def test_unimplemented_method_reports_status(fake_runtime: tuple) -> None:
    sock, _ = fake_runtime
    with CriClient(str(sock)) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.runtime.Status(api_pb2.StatusRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_wait_ready_gives_up_on_missing_socket(socket_dir: Path) -> None:
    missing = socket_dir / "absent.sock"
    client = CriClient(str(missing))
    try:
        with pytest.raises(RuntimeNotReady) as info:
            client.wait_ready(timeout=0.3, interval=0.05)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, RuntimeUnavailable)
        assert str(missing) in str(info.value)
        assert "UNAVAILABLE" in str(info.value)
    finally:
        client.close()


def test_close_is_idempotent_and_final(fake_runtime: tuple) -> None:
    sock, _ = fake_runtime
    client = CriClient(str(sock))
    client.wait_ready(timeout=10)
    client.close()
    client.close()
    with pytest.raises(ValueError):
        client.version(timeout=1)
    assert repr(client) == f"CriClient({str(sock)!r})"
