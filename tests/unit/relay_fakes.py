"""Test doubles for the relay tests: a fake runtime and a relay running in a thread.

`FakeRuntime` is an in-process grpcio server on a unix socket whose methods are plain
Python functions on raw bytes (generic handlers, identity serializers). Methods it does
not know get grpcio's own UNIMPLEMENTED. It records every call it sees (method,
request bytes, invocation metadata, time remaining before the deadline).

`RelayThread` runs an asyncio loop in a daemon thread; `start_relay()` builds and starts
a `Relay` on it, `run()` runs any coroutine there. `RecordingObserver` collects the
`CallRecord`s of an observer. `Wire` drives one relay connection frame by frame, the
test playing both the client and the runtime. Sizes are bytes, times seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import hpack

from cri_resmgr import http2
from cri_resmgr import relay as relay_mod

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGE = "/runtime.v1.ImageService/"
ECHO = RUNTIME + "Version"  # unary: replies "<server name>:" + request
IMAGE_ECHO = IMAGE + "ImageStatus"  # unary, image service
HOOKED = RUNTIME + "CreateContainer"  # unary: the method tests hook
SLOW = RUNTIME + "StopContainer"  # unary: sleeps (request = seconds as text), echoes
FAIL = RUNTIME + "RemoveContainer"  # unary: aborts with the code/details in the request
META = RUNTIME + "Status"  # unary: echoes metadata back as initial/trailing metadata
STREAM = RUNTIME + "GetContainerEvents"  # server-streaming: request "n,size;n,size"
IMAGE_STREAM = IMAGE + "StreamImages"  # server-streaming, image service
UNKNOWN = "/no.such.Service/Nothing"

CLIENT_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),  # not min_...: that is the connect timeout
    ("grpc.enable_retries", 0),
)

Metadata = Tuple[Tuple[str, Any], ...]


@dataclass
class Seen:
    """One call as the fake runtime saw it."""

    method: str
    request: bytes
    metadata: Metadata
    time_remaining: Optional[float]
    context: grpc.ServicerContext


UnaryFn = Callable[[bytes, grpc.ServicerContext], bytes]
StreamFn = Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]


class FakeRuntime(grpc.GenericRpcHandler):
    """A grpcio server on `path` serving raw-bytes methods from `unary` and `stream`."""

    def __init__(
        self, path: str, name: str = "runtime", workers: int = 64, options: Sequence[Any] = ()
    ) -> None:
        self.path = path
        self.name = name
        self.workers = workers
        self.options = tuple(options)  # extra grpc server options
        self.unary: Dict[str, UnaryFn] = {}
        self.stream: Dict[str, StreamFn] = {}
        self.seen: List[Seen] = []
        self.cancelled = threading.Event()  # set when a call's context is cancelled
        self.server: Optional[grpc.Server] = None
        self._lock = threading.Lock()
        self.unary[ECHO] = self._echo
        self.unary[IMAGE_ECHO] = self._echo
        self.unary[HOOKED] = self._echo
        self.unary[SLOW] = self._slow
        self.unary[FAIL] = self._fail
        self.unary[META] = self._meta
        self.stream[STREAM] = self._stream
        self.stream[IMAGE_STREAM] = self._stream

    # -- behaviours

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.name.encode() + b":" + request

    def _slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(self.cancelled.set)
        end = time.monotonic() + float(request.decode())
        while time.monotonic() < end and context.is_active():
            time.sleep(0.005)
        return self.name.encode() + b":" + request

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        code, _, details = request.decode("utf-8").partition(":")
        context.set_trailing_metadata(
            (
                ("trailer-key", "trailer-value"),
                ("err-bin", b"\x00\xff"),
                ("grpc-status-details-bin", b"\x08\x05rich"),
            )
        )
        context.abort(grpc.StatusCode[code], details)
        raise AssertionError("unreachable")

    def _meta(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        md = tuple(
            (k, v)
            for k, v in context.invocation_metadata()
            if k.startswith("x-") or k.endswith("-bin")
        )
        context.send_initial_metadata(tuple(("initial-" + k, v) for k, v in md))
        context.set_trailing_metadata(tuple(("trailing-" + k, v) for k, v in md))
        return request

    def _stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Request "count,size;count,size;...": yields numbered messages of those sizes."""
        context.add_callback(self.cancelled.set)
        context.send_initial_metadata((("x-stream-from", self.name),))
        n = 0
        for part in request.decode().split(";"):
            count, size = (int(x) for x in part.split(","))
            for _ in range(count):
                head = f"{self.name}:{n}:".encode()
                yield head + bytes([n % 251]) * max(0, size - len(head))
                n += 1

    # -- grpc plumbing

    def service(self, details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler]:
        method = details.method
        if method in self.unary:
            fn = self.unary[method]

            def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
                self._record(method, request, context)
                return fn(request, context)

            return grpc.unary_unary_rpc_method_handler(unary)
        if method in self.stream:
            sfn = self.stream[method]

            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                self._record(method, request, context)
                return sfn(request, context)

            return grpc.unary_stream_rpc_method_handler(stream)
        return None

    def _record(self, method: str, request: bytes, context: grpc.ServicerContext) -> None:
        seen = Seen(
            method, request, tuple(context.invocation_metadata()), context.time_remaining(), context
        )
        with self._lock:
            self.seen.append(seen)

    def calls(self, method: str) -> List[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method]

    def start(self) -> FakeRuntime:
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.workers),
            handlers=(self,),
            options=tuple(CLIENT_OPTIONS[:2]) + self.options,
        )
        server.add_insecure_port("unix:" + self.path)
        server.start()
        self.server = server
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None


