"""A small synchronous CRI client for the tests, the demo and the service.

`CriClient(address)` opens an insecure gRPC channel to a unix socket with the message
limits kubelet uses (16 MiB both ways) and exposes the generated stubs as `.runtime`
(RuntimeService) and `.image` (ImageService). `wait_ready()` retries `Version` until
the runtime answers. `normalize_address()` turns the socket addresses people write
(`/run/containerd/containerd.sock`, `unix:///run/...`) into a gRPC target.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Sequence

import grpc

from cri_resmgr.cri import api_pb2, api_pb2_grpc
from cri_resmgr.errors import Error, RuntimeUnavailable

log = logging.getLogger(__name__)

#: Message size limit in bytes, both directions (kubelet's limit).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Channel options every CRI channel of this project uses (the relay's too).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A local socket: retry connecting within a second of the runtime coming back,
    # not after grpc's default backoff (which grows to two minutes). Not
    # grpc.min_reconnect_backoff_ms: grpc-core uses it as the connect timeout too.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: The CRI version string kubelet sends in VersionRequest.
KUBELET_API_VERSION = "v1"


class AddressError(Error, ValueError):
    """A CRI socket address that is not a unix socket path."""


class RuntimeNotReady(RuntimeUnavailable, TimeoutError):
    """The CRI endpoint did not answer Version before the deadline of wait_ready()."""


def normalize_address(address: str) -> str:
    """Turn a CRI socket address into a gRPC target `unix:/abs/path`.

    Accepted: a bare path (`/run/containerd/containerd.sock`, or a relative path,
    which is made absolute against the current directory), `unix:///abs/path` and
    `unix:/abs/path`. Anything else (another scheme such as `tcp://` or `dns:`, an
    empty string, `unix://host/path` with an authority) raises AddressError, a
    ValueError naming the value and what is allowed.
    """
    allowed = "allowed: a socket path (/run/x.sock), unix:///abs/path or unix:/abs/path"
    value = address.strip()
    if not value:
        raise AddressError(f"empty CRI socket address; {allowed}")
    if value.startswith("unix://"):
        path = value[len("unix://") :]
        if not path.startswith("/"):
            raise AddressError(
                f"CRI socket address {address!r} has a host part or a relative path after "
                f"unix://; {allowed}"
            )
    elif value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path.startswith("/"):
            raise AddressError(
                f"CRI socket address {address!r} is not an absolute unix path; {allowed}"
            )
    elif "://" in value or _has_scheme(value):
        raise AddressError(
            f"CRI socket address {address!r} uses an unsupported scheme; only unix sockets "
            f"are supported; {allowed}"
        )
    else:
        path = value
        if not path.startswith("/"):
            import os  # noqa: PLC0415 - only needed for relative paths

            path = os.path.abspath(path)
    # Collapse the leading slashes of unix:////x into one.
    path = "/" + path.lstrip("/")
    return f"unix:{path}"


def _has_scheme(value: str) -> bool:
    """True for `scheme:rest` where scheme looks like a URI scheme (dns:, ipv4:, ...)."""
    head, sep, _ = value.partition(":")
    return bool(sep) and bool(head) and "/" not in head and head[0].isalpha()


class CriClient:
    """A synchronous client of one CRI endpoint (runtime or relay socket).

    `address` is anything `normalize_address` accepts. The channel connects lazily;
    use `wait_ready()` to block until the endpoint answers. Close it with `close()`
    or use the client as a context manager.
    """

    def __init__(self, address: str, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> None:
        self.address = address
        self.target = normalize_address(address)
        self.channel = grpc.insecure_channel(self.target, options=list(options))
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)
        self._closed = False

    def version(self, timeout: float | None = None) -> api_pb2.VersionResponse:
        """Call RuntimeService.Version; `timeout` in seconds."""
        return self.runtime.Version(
            api_pb2.VersionRequest(version=KUBELET_API_VERSION), timeout=timeout
        )

    def wait_ready(
        self, timeout: float = 10.0, interval: float = 0.1, max_interval: float = 1.0
    ) -> api_pb2.VersionResponse:
        """Call Version until it answers or `timeout` seconds have passed.

        Retries after any gRPC error (socket missing, connection refused, runtime still
        starting), waiting `interval` seconds at first and doubling up to `max_interval`.
        Returns the first VersionResponse; raises RuntimeNotReady (a TimeoutError and a
        RuntimeUnavailable) naming the address and the last error when the endpoint
        has not answered in time.
        """
        deadline = time.monotonic() + timeout
        delay = interval
        last: grpc.RpcError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self.version(timeout=max(min(remaining, 5.0), 0.01))
            except grpc.RpcError as exc:
                last = exc
                log.debug("CRI endpoint %s not ready: %s", self.target, _describe(exc))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, max_interval)
        detail = _describe(last) if last is not None else "no attempt completed"
        raise RuntimeNotReady(
            f"CRI endpoint {self.address} ({self.target}) did not answer Version within "
            f"{timeout:g} s: {detail}"
        )

    def close(self) -> None:
        """Close the channel; further calls fail. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CriClient({self.address!r})"


def _describe(exc: grpc.RpcError) -> str:
    """`CODE: details` of a gRPC error, or its text for errors without a status."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{code().name}: {details()}"
        except Exception:  # noqa: BLE001 - best effort for a message
            pass
    return str(exc)
