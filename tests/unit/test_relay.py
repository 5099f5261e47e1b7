"""Tests of cri_resmgr.relay: the HTTP/2 frame relay against an in-process fake runtime.

Every test runs a grpcio server (relay_fakes.FakeRuntime) on a unix socket as the
runtime, a Relay on an asyncio loop in a thread, and grpcio channels to the relay as
clients. Nothing needs root or containerd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import grpc
import pytest
from relay_fakes import (
    CLIENT_OPTIONS,
    ECHO,
    FAIL,
    HOOKED,
    IMAGE_ECHO,
    IMAGE_STREAM,
    META,
    SLOW,
    STREAM,
    UNKNOWN,
    FakeRuntime,
    RecordingObserver,
    RelayThread,
    Wire,
    wait_until,
)

from cri_resmgr import errors, http2, relay, sockets
from cri_resmgr.cri import api_pb2
from cri_resmgr.relay import CallInfo, Forward, ForwardError


class Env:
    """One test's world: a fake runtime, a relay thread and client channels."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime_path = str(root / "rt.sock")
        self.relay_path = str(root / "relay.sock")
        self.thread = RelayThread()
        self.runtimes: List[FakeRuntime] = []
        self.channels: List[grpc.Channel] = []
        self.relay: Optional[relay.Relay] = None

    def runtime(
        self, path: Optional[str] = None, name: str = "runtime", options: Any = ()
    ) -> FakeRuntime:
        fake = FakeRuntime(path or self.runtime_path, name, options=options).start()
        self.runtimes.append(fake)
        return fake

    def start(self, image: Optional[str] = None, **kwargs: Any) -> relay.Relay:
        self.relay = self.thread.start_relay(
            self.relay_path, self.runtime_path, image=image, **kwargs
        )
        return self.relay

    def channel(self, path: Optional[str] = None, options: Any = CLIENT_OPTIONS) -> grpc.Channel:
        ch = grpc.insecure_channel("unix:" + (path or self.relay_path), options=options)
        self.channels.append(ch)
        return ch

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        self.thread.close()
        for fake in self.runtimes:
            fake.stop(None)


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # A short directory: unix socket paths are limited to 107 bytes.
    e = Env(tmp_path_factory.mktemp("rl"))
    yield e
    e.close()


@pytest.fixture
def started(env: Env) -> Env:
    """A running fake runtime and a relay in front of it."""
    env.runtime()
    env.start()
    return env


def call(channel: grpc.Channel, method: str, request: bytes, **kwargs: Any) -> bytes:
    return channel.unary_unary(method)(request, **kwargs)  # type: ignore[no-any-return]


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# --- pass-through ------------------------------------------------------------------


def test_unary_bytes_pass_unchanged(started: Env) -> None:
    ch = started.channel()
    payload = bytes(range(256)) * 3
    assert call(ch, ECHO, payload) == b"runtime:" + payload
    assert call(ch, ECHO, b"") == b"runtime:"
    assert started.runtimes[0].calls(ECHO)[0].request == payload