class RecordingObserver(relay_mod.Observer):
    """Wants `want` of every method (or of `methods`); keeps the records it gets."""

    def __init__(self, want: int, methods: Optional[Sequence[str]] = None) -> None:
        self.want = want
        self.methods = methods
        self.records: List[relay_mod.CallRecord] = []
        self._cond = threading.Condition()

    def wants(self, method: str) -> int:
        if self.methods is not None and method not in self.methods:
            return relay_mod.WANT_NONE
        return self.want

    def observe(self, record: relay_mod.CallRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> List[relay_mod.CallRecord]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.records) >= count, timeout)
            return list(self.records)


class RelayThread:
    """An asyncio loop in a daemon thread, running relays for a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relay-loop", daemon=True)
        self.thread.start()
        self.relays: List[relay_mod.Relay] = []

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the loop and return its result."""

        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    def start_relay(
        self,
        path: str,
        runtime: str,
        *,
        image: Optional[str] = None,
        hooks: Optional[Dict[str, relay_mod.Hook]] = None,
        observers: Sequence[relay_mod.Observer] = (),
        mode: int = 0o660,
    ) -> relay_mod.Relay:
        relay = relay_mod.Relay(runtime, image, hooks=hooks, observers=observers)
        self.run(relay.start(path, mode))
        self.relays.append(relay)
        return relay

    def close(self) -> None:
        for relay in self.relays:
            try:
                self.run(relay.stop(0.0))
            except Exception:  # noqa: BLE001 - teardown of an already stopped relay
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# --- frame-level harness -------------------------------------------------------------

Frame = Tuple[int, int, int, bytes]  # type, flags, stream id, payload


class FakeTransport:
    """Collects what the relay writes to one side of a connection."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.buf += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> List[Frame]:
        """The complete frames written since the last call."""
        frames: List[Frame] = []
        pos = 0
        while len(self.buf) - pos >= 9:
            length, ftype, flags, sid = http2.read_header(self.buf, pos)
            if pos + 9 + length > len(self.buf):
                break
            frames.append((ftype, flags, sid, bytes(self.buf[pos + 9 : pos + 9 + length])))
            pos += 9 + length
        del self.buf[:pos]
        return frames


class Wire:
    """A relay connection (`_Conn`) driven frame by frame; the test plays both peers.

    No event loop: calls the relay answers itself must not end their request stream
    (that would dispatch them to a worker); the test completes them with `reply()`.
    """

    def __init__(
        self,
        hooks: Optional[Dict[str, relay_mod.Hook]] = None,
        observers: Sequence[relay_mod.Observer] = (),
    ) -> None:
        self.relay = relay_mod.Relay("/nonexistent/runtime.sock", hooks=hooks, observers=observers)
        self.conn = relay_mod._Conn(self.relay)
        self.down = FakeTransport()  # towards the client
        self.up = FakeTransport()  # towards the runtime
        self.conn.connection_made(self.down)  # type: ignore[arg-type]
        self.conn.preface = False
        self.conn.up = self.up  # type: ignore[assignment]
        self.client_encoder = hpack.Encoder()
        self.server_encoder = hpack.Encoder()
        self.client_decoder = hpack.Decoder()  # what the client makes of the relay's blocks
        self.runtime_decoder = hpack.Decoder()  # what the runtime makes of the client's

    # -- building frames

    def request(
        self,
        sid: int,
        method: str,
        end_stream: bool = False,
        extra: Sequence[Tuple[str, Any]] = (),
        max_frame: int = http2.DEFAULT_MAX_FRAME,
    ) -> bytes:
        """A client's request HEADERS (and CONTINUATIONs past `max_frame`)."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
        block = self.client_encoder.encode(headers)
        flags = http2.FLAG_END_STREAM if end_stream else 0
        return http2.split_frames(http2.HEADERS, flags, sid, block, max_frame)

    def response(self, sid: int, headers: Sequence[Tuple[str, str]], end_stream: bool) -> bytes:
        """The runtime's HEADERS (response headers or trailers) for `sid`."""
        block = self.server_encoder.encode(list(headers))
        flags = http2.FLAG_END_STREAM if end_stream else 0
        return http2.split_frames(http2.HEADERS, flags, sid, block, 16384)

    # -- feeding the relay

    def from_client(self, *frames: bytes) -> None:
        self.conn.data_received(b"".join(frames))

    def from_runtime(self, *frames: bytes) -> None:
        self.conn.server_bytes(b"".join(frames))

    def reply(self, sid: int, *messages: bytes, code: int = 0, details: str = "") -> None:
        """Complete the relay-answered call on `sid` as a hook would."""
        stream = self.conn.streams[sid]
        result = relay_mod._Result(list(messages), CODES[code], details)
        self.conn._local_reply(stream, result)

    # -- reading what the relay wrote

    def _decoded(self, frames: List[Frame], decoder: hpack.Decoder) -> List[Tuple[Any, ...]]:
        out: List[Tuple[Any, ...]] = []
        block: Optional[Tuple[int, int, bytearray]] = None
        for ftype, flags, sid, payload in frames:
            if ftype == http2.HEADERS:
                assert block is None, "HEADERS inside an open header block"
                content = bytes(http2.strip_padding(flags, payload, True))
                block = (sid, flags, bytearray(content))
            elif ftype == http2.CONTINUATION:
                assert block is not None and block[0] == sid, "stray CONTINUATION"
                block[2].extend(payload)
            else:
                assert block is None, "frame inside an open header block"
                out.append((ftype, flags, sid, payload))
                continue
            if flags & http2.FLAG_END_HEADERS:
                headers = tuple(decoder.decode(bytes(block[2])))
                out.append((http2.HEADERS, block[1], block[0], headers))
                block = None
        return out

    def to_client(self) -> List[Tuple[Any, ...]]:
        """Frames the client got; header blocks decoded to header tuples."""
        return self._decoded(self.down.take(), self.client_decoder)

    def to_runtime(self) -> List[Tuple[Any, ...]]:
        return self._decoded(self.up.take(), self.runtime_decoder)


CODES = {c.value[0]: c for c in grpc.StatusCode}