def test_unknown_method_gets_the_runtimes_unimplemented(started: Env) -> None:
    ch = started.channel()
    direct = rpc_error(lambda: call(started.channel(started.runtime_path), UNKNOWN, b"x"))
    err = rpc_error(lambda: call(ch, UNKNOWN, b"x"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.details() == direct.details()


@pytest.mark.parametrize(
    "code,details",
    [
        ("NOT_FOUND", "container abc not found"),
        ("INVALID_ARGUMENT", "näive ünïcode ✓ and 100% 'quotes' %41"),
        ("FAILED_PRECONDITION", "line\nbreak\ttab"),
        ("UNKNOWN", ""),
    ],
)
def test_status_and_details_pass(started: Env, code: str, details: str) -> None:
    err = rpc_error(lambda: call(started.channel(), FAIL, f"{code}:{details}".encode()))
    assert err.code() == grpc.StatusCode[code]
    assert err.details() == details
    trailing = dict(err.trailing_metadata())
    assert trailing["trailer-key"] == "trailer-value"
    assert trailing["err-bin"] == b"\x00\xff"
    assert trailing["grpc-status-details-bin"] == b"\x08\x05rich"


def test_metadata_both_ways(started: Env) -> None:
    ch = started.channel()
    md = (("x-one", "1"), ("x-two", "two words"), ("x-blob-bin", b"\x00\x01\xfe\xff"))
    reply, rpc = ch.unary_unary(META).with_call(b"m", metadata=md)
    assert reply == b"m"
    seen = dict(started.runtimes[0].calls(META)[0].metadata)
    assert seen["x-one"] == "1"
    assert seen["x-two"] == "two words"
    assert seen["x-blob-bin"] == b"\x00\x01\xfe\xff"
    initial = dict(rpc.initial_metadata())
    trailing = dict(rpc.trailing_metadata())
    assert initial["initial-x-one"] == "1"
    assert initial["initial-x-blob-bin"] == b"\x00\x01\xfe\xff"
    assert trailing["trailing-x-two"] == "two words"
    assert trailing["trailing-x-blob-bin"] == b"\x00\x01\xfe\xff"


def test_deadline_reaches_runtime_and_expires(started: Env) -> None:
    ch = started.channel()
    call(ch, ECHO, b"d", timeout=7.0)
    remaining = started.runtimes[0].calls(ECHO)[0].time_remaining
    assert remaining is not None and 5.0 < remaining <= 7.0
    call(ch, ECHO, b"n")
    no_deadline = started.runtimes[0].calls(ECHO)[1].time_remaining
    assert no_deadline is None or no_deadline > 1e6
    err = rpc_error(lambda: call(ch, SLOW, b"5", timeout=0.2))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert started.runtimes[0].cancelled.wait(3.0)


def test_cancel_reaches_runtime(started: Env) -> None:
    ch = started.channel()
    fut = ch.unary_unary(SLOW).future(b"10")
    assert wait_until(lambda: len(started.runtimes[0].calls(SLOW)) == 1)
    fut.cancel()
    assert started.runtimes[0].cancelled.wait(2.0)
    assert not started.runtimes[0].calls(SLOW)[0].context.is_active()


# --- large messages and concurrency ------------------------------------------------


def test_large_messages_both_ways(started: Env) -> None:
    ch = started.channel()
    big = os.urandom(15 * 1024 * 1024)
    assert call(ch, ECHO, big) == b"runtime:" + big


def test_many_concurrent_calls(started: Env) -> None:
    ch = started.channel()
    sizes = [1, 100, 20_000, 70_000, 300_000, 1_500_000]
    results: List[Optional[str]] = [None] * 200

    def worker(i: int) -> None:
        payload = (b"%d:" % i) * (sizes[i % len(sizes)] // 4 + 1)
        got = call(ch, ECHO, payload, timeout=20)
        results[i] = "ok" if got == b"runtime:" + payload else f"bad reply {i}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["ok"] * 200


# --- server streaming --------------------------------------------------------------


def _check_stream(messages: List[bytes], name: str, spec: str) -> None:
    sizes = []
    for part in spec.split(";"):
        count, size = (int(x) for x in part.split(","))
        sizes += [size] * count
    assert len(messages) == len(sizes)
    for n, (message, size) in enumerate(zip(messages, sizes)):
        head = f"{name}:{n}:".encode()
        assert message.startswith(head), (n, message[:40])
        assert len(message) == max(size, len(head))


def test_server_stream_intact_and_in_order(started: Env) -> None:
    spec = "1000,20;3,1048576;200,100"
    messages = list(started.channel().unary_stream(STREAM)(spec.encode()))
    _check_stream(messages, "runtime", spec)


def test_server_stream_cancel(started: Env) -> None:
    it = started.channel().unary_stream(STREAM)(b"100000000,1000")
    for _ in range(10):
        next(it)
    it.cancel()
    assert started.runtimes[0].cancelled.wait(3.0)


# --- hooks -------------------------------------------------------------------------


def test_hook_rewrites_request_and_reply(env: Env) -> None:
    fake = env.runtime()
    infos: List[CallInfo] = []

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        infos.append(info)
        reply = forward(b"rewritten:" + request)
        return reply + b":seen-by-hook"

    env.start(hooks={HOOKED: hook})
    ch = env.channel()
    md = (("x-who", "kubelet"), ("x-raw-bin", b"\x00\xff\x10"))
    reply = call(ch, HOOKED, b"req", metadata=md, timeout=5)
    assert reply == b"runtime:rewritten:req:seen-by-hook"
    assert [s.request for s in fake.calls(HOOKED)] == [b"rewritten:req"]
    info = infos[0]
    assert info.method == HOOKED
    assert dict(info.metadata)["x-who"] == "kubelet"
    assert dict(info.metadata)["x-raw-bin"] == b"\x00\xff\x10"
    assert info.deadline is not None
    seen = dict(fake.calls(HOOKED)[0].metadata)
    assert seen["x-who"] == "kubelet"
    assert seen["x-raw-bin"] == b"\x00\xff\x10"
    # Other methods still pass through on the same connection.
    assert call(ch, ECHO, b"plain") == b"runtime:plain"


def test_hook_reply_keeps_runtime_metadata(env: Env) -> None:
    fake = env.runtime()
    fake.unary[HOOKED] = fake.unary[META]
    env.start(hooks={HOOKED: lambda r, fwd, info: fwd(r)})
    md = (("x-one", "1"), ("x-b-bin", b"\x01\x02"))
    reply, rpc = env.channel().unary_unary(HOOKED).with_call(b"m", metadata=md)
    assert reply == b"m"
    assert dict(rpc.initial_metadata())["initial-x-one"] == "1"
    assert dict(rpc.trailing_metadata())["trailing-x-b-bin"] == b"\x01\x02"


def test_hook_allocation_error(env: Env) -> None:
    env.runtime()

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        raise errors.AllocationError("no free CPUs for ctr0: want 4, have 2")

    env.start(hooks={HOOKED: hook})
    err = rpc_error(lambda: call(env.channel(), HOOKED, b"r", timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("cri-resmgr:")
    assert "no free CPUs" in err.details()
    assert not env.runtimes[0].calls(HOOKED)


def test_hook_bug_is_internal_and_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.runtime()

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        raise KeyError("oops")

    env.start(hooks={HOOKED: hook})
    with caplog.at_level(logging.ERROR, logger="cri_resmgr.relay"):
        err = rpc_error(lambda: call(env.channel(), HOOKED, b"r", timeout=5))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details().startswith("cri-resmgr:")
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_hook_forward_error_passes_runtime_status(env: Env) -> None:
    fake = env.runtime()
    fake.unary[HOOKED] = fake.unary[FAIL]
    seen: List[ForwardError] = []

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        try:
            return forward(request)
        except ForwardError as exc:
            seen.append(exc)
            raise

    env.start(hooks={HOOKED: hook})
    err = rpc_error(lambda: call(env.channel(), HOOKED, "NOT_FOUND:gone ✓ 100%".encode()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "gone ✓ 100%"
    trailing = dict(err.trailing_metadata())
    assert trailing["trailer-key"] == "trailer-value"
    assert trailing["err-bin"] == b"\x00\xff"
    assert trailing["grpc-status-details-bin"] == b"\x08\x05rich"
    assert seen[0].code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("size", [70_000, 1024 * 1024, 15 * 1024 * 1024])
def test_hook_reply_larger_than_window(env: Env, size: int) -> None:
    env.runtime()
    big = os.urandom(size)
    env.start(hooks={HOOKED: lambda r, fwd, info: big})
    ch = env.channel()
    for _ in range(3):
        assert call(ch, HOOKED, b"r", timeout=10) == big
        assert call(ch, ECHO, big[:100_000], timeout=10) == b"runtime:" + big[:100_000]


def test_hook_request_large(env: Env) -> None:
    fake = env.runtime()
    env.start(hooks={HOOKED: lambda r, fwd, info: fwd(r)[-10:]})
    big = os.urandom(3 * 1024 * 1024)
    ch = env.channel()
    for _ in range(3):
        assert call(ch, HOOKED, big, timeout=10) == big[-10:]
    assert fake.calls(HOOKED)[0].request == big


def test_hook_request_over_limit(env: Env) -> None:
    env.runtime()
    env.start(hooks={HOOKED: lambda r, fwd, info: fwd(r)})
    ch = env.channel()
    err = rpc_error(lambda: call(ch, HOOKED, b"x" * (relay.MAX_MESSAGE + 10), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(ch, ECHO, b"after") == b"runtime:after"


TIGHT_WINDOWS = CLIENT_OPTIONS + (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 16384),
    ("grpc.http2.max_frame_size", 16384),
)


@pytest.mark.parametrize("options", [CLIENT_OPTIONS, TIGHT_WINDOWS], ids=["bdp", "tight"])
def test_hooked_and_passthrough_mixed_on_one_connection(env: Env, options: Any) -> None:
    """The flow-control and header-compression stress test: one client connection."""
    fake = env.runtime()
    replies = {n: os.urandom(n) for n in (0, 10, 5_000, 40_000, 70_000, 300_000)}
    sizes = sorted(replies)

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        i = int(request.split(b":")[0])
        if i % 3 == 0:
            return forward(request) + replies[sizes[i % len(sizes)]]
        return b"%d:" % i + replies[sizes[i % len(sizes)]]

    env.start(hooks={HOOKED: hook})
    ch = env.channel(options=options)
    hooked = ch.unary_unary(HOOKED)
    echo = ch.unary_unary(ECHO)
    streaming = ch.unary_stream(STREAM)
    total = 1500
    window = 150
    pending: List[Any] = []
    failures: List[str] = []

    def check(kind: str, i: int, got: Any) -> None:
        if kind == "hooked":
            want = replies[sizes[i % len(sizes)]]
            prefix = b"runtime:%d:" % i if i % 3 == 0 else b"%d:" % i
            ok = got.startswith(prefix) and got.endswith(want)
        elif kind == "echo":
            ok = got == b"runtime:" + b"%d:" % i + replies[sizes[(i * 7) % len(sizes)]]
        else:
            ok = len(got) == 5 and all(m.startswith(b"runtime:%d:" % n) for n, m in enumerate(got))
        if not ok:
            failures.append(f"{kind} {i}")

    for i in range(total):
        kind = ("hooked", "echo", "echo", "stream", "hooked")[i % 5]
        if kind == "hooked":
            fut = hooked.future(b"%d:" % i + b"q" * (i % 1000), timeout=30)
        elif kind == "echo":
            fut = echo.future(b"%d:" % i + replies[sizes[(i * 7) % len(sizes)]], timeout=30)
        else:
            fut = None
            it = streaming(b"5,%d" % (1 + i % 20_000), timeout=30)
        pending.append((kind, i, fut if fut is not None else it))
        if len(pending) >= window:
            kind0, i0, f0 = pending.pop(0)
            check(kind0, i0, list(f0) if kind0 == "stream" else f0.result())
    for kind0, i0, f0 in pending:
        check(kind0, i0, list(f0) if kind0 == "stream" else f0.result())
    assert failures == []
    assert len(fake.calls(HOOKED)) == len(
        [i for i in range(total) if i % 5 in (0, 4) and i % 3 == 0]
    )


def test_cancel_hooked_call_cancels_forward(env: Env) -> None:
    fake = env.runtime()
    fake.unary[HOOKED] = fake.unary[SLOW]
    outcome: List[Any] = []
    done = threading.Event()

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        try:
            return forward(request)
        except ForwardError as exc:
            outcome.append(exc.code)
            raise
        finally:
            outcome.append(info.cancelled.is_set())
            done.set()

    env.start(hooks={HOOKED: hook})
    fut = env.channel().unary_unary(HOOKED).future(b"10")
    assert wait_until(lambda: len(fake.calls(HOOKED)) == 1)
    fut.cancel()
    assert fake.cancelled.wait(3.0)
    assert done.wait(3.0)
    assert outcome == [grpc.StatusCode.CANCELLED, True]


def test_hooked_call_deadline_applies_to_forward(env: Env) -> None:
    fake = env.runtime()
    fake.unary[HOOKED] = fake.unary[SLOW]
    remaining: List[Optional[float]] = []

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        remaining.append(info.remaining())
        return forward(request)

    env.start(hooks={HOOKED: hook})
    ch = env.channel()
    assert call(ch, HOOKED, b"0", timeout=4) == b"runtime:0"
    rt = fake.calls(HOOKED)[0].time_remaining
    assert rt is not None and 2.0 < rt <= 4.0
    assert remaining[0] is not None and 2.0 < remaining[0] <= 4.0
    err = rpc_error(lambda: call(ch, HOOKED, b"5", timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.cancelled.wait(3.0)


def test_hooks_run_concurrently(env: Env) -> None:
    """Hooks are not serialized by the relay: a slow CreateContainer in one pod must not
    hold up the others (hooks.py locks only its policy decisions)."""
    env.runtime()
    active = [0]
    most = [0]
    lock = threading.Lock()

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return request

    env.start(hooks={HOOKED: hook})
    ch = env.channel()
    futs = [ch.unary_unary(HOOKED).future(b"%d" % i, timeout=10) for i in range(20)]
    assert [f.result() for f in futs] == [b"%d" % i for i in range(20)]
    assert most[0] > 1


def test_set_hooks_while_running(started: Env) -> None:
    ch = started.channel()
    assert call(ch, HOOKED, b"a") == b"runtime:a"
    assert started.relay is not None
    started.relay.set_hooks({HOOKED: lambda r, fwd, info: b"hooked"})
    assert call(ch, HOOKED, b"a") == b"hooked"
    started.relay.set_hooks({})
    assert call(ch, HOOKED, b"a") == b"runtime:a"


# --- observers ---------------------------------------------------------------------


def test_observer_status(env: Env) -> None:
    env.runtime()
    obs = RecordingObserver(relay.WANT_STATUS, [ECHO, FAIL])
    env.start(observers=[obs])
    ch = env.channel()
    before = time.monotonic()
    call(ch, ECHO, b"x")
    rpc_error(lambda: call(ch, FAIL, "ABORTED:nö".encode()))
    call(ch, META, b"not observed")
    records = obs.wait_for(2)
    assert [(r.method, r.code, r.details) for r in records] == [
        (ECHO, 0, ""),
        (FAIL, grpc.StatusCode.ABORTED.value[0], "nö"),
    ]
    for r in records:
        assert before <= r.start <= r.end <= time.monotonic()
        assert r.request is None and r.reply is None and not r.hooked
        assert abs(r.wall - time.time()) < 60


# A runtime that, like grpc-go's default keepalive enforcement in containerd, answers
# pings on a connection where it sent no data with GOAWAY too_many_pings.
STRICT_PINGS = (
    ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
    ("grpc.http2.max_ping_strikes", 1),
)
# A client that pings often (kubelet's grpc-go pings for its flow-control estimates).
PINGING_CLIENT = tuple(CLIENT_OPTIONS) + (
    ("grpc.keepalive_time_ms", 50),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def _connections_used(ch: grpc.Channel, calls: Callable[[], None]) -> int:
    """How many times `ch` became READY while `calls` ran (1 = one connection)."""
    ready = []
    ch.subscribe(
        lambda state: ready.append(state) if state == grpc.ChannelConnectivity.READY else None,
        try_to_connect=True,
    )
    calls()
    return len(ready)


def test_client_pings_are_answered_by_the_relay(env: Env) -> None:
    """Pings the client sends while the relay answers its calls never reach the runtime,
    which would count them as pings without data and send GOAWAY too_many_pings (it did,
    before the relay answered pings itself: the client had to reconnect)."""
    env.runtime(options=STRICT_PINGS)
    env.start(hooks={HOOKED: lambda r, fwd, info: b"hooked:" + r})
    ch = env.channel(options=PINGING_CLIENT)

    def calls() -> None:
        for i in range(10):
            assert call(ch, HOOKED, b"%d" % i, timeout=5) == b"hooked:%d" % i
            time.sleep(0.15)
        assert call(ch, ECHO, b"still here", timeout=5) == b"runtime:still here"

    assert _connections_used(ch, calls) == 1


def test_observer_splits_runtime_time_from_relay_time(env: Env) -> None:
    """CallRecord.runtime: how long the runtime took (pass-through and hooked calls)."""
    env.runtime()
    obs = RecordingObserver(relay.WANT_STATUS, [SLOW, HOOKED])

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        time.sleep(0.05)  # the policy's time: the relay's share
        return forward(request)

    env.start(observers=[obs], hooks={HOOKED: hook})
    ch = env.channel()
    call(ch, SLOW, b"0.2")
    call(ch, HOOKED, b"x")
    slow, hooked = sorted(obs.wait_for(2), key=lambda r: r.method != SLOW)
    assert slow.runtime is not None and 0.2 <= slow.runtime <= slow.end - slow.start
    assert hooked.hooked and hooked.runtime is not None
    assert hooked.end - hooked.start - hooked.runtime >= 0.05


def test_observer_messages_passthrough_and_hooked(env: Env) -> None:
    env.runtime()
    obs = RecordingObserver(relay.WANT_MESSAGES)
    env.start(observers=[obs], hooks={HOOKED: lambda r, fwd, info: fwd(r + b"!") + b"?"})
    ch = env.channel()
    big = os.urandom(200_000)
    call(ch, ECHO, big)
    call(ch, HOOKED, b"h")
    messages = list(ch.unary_stream(STREAM)(b"3,10"))
    records = obs.wait_for(3)
    by_method = {r.method: r for r in records}
    assert by_method[ECHO].request == http2.grpc_frame(big)
    assert by_method[ECHO].reply == http2.grpc_frame(b"runtime:" + big)
    assert not by_method[ECHO].hooked
    hooked = by_method[HOOKED]
    assert hooked.hooked
    assert hooked.request == http2.grpc_frame(b"h")
    assert hooked.reply == http2.grpc_frame(b"runtime:h!?")
    assert hooked.code == 0
    assert by_method[STREAM].reply == b"".join(http2.grpc_frame(m) for m in messages)


def test_observer_errors_do_not_break_calls(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.runtime()

    class Broken(relay.Observer):
        def wants(self, method: str) -> int:
            return relay.WANT_MESSAGES

        def observe(self, record: relay.CallRecord) -> None:
            raise RuntimeError("observer bug")

    good = RecordingObserver(relay.WANT_STATUS)
    env.start(observers=[Broken(), good], hooks={HOOKED: lambda r, fwd, info: b"h"})
    ch = env.channel()
    with caplog.at_level(logging.ERROR, logger="cri_resmgr.relay"):
        for _ in range(3):
            assert call(ch, ECHO, b"x") == b"runtime:x"
            assert call(ch, HOOKED, b"x") == b"h"
    assert len(good.wait_for(6)) == 6
    assert any("observer" in r.getMessage() for r in caplog.records)


def test_observer_sees_cancelled_call(started: Env) -> None:
    obs = RecordingObserver(relay.WANT_STATUS)
    assert started.relay is not None
    started.relay.set_observers([obs])
    fut = started.channel().unary_unary(SLOW).future(b"10")
    assert wait_until(lambda: len(started.runtimes[0].calls(SLOW)) == 1)
    fut.cancel()
    records = obs.wait_for(1)
    assert records[0].method == SLOW
    assert records[0].code == grpc.StatusCode.CANCELLED.value[0]


# --- runtime down ------------------------------------------------------------------


def _until_ok(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Retry `fn` while it fails UNAVAILABLE (the client reconnects with backoff)."""
    end = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                raise
            time.sleep(0.02)


def _outage_warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "does not accept connections" in r.getMessage()
    ]


def test_runtime_missing_then_up(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cri_resmgr.relay")
    env.start(hooks={HOOKED: lambda r, fwd, info: fwd(r)})
    assert env.relay is not None
    ch = env.channel()
    for method in (ECHO, ECHO, HOOKED, ECHO):
        err = rpc_error(lambda m=method: call(ch, m, b"x", timeout=5))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert not env.relay.runtime_reachable()
    assert len(_outage_warnings(caplog)) == 1
    env.runtime()
    assert _until_ok(lambda: call(ch, ECHO, b"up", timeout=5)) == b"runtime:up"
    assert call(ch, HOOKED, b"h", timeout=5) == b"runtime:h"
    assert env.relay.runtime_reachable()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_runtime_stops_mid_run(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    fake = env.runtime()
    env.start()
    ch = env.channel()
    assert call(ch, ECHO, b"a") == b"runtime:a"
    slow = ch.unary_unary(SLOW).future(b"30", timeout=20)
    assert wait_until(lambda: len(fake.calls(SLOW)) == 1)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.relay"):
        fake.stop(None)
        err = rpc_error(slow.result)
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        for _ in range(5):
            err = rpc_error(lambda: call(ch, ECHO, b"b", timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert len(_outage_warnings(caplog)) == 1
        env.runtime()
        assert _until_ok(lambda: call(ch, ECHO, b"c", timeout=5)) == b"runtime:c"
        # A second outage warns again, once.
        env.runtimes[-1].stop(None)
        for _ in range(3):
            rpc_error(lambda: call(ch, ECHO, b"d", timeout=5))
        assert len(_outage_warnings(caplog)) == 2
        env.runtime()
        assert _until_ok(lambda: call(ch, ECHO, b"e", timeout=5)) == b"runtime:e"


def test_runtime_connection_dropped_abruptly(env: Env) -> None:
    """The runtime process dies: its connections close without GOAWAY or RST."""
    fake = env.runtime()
    env.start()
    ch = env.channel()
    assert call(ch, ECHO, b"a") == b"runtime:a"
    fut = ch.unary_unary(SLOW).future(b"30", timeout=20)
    assert wait_until(lambda: len(fake.calls(SLOW)) == 1)
    assert env.relay is not None

    def cut() -> int:
        conns = list(env.relay._conns)  # type: ignore[union-attr]
        for conn in conns:
            assert conn.up is not None
            conn.up.abort()
        return len(conns)

    assert env.thread.call(cut) == 1
    err = rpc_error(fut.result)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert _until_ok(lambda: call(ch, ECHO, b"b", timeout=5)) == b"runtime:b"


# --- the listening socket ----------------------------------------------------------


def test_socket_mode_and_unix_prefix(env: Env) -> None:
    env.runtime()
    path = str(env.root / "sub" / "r.sock")
    r = env.thread.start_relay("unix://" + path, "unix://" + env.runtime_path, mode=0o660)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert call(env.channel(path), ECHO, b"x") == b"runtime:x"
    assert r.runtime_target == env.runtime_path
    assert [p for p in os.listdir(env.root / "sub")] == ["r.sock"]


def test_stale_socket_is_replaced(env: Env) -> None:
    env.runtime()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(env.relay_path)
    stale.close()
    assert stat.S_ISSOCK(os.lstat(env.relay_path).st_mode)
    env.start()
    assert call(env.channel(), ECHO, b"x") == b"runtime:x"


def test_live_socket_is_an_error(env: Env) -> None:
    env.runtime()
    with pytest.raises(sockets.SocketInUse, match=str(env.runtime_path)):
        env.thread.start_relay(env.runtime_path, env.runtime_path)
    assert call(env.channel(env.runtime_path), ECHO, b"x") == b"runtime:x"


def test_non_socket_is_an_error(env: Env) -> None:
    Path(env.relay_path).write_text("not a socket")
    with pytest.raises(sockets.SocketInUse, match=env.relay_path):
        env.start()
    assert Path(env.relay_path).read_text() == "not a socket"
    with pytest.raises(sockets.SocketInUse, match=env.relay_path):
        sockets.check_stale(env.relay_path)


def test_socket_appears_only_when_listening(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.runtime()
    path = env.relay_path
    observed: List[Any] = []
    real_rename = os.rename

    class Spy(socket.socket):
        def listen(self, *args: Any) -> None:
            observed.append(("listen", os.path.exists(path)))
            super().listen(*args)

    def rename(src: Any, dst: Any) -> None:
        if str(dst) == path:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(src))  # already accepting under the temporary name
            probe.close()
            observed.append(("rename", os.path.exists(path)))
        real_rename(src, dst)

    monkeypatch.setattr(sockets.socket, "socket", Spy)
    monkeypatch.setattr(sockets.os, "rename", rename)
    env.start()
    monkeypatch.undo()
    assert observed[-1] == ("rename", False)
    assert set(observed[:-1]) == {("listen", False)}  # asyncio listens again: fine
    assert call(env.channel(), ECHO, b"x") == b"runtime:x"


# --- stop --------------------------------------------------------------------------


def test_stop_lets_calls_finish(env: Env) -> None:
    fake = env.runtime()
    release = threading.Event()

    def hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
        release.wait(5)
        return forward(request)

    r = env.start(hooks={HOOKED: hook})
    ch = env.channel()
    assert call(ch, ECHO, b"warm") == b"runtime:warm"
    slow = ch.unary_unary(SLOW).future(b"0.3", timeout=10)
    hooked = ch.unary_unary(HOOKED).future(b"h", timeout=10)
    assert wait_until(lambda: len(fake.calls(SLOW)) == 1)
    stop = asyncio.run_coroutine_threadsafe(r.stop(grace=5.0), env.thread.loop)
    assert wait_until(lambda: not os.path.exists(env.relay_path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        probe.connect(env.relay_path)
    probe.close()
    assert not stop.done()
    release.set()
    assert slow.result() == b"runtime:0.3"
    assert hooked.result() == b"runtime:h"
    stop.result(5)


def test_stop_cuts_calls_after_grace(env: Env) -> None:
    fake = env.runtime()
    r = env.start()
    ch = env.channel()
    slow = ch.unary_unary(SLOW).future(b"30", timeout=20)
    assert wait_until(lambda: len(fake.calls(SLOW)) == 1)
    env.thread.run(r.stop(grace=0.2))
    err = rpc_error(slow.result)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert fake.cancelled.wait(3.0)
    assert not os.path.exists(env.relay_path)


# --- split runtime and image sockets -----------------------------------------------


def test_split_sockets(env: Env) -> None:
    runtime = env.runtime()
    image_path = str(env.root / "img.sock")
    image = env.runtime(image_path, name="image")
    env.start(image=image_path)
    spec = "50,10;2,300000"
    for first in (ECHO, IMAGE_ECHO):
        ch = env.channel()
        order = [first, IMAGE_ECHO if first == ECHO else ECHO]
        for _ in range(3):
            for method in order:
                want = "image" if method == IMAGE_ECHO else "runtime"
                assert call(ch, method, b"x" * 100_000) == want.encode() + b":" + b"x" * 100_000
            it = ch.unary_stream(IMAGE_STREAM)(spec.encode())
            _check_stream(list(it), "image", spec)
            assert dict(it.initial_metadata())["x-stream-from"] == "image"
            _check_stream(list(ch.unary_stream(STREAM)(spec.encode())), "runtime", spec)
        err = rpc_error(lambda c=ch: call(c, UNKNOWN, b"u"))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert len(runtime.calls(ECHO)) == 6 and not runtime.calls(IMAGE_ECHO)
    assert len(image.calls(IMAGE_ECHO)) == 6 and not image.calls(ECHO)
    assert not runtime.calls(IMAGE_STREAM) and not image.calls(STREAM)


# --- frame level (Wire: the test plays client and runtime) -------------------------

OK_HEADERS = ((":status", "200"), ("content-type", "application/grpc"))
OK_TRAILERS = (("grpc-status", "0"),)


def _noop_hook(request: bytes, forward: Forward, info: CallInfo) -> bytes:
    raise AssertionError("wire tests complete hooked calls with Wire.reply()")


def test_wire_hooked_call_resets_runtime_stream() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(w.request(1, HOOKED), http2.frame(http2.DATA, 0, 1, http2.grpc_frame(b"req")))
    up = w.to_runtime()
    assert [(f[0], f[2]) for f in up] == [(http2.HEADERS, 1), (http2.RST_STREAM, 1)]
    assert dict(up[0][3])[":path"] == HOOKED  # the runtime's decoder stays in step
    # Absorbed request bytes are granted back to the client, connection and stream.
    grants = [(f[2], http2.read_u32(f[3])) for f in w.to_client()]
    assert grants == [(0, 8), (1, 8)]
    w.reply(1, b"reply")
    frames = w.to_client()
    assert [(f[0], f[2]) for f in frames] == [
        (http2.HEADERS, 1),
        (http2.DATA, 1),
        (http2.HEADERS, 1),
    ]
    assert frames[1][3] == http2.grpc_frame(b"reply")
    assert frames[2][1] & http2.FLAG_END_STREAM
    assert dict(frames[2][3])["grpc-status"] == "0"
    assert 1 not in w.conn.streams
    assert w.conn.debt == len(http2.grpc_frame(b"reply"))


def test_wire_late_runtime_frames_of_answered_call_are_dropped() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(w.request(1, HOOKED))
    w.reply(1, b"r")
    w.to_client()
    w.to_runtime()
    # The runtime answers the stream we reset after we already answered it. Its
    # header block adds to its HPACK table: the relay must still decode it.
    w.from_runtime(
        w.response(1, OK_HEADERS + (("x-late", "indexed-value"),), False),
        http2.frame(http2.DATA, 0, 1, b"late data"),
        w.response(1, (("grpc-status", "12"),), True),
        http2.rst_stream(1, http2.NO_ERROR),
        http2.window_update(1, 100),
    )
    assert w.to_client() == []
    assert [(f[0], f[2], http2.read_u32(f[3])) for f in w.to_runtime()] == [
        (http2.WINDOW_UPDATE, 0, len(b"late data"))
    ]
    # A pass-through call afterwards, whose block refers to the indexed entry.
    w.from_client(w.request(3, ECHO, end_stream=True))
    w.from_runtime(
        w.response(3, OK_HEADERS + (("x-late", "indexed-value"),), False),
        http2.frame(http2.DATA, 0, 3, b"abc"),
        w.response(3, OK_TRAILERS, True),
    )
    frames = w.to_client()
    assert [(f[0], f[2]) for f in frames] == [
        (http2.HEADERS, 3),
        (http2.DATA, 3),
        (http2.HEADERS, 3),
    ]
    assert dict(frames[0][3])["x-late"] == "indexed-value"


def test_wire_client_reset_of_answered_call_is_not_forwarded() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    obs = RecordingObserver(relay.WANT_STATUS)
    w.relay.set_observers([obs])
    w.from_client(w.request(1, HOOKED))
    stream = w.conn.streams[1]
    assert stream.local is not None
    w.to_runtime()
    w.from_client(http2.rst_stream(1, http2.CANCEL))
    assert w.to_runtime() == []  # the runtime already got our RST_STREAM
    assert stream.local.info.cancelled.is_set()
    assert 1 not in w.conn.streams
    # The hook finishing afterwards writes nothing.
    w.conn._local_reply(stream, relay._Result([b"late"], grpc.StatusCode.OK, ""))
    assert w.to_client() == []
    assert [(r.method, r.code) for r in obs.records] == [(HOOKED, 1)]


def test_wire_runtime_reset_passes_and_is_observed() -> None:
    w = Wire()
    obs = RecordingObserver(relay.WANT_STATUS)
    w.relay.set_observers([obs])
    w.from_client(w.request(1, ECHO, end_stream=True))
    w.from_runtime(http2.rst_stream(1, http2.REFUSED_STREAM))
    assert [(f[0], f[2]) for f in w.to_client()] == [(http2.RST_STREAM, 1)]
    assert [(r.method, r.code) for r in obs.records] == [(ECHO, 14)]


def test_wire_push_promise_closes_connection() -> None:
    w = Wire()
    w.from_runtime(http2.frame(http2.PUSH_PROMISE, http2.FLAG_END_HEADERS, 1, b"\0\0\0\2"))
    assert w.down.closed and w.up.closed


def test_wire_continuation_both_ways() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(http2.window_update(0, 1 << 20))  # plenty of window
    w.to_runtime()
    long_md = tuple((f"x-key-{i}", "v" * 200) for i in range(200))  # ~45 KB of headers
    w.from_client(w.request(1, HOOKED, extra=long_md, max_frame=1000))
    up = w.to_runtime()
    assert [f[0] for f in up] == [http2.HEADERS, http2.RST_STREAM]
    info = w.conn.streams[1].local.info  # type: ignore[union-attr]
    assert dict(info.metadata)["x-key-199"] == "v" * 200
    # The runtime's big trailers for a pass-through call reach the client intact.
    w.from_client(w.request(3, ECHO, end_stream=True))
    w.from_runtime(w.response(3, OK_HEADERS, False), w.response(3, OK_TRAILERS + long_md, True))
    raw = w.down.take()
    assert http2.CONTINUATION in [f[0] for f in raw]
    assert all(len(f[3]) <= 16384 for f in raw)
    w.down.buf += b"".join(http2.frame(*f) for f in raw)
    frames = w.to_client()
    assert dict(frames[-1][3])["x-key-0"] == "v" * 200
    assert frames[-1][1] & http2.FLAG_END_STREAM


def test_wire_drain_refuses_new_streams() -> None:
    w = Wire()
    w.from_client(w.request(1, ECHO, end_stream=True))
    w.to_runtime()
    w.conn.drain()
    frames = w.to_client()
    assert [(f[0], http2.read_u32(f[3])) for f in frames] == [(http2.GOAWAY, 1)]
    w.from_client(w.request(3, ECHO, end_stream=True))
    assert [(f[0], f[2]) for f in w.to_runtime()] == [
        (http2.HEADERS, 3),
        (http2.RST_STREAM, 3),
    ]
    assert [(f[0], f[2], http2.read_u32(f[3])) for f in w.to_client()] == [
        (http2.RST_STREAM, 3, http2.REFUSED_STREAM)
    ]
    # The call in flight still completes; the runtime's own GOAWAY is not repeated.
    w.from_runtime(http2.goaway(1), w.response(1, OK_HEADERS, False))
    w.from_runtime(http2.frame(http2.DATA, 0, 1, b"x"), w.response(1, OK_TRAILERS, True))
    assert [f[0] for f in w.to_client()] == [http2.HEADERS, http2.DATA, http2.HEADERS]


def test_wire_held_data_is_split_to_the_window() -> None:
    """With reply debt, a runtime DATA frame bigger than the client's window is split."""
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(w.request(1, HOOKED), w.request(3, ECHO, end_stream=True))
    w.from_runtime(w.response(3, OK_HEADERS, False))
    w.to_client()
    w.to_runtime()
    w.reply(1, b"h" * 60_000)  # debt 60005, client window 5530 left
    assert w.conn.down_window == 65535 - 60005
    w.to_client()
    w.from_runtime(http2.frame(http2.DATA, 0, 3, b"d" * 16384))  # the runtime sees 65535
    frames = w.to_client()
    assert [(f[0], f[2], len(f[3])) for f in frames] == [(http2.DATA, 3, 5530)]
    assert w.conn.down_window == 0
    w.from_runtime(w.response(3, OK_TRAILERS, True))
    assert w.to_client() == []  # held behind the rest of the data
    w.from_client(http2.window_update(0, 65535))  # the client consumed everything
    frames = w.to_client()
    assert [(f[0], f[2]) for f in frames] == [(http2.DATA, 3), (http2.HEADERS, 3)]
    assert len(frames[0][3]) == 16384 - 5530
    # The runtime only gets what exceeds the debt.
    assert [(f[0], http2.read_u32(f[3])) for f in w.to_runtime()] == [
        (http2.WINDOW_UPDATE, 65535 - 60005)
    ]
    assert w.conn.debt == 0


class _Sim:
    """A client and a runtime, each keeping RFC 9113 flow control, around one `Wire`.

    The client grants window back once it has consumed `grant_after` bytes (a real
    client waits for some amount, which is what makes a held frame dangerous); the
    runtime sends as much as its view of the windows allows. The relay answers the
    HOOKED streams (with `Wire.reply`), the runtime the others.
    """

    def __init__(self, rng: Any, grant_after: int, initial_window: int) -> None:
        self.rng = rng
        self.grant_after = grant_after
        self.w = Wire(hooks={HOOKED: _noop_hook})
        # Client side.
        self.client_window = http2.DEFAULT_WINDOW  # connection receive window
        self.consumed = 0
        self.stream_window: dict = {}
        self.stream_consumed: dict = {}
        self.got: dict = {}  # sid -> bytearray
        self.done: set = set()
        self.headers: set = set()
        self.expected: dict = {}
        # Runtime side.
        self.rt_window = http2.DEFAULT_WINDOW  # connection send window as it sees it
        self.rt_stream_window: dict = {}
        self.initial_window = initial_window
        self.rt_todo: dict = {}  # sid -> bytes still to send
        self.rt_started: set = set()
        self.local_todo: dict = {}
        self.local_sids: set = set()
        self.w.from_client(
            http2.frame(
                http2.SETTINGS,
                0,
                0,
                struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE, initial_window),
            )
        )
        self.w.from_runtime(http2.frame(http2.SETTINGS, http2.FLAG_ACK, 0))  # the runtime's ACK

    def open(self, sid: int, local: bool, size: int) -> None:
        payload = bytes([sid % 256]) * size
        self.stream_window[sid] = self.initial_window
        self.stream_consumed[sid] = 0
        self.got[sid] = bytearray()
        if local:
            self.w.from_client(self.w.request(sid, HOOKED))
            self.local_todo[sid] = payload
            self.local_sids.add(sid)
            self.expected[sid] = http2.grpc_frame(payload)
        else:
            self.w.from_client(self.w.request(sid, ECHO, end_stream=True))
            self.rt_todo[sid] = payload
            self.expected[sid] = payload

    def runtime_reads(self) -> None:
        for ftype, _flags, sid, payload in self.w.to_runtime():
            if ftype == http2.WINDOW_UPDATE:
                inc = http2.read_u32(payload)
                if sid == 0:
                    self.rt_window += inc
                elif sid in self.rt_stream_window:
                    self.rt_stream_window[sid] += inc
            elif ftype == http2.HEADERS and sid in self.rt_todo:
                self.rt_stream_window[sid] = self.initial_window
            elif ftype == http2.RST_STREAM:
                assert sid in self.local_sids, f"runtime got RST_STREAM for {sid}"

    def runtime_sends(self) -> None:
        ready = [s for s in self.rt_todo if s in self.rt_stream_window]
        if not ready:
            return
        batch = []
        for sid in self.rng.sample(ready, min(len(ready), self.rng.randrange(1, 4))):
            if sid not in self.rt_started:
                self.rt_started.add(sid)
                batch.append(self.w.response(sid, OK_HEADERS, False))
            todo = self.rt_todo[sid]
            for _ in range(self.rng.randrange(1, 5)):
                n = min(len(todo), 16384, self.rt_window, self.rt_stream_window[sid])
                n = min(n, self.rng.choice([n, 1 + n // 3]))
                if n <= 0:
                    break
                self.rt_window -= n
                self.rt_stream_window[sid] -= n
                batch.append(http2.frame(http2.DATA, 0, sid, todo[:n]))
                self.rt_todo[sid] = todo = todo[n:]
            if not todo:
                del self.rt_todo[sid]
                batch.append(self.w.response(sid, OK_TRAILERS, True))
        self.w.from_runtime(*batch)

    def local_replies(self) -> None:
        if self.local_todo:
            sid = self.rng.choice(list(self.local_todo))
            self.w.reply(sid, self.local_todo.pop(sid))

    def client_reads(self) -> None:
        for ftype, flags, sid, payload in self.w.to_client():
            if ftype == http2.DATA:
                assert sid not in self.done, f"DATA after end of stream {sid}"
                assert sid in self.headers, f"DATA before HEADERS on stream {sid}"
                self.client_window -= len(payload)
                self.stream_window[sid] -= len(payload)
                assert self.client_window >= 0, "connection FLOW_CONTROL_ERROR"
                assert self.stream_window[sid] >= 0, f"stream {sid} FLOW_CONTROL_ERROR"
                self.got[sid] += payload
                self.consumed += len(payload)
                self.stream_consumed[sid] += len(payload)
            elif ftype == http2.HEADERS and sid not in self.headers:
                assert dict(payload)[":status"] == "200"
                self.headers.add(sid)
            elif ftype == http2.HEADERS and flags & http2.FLAG_END_STREAM:
                assert dict(payload)["grpc-status"] == "0"
                self.done.add(sid)
        grants = []
        if self.consumed >= self.grant_after:
            grants.append(http2.window_update(0, self.consumed))
            self.client_window += self.consumed
            self.consumed = 0
        for sid, n in self.stream_consumed.items():
            if n and (n >= self.initial_window // 2 or sid in self.done):
                if sid not in self.done:
                    grants.append(http2.window_update(sid, n))
                    self.stream_window[sid] += n
                self.stream_consumed[sid] = 0
        if grants:
            self.w.from_client(*grants)

    def step(self) -> None:
        self.rng.choice(
            [self.runtime_reads, self.runtime_sends, self.local_replies, self.client_reads]
        )()

    def settle(self) -> None:
        for _ in range(100_000):
            if len(self.done) == len(self.expected) and not self.rt_todo and not self.local_todo:
                break
            self.runtime_reads()
            self.runtime_sends()
            self.local_replies()
            self.client_reads()
        for sid, want in self.expected.items():
            assert bytes(self.got[sid]) == want, (
                f"stream {sid}: {len(self.got[sid])} of {len(want)}"
            )
        assert self.done == set(self.expected)


@pytest.mark.parametrize("seed", range(6))
def test_wire_flow_control_simulation(seed: int) -> None:
    """Replies of the relay and of the runtime share the client's windows exactly.

    The client never sees more DATA than its windows allow, every byte arrives in
    order, and nothing stalls, whatever the order of events and however lazily the
    client grants window.
    """

    rng = random.Random(seed)
    sim = _Sim(
        rng,
        grant_after=rng.choice([1, 16384, 40000, 65535]),
        initial_window=rng.choice([65535, 16384, 1 << 20]),
    )
    sizes = [0, 10, 5000, 16384, 16385, 70000, 200000]
    sid = 1
    for _ in range(60):
        sim.open(sid, local=rng.random() < 0.5, size=rng.choice(sizes))
        sid += 2
        for _ in range(rng.randrange(1, 30)):
            sim.step()
    sim.settle()


def test_wire_frames_before_a_held_frame_go_first() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(w.request(1, HOOKED), w.request(3, ECHO, end_stream=True))
    w.reply(1, b"h" * 60_000)  # client window: 5530 left, the runtime thinks 65535
    w.to_client()
    w.from_runtime(
        w.response(3, OK_HEADERS, False),
        http2.frame(http2.DATA, 0, 3, b"a" * 100),
        http2.frame(http2.DATA, 0, 3, b"b" * 16384),
        http2.frame(http2.DATA, 0, 3, b"c" * 100),
        w.response(3, OK_TRAILERS, True),
    )
    w.from_client(http2.window_update(0, 65535))
    frames = w.to_client()
    assert frames[0][0] == http2.HEADERS
    assert b"".join(f[3] for f in frames if f[0] == http2.DATA) == (
        b"a" * 100 + b"b" * 16384 + b"c" * 100
    )
    assert frames[-1][0] == http2.HEADERS and frames[-1][1] & http2.FLAG_END_STREAM


def test_wire_answered_call_waits_for_window_without_debt() -> None:
    """The runtime used the whole client window; our reply must resume on its update."""
    w = Wire(hooks={HOOKED: _noop_hook})
    w.from_client(w.request(1, HOOKED), w.request(3, ECHO, end_stream=True))
    w.from_runtime(w.response(3, OK_HEADERS, False))
    for _ in range(4):
        w.from_runtime(http2.frame(http2.DATA, 0, 3, b"x" * 16383))
    w.from_runtime(http2.frame(http2.DATA, 0, 3, b"x" * 3))
    assert w.conn.down_window == 0 and w.conn.debt == 0
    w.reply(1, b"reply")
    assert [f[2] for f in w.to_client()] == [3] * 6 + [1]  # runtime data, our HEADERS
    w.from_client(http2.window_update(0, 65535))
    frames = w.to_client()
    assert [(f[0], f[2]) for f in frames] == [(http2.DATA, 1), (http2.HEADERS, 1)]
    # Then a larger client initial window resumes a reply short of stream window.
    w.from_client(w.request(5, HOOKED))
    w.from_client(http2.window_update(0, 1 << 20))
    w.reply(5, b"y" * 70_000)
    assert sum(len(f[3]) for f in w.to_client() if f[0] == http2.DATA) == 65535
    w.from_client(
        http2.frame(
            http2.SETTINGS, 0, 0, struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)
        )
    )
    # Not before the runtime acknowledged it: until then the client may hold on to the
    # old window (grpc-core does).
    assert not [f for f in w.to_client() if f[0] == http2.DATA]
    w.from_runtime(http2.frame(http2.SETTINGS, http2.FLAG_ACK, 0))
    frames = w.to_client()
    assert frames[0][0] == http2.SETTINGS and frames[0][1] & http2.FLAG_ACK  # ACK first
    assert sum(len(f[3]) for f in frames if f[0] == http2.DATA) == 70_005 - 65535
    assert frames[-1][1] & http2.FLAG_END_STREAM


def test_wire_hook_metadata_grpcio_cannot_send_is_dropped() -> None:
    w = Wire(hooks={HOOKED: _noop_hook})
    extra = (
        ("x-good", "fine value"),
        ("x-utf8", "caf\xc3\xa9"),  # latin-1 view of UTF-8 bytes
        ("x-ctl", "a\x01b"),
        ("x-bad-bin", "!!not base64!!"),
        ("x-pad-bin", "AAE="),
        ("x-nopad-bin", "AAE"),
        ("x-true-bin", b"\x00\x00\xff"),  # hpack.Encoder takes bytes as they are
        ("grpc-timeout", "1500m"),
        ("user-agent", "test"),
    )
    w.from_client(w.request(1, HOOKED, extra=extra))
    info = w.conn.streams[1].local.info  # type: ignore[union-attr]
    assert info.metadata == (
        ("x-good", "fine value"),
        ("x-pad-bin", b"\x00\x01"),
        ("x-nopad-bin", b"\x00\x01"),
        ("x-true-bin", b"\x00\xff"),
    )
    remaining = info.remaining()
    assert remaining is not None and 1.0 < remaining <= 1.5


# --- wait_for_runtime, check_stale_socket -----------------------------------------


def _version_runtime(fake: FakeRuntime) -> FakeRuntime:
    reply = api_pb2.VersionResponse(runtime_name="fake", runtime_version="1.2.3")
    fake.unary[ECHO] = lambda request, context: reply.SerializeToString()
    return fake


def test_wait_for_runtime_up(env: Env) -> None:
    _version_runtime(env.runtime())
    assert relay.wait_for_runtime("unix://" + env.runtime_path, timeout=5) == "fake 1.2.3"


def test_wait_for_runtime_times_out(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: List[float] = []
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.relay"):
        with pytest.raises(errors.RuntimeUnavailable, match=env.runtime_path):
            relay.wait_for_runtime(env.runtime_path, timeout=0.5, sleep=sleeps.append)
    assert sleeps == [0.1, 0.2, 0.4]  # (real time barely moves) then 0.8 would pass it
    assert len([r for r in caplog.records if "waiting for the runtime" in r.getMessage()]) == 1


def test_wait_for_runtime_waits_for_it(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: List[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            _version_runtime(env.runtime())
        time.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="cri_resmgr.relay"):
        assert relay.wait_for_runtime(env.runtime_path, timeout=20, sleep=sleep) == "fake 1.2.3"
    assert sleeps[:3] == [0.1, 0.2, 0.4]  # doubling; then as long as grpc reconnects
    assert all(b == min(2 * a, 5.0) for a, b in zip(sleeps, sleeps[1:]))
    assert any("answers: fake 1.2.3" in r.getMessage() for r in caplog.records)


def test_check_stale_socket(env: Env) -> None:
    sockets.check_stale(env.relay_path)  # nothing there: fine
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(env.relay_path)
    stale.close()
    sockets.check_stale(env.relay_path)
    assert not os.path.exists(env.relay_path)
    env.runtime()
    with pytest.raises(sockets.SocketInUse, match="another server is listening"):
        sockets.check_stale(env.runtime_path)
    assert os.path.exists(env.runtime_path)


def test_stop_returns_when_the_last_call_fails(env: Env) -> None:
    """A draining relay whose runtime goes away has nothing left to wait for."""
    fake = env.runtime()
    r = env.start()
    slow = env.channel().unary_unary(SLOW).future(b"30", timeout=20)
    assert wait_until(lambda: len(fake.calls(SLOW)) == 1)
    stop = asyncio.run_coroutine_threadsafe(r.stop(grace=30.0), env.thread.loop)
    assert wait_until(lambda: not os.path.exists(env.relay_path))

    def crash() -> None:  # the runtime dies: no GOAWAY, no RST_STREAM
        for conn in r._conns:
            assert conn.up is not None
            conn.up.abort()

    env.thread.call(crash)
    stop.result(10)  # well before the grace period ends
    assert rpc_error(slow.result).code() == grpc.StatusCode.UNAVAILABLE


def test_hook_returning_other_than_bytes(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.runtime()
    replies: List[Any] = [bytearray(b"ba"), memoryview(b"mv"), None, "text"]
    env.start(hooks={HOOKED: lambda r, fwd, info: replies.pop(0)})
    ch = env.channel()
    assert call(ch, HOOKED, b"x", timeout=5) == b"ba"
    assert call(ch, HOOKED, b"x", timeout=5) == b"mv"
    with caplog.at_level(logging.ERROR, logger="cri_resmgr.relay"):
        for _ in range(2):
            err = rpc_error(lambda: call(ch, HOOKED, b"x", timeout=5))
            assert err.code() == grpc.StatusCode.INTERNAL
            assert "not bytes" in err.details()


def test_observer_does_not_keep_long_streams(started: Env) -> None:
    obs = RecordingObserver(relay.WANT_MESSAGES, [STREAM])
    assert started.relay is not None
    started.relay.set_observers([obs])
    spec = b"17,1048576"  # 17 MiB in all: more than MAX_RECORDED
    assert len(list(started.channel().unary_stream(STREAM)(spec))) == 17
    assert len(list(started.channel().unary_stream(STREAM)(b"3,10"))) == 3
    long_, short = obs.wait_for(2)
    assert long_.reply is None and long_.request == http2.grpc_frame(spec)
    assert short.reply is not None and len(short.reply) == 3 * 15


def test_socket_owner_copied(env: Env) -> None:
    env.runtime()
    r = relay.Relay(env.runtime_path)
    env.thread.relays.append(r)
    env.thread.run(r.start(env.relay_path, 0o600, owner_of=env.runtime_path))
    st, rt = os.stat(env.relay_path), os.stat(env.runtime_path)
    assert (st.st_uid, st.st_gid) == (rt.st_uid, rt.st_gid)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_split_image_calls_do_not_starve_hooks(env: Env) -> None:
    env.runtime()
    image_path = str(env.root / "img.sock")
    image = env.runtime(image_path, name="image")
    release = threading.Event()

    def blocked(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(10)
        return b"pulled"

    image.unary[IMAGE_ECHO] = blocked
    env.start(image=image_path, hooks={HOOKED: lambda r, fwd, info: fwd(r)})
    ch = env.channel()
    try:
        pulls = [ch.unary_unary(IMAGE_ECHO).future(b"p", timeout=20) for _ in range(12)]
        assert wait_until(lambda: len(image.calls(IMAGE_ECHO)) == 12)
        assert call(ch, HOOKED, b"h", timeout=5) == b"runtime:h"
    finally:
        release.set()
    assert [p.result() for p in pulls] == [b"pulled"] * 12
