"""End-to-end: the relay in front of a real containerd is invisible to a CRI client.

The same scenario runs against containerd directly and through a `cri-resmgr`
process (policy none) and the answers are compared after masking what differs
between any two runs (ids, timestamps, pids). Then the things only a relay can get
wrong: deadlines, unknown methods, event streams, and a runtime that restarts.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Dict, List, Tuple

import grpc
import pytest
from google.protobuf import json_format

from cri_resmgr.cri import api_pb2
from harness import cri_objects as co
from harness.cgroups import cpuset_of

Step = Tuple[str, str, Any]  # (name, status code, masked reply)

_ID = re.compile(r"(?<!sha256:)\b[0-9a-f]{64}\b")  # pod/container ids; image digests are stable
_VOLATILE_KEYS = {
    "cpu",  # ContainerStats usage counters
    "memory",
    "writableLayer",
    "swap",
    "createdAt",
    "startedAt",
    "finishedAt",
    "timestamp",
    "pid",
    "info",
    "logPath",
    "usedBytes",
    "inodesUsed",
    "uid",
    "sandboxId",
    "mountpoint",
}


def _mask(message: Any, ids: Dict[str, str]) -> Any:
    data = json_format.MessageToDict(message)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: ("<volatile>" if k in _VOLATILE_KEYS else walk(v))
                for k, v in sorted(value.items())
            }
        if isinstance(value, list):  # the runtime's list order is not part of the API
            return sorted((walk(v) for v in value), key=repr)
        if isinstance(value, str):
            return _ID.sub(lambda m: ids.setdefault(m.group(0), f"<id{len(ids)}>"), value)
        return value

    return walk(data)


def _scenario(channel: grpc.Channel, name: str) -> List[Step]:
    """Every call kubelet makes in a pod's life, plus image calls; masked answers."""
    ids: Dict[str, str] = {}
    steps: List[Step] = []

    def step(label: str, method: str, request: Any = None, **kw: Any) -> Any:
        try:
            reply = co.call(channel, method, request, **kw)
        except grpc.RpcError as exc:
            details = _ID.sub(
                lambda m: ids.setdefault(m.group(0), f"<id{len(ids)}>"), exc.details() or ""
            )
            steps.append((label, exc.code().name, details))
            return None
        steps.append((label, "OK", _mask(reply, ids)))
        return reply

    step("version", "Version", api_pb2.VersionRequest(version="v1"))
    step("status", "Status")
    pod = co.pod_sandbox_config(name, namespace="e2e", uid=f"uid-{name}", qos="besteffort")
    pod.annotations["kubernetes.io/config.seen"] = "2026-01-01T00:00:00.000000000Z"
    pod_id = step("run-pod", "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=pod))
    pod_id = pod_id.pod_sandbox_id
    ctr = co.container_config("app", pod, command=["sleep", "3600"])
    created = step(
        "create",
        "CreateContainer",
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod),
    )
    cid = created.container_id
    step("start", "StartContainer", api_pb2.StartContainerRequest(container_id=cid))
    ex = step(
        "exec",
        "ExecSync",
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "hello"], timeout=10),
        timeout=30,
    )
    assert ex is not None and ex.stdout == b"hello\n" and ex.exit_code == 0
    step("status-ctr", "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=cid))
    step(
        "list-ctrs",
        "ListContainers",
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id)),
    )
    step(
        "list-pods",
        "ListPodSandbox",
        api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=pod_id)),
    )
    step("pod-status", "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    step(
        "update",
        "UpdateContainerResources",
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(cpuset_cpus="0")
        ),
    )
    pid = co.container_pid(channel, cid)
    steps.append(("cgroup-after-update", "OK", cpuset_of(pid).cpus))
    step("stats", "ContainerStats", api_pb2.ContainerStatsRequest(container_id=cid))
    step("stop", "StopContainer", api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    step("remove", "RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
    step("status-gone", "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=cid))
    step("stop-pod", "StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    step("remove-pod", "RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    step("list-images", "ListImages")
    step(
        "image-status",
        "ImageStatus",
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=co.BUSYBOX_REF)),
    )
    step(
        "image-missing",
        "ImageStatus",
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="example.invalid/none:1")),
    )
    step("fs-info", "ImageFsInfo")
    return steps


def test_relay_answers_like_containerd(runtime, relay_factory) -> None:
    relay = relay_factory()
    with grpc.insecure_channel("unix:" + runtime.socket) as direct:
        expected = _scenario(direct, "cmp")
    with grpc.insecure_channel("unix:" + relay.socket) as through:
        got = _scenario(through, "cmp")
    assert [s[0] for s in got] == [s[0] for s in expected]
    for want, have in zip(expected, got):
        assert have == want, f"step {want[0]} differs"
    assert dict((s[0], s[2]) for s in got)["cgroup-after-update"] == "0"


def test_unknown_method_gets_the_runtimes_answer(relay_factory, runtime) -> None:
    relay = relay_factory()
    answers = []
    for target in (runtime.socket, relay.socket):
        with grpc.insecure_channel("unix:" + target) as ch:
            fn = ch.unary_unary("/runtime.v1.RuntimeService/NoSuchMethod")
            with pytest.raises(grpc.RpcError) as err:
                fn(b"")
            answers.append((err.value.code(), err.value.details()))
    assert answers[0] == answers[1]
    assert answers[1][0] == grpc.StatusCode.UNIMPLEMENTED


def test_short_deadline_is_enforced_through_the_relay(relay_factory, runtime) -> None:
    relay = relay_factory()
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        pod = co.pod_sandbox_config("deadline", namespace="e2e")
        pod_id = co.run_pod(ch, pod)
        cid = co.create_and_start(
            ch, pod_id, pod, co.container_config("app", pod, command=["sleep", "3600"])
        )
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            co.call(
                ch,
                "ExecSync",
                api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=60),
                timeout=0.5,
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 10
        co.remove_pod(ch, pod_id)


def _events(channel: grpc.Channel, timeout: float = 60) -> Any:
    return channel.unary_stream(
        "/runtime.v1.RuntimeService/GetContainerEvents",
        request_serializer=api_pb2.GetEventsRequest.SerializeToString,
        response_deserializer=api_pb2.ContainerEventResponse.FromString,
    )(api_pb2.GetEventsRequest(), timeout=timeout)


def test_container_events_stream_through_the_relay(relay_factory, runtime) -> None:
    """Events of a container start arrive on the stream (containerd 1.6 answers
    UNIMPLEMENTED to GetContainerEvents: then the relay must say exactly that)."""
    relay = relay_factory()
    with grpc.insecure_channel("unix:" + runtime.socket) as direct:
        try:
            next(iter(_events(direct, timeout=2)))
            supported = True
        except grpc.RpcError as exc:
            supported = exc.code() != grpc.StatusCode.UNIMPLEMENTED
            direct_answer = (exc.code(), exc.details())
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        if not supported:
            with pytest.raises(grpc.RpcError) as err:
                next(iter(_events(ch)))
            assert (err.value.code(), err.value.details()) == direct_answer
            return
        events = ch.unary_stream(
            "/runtime.v1.RuntimeService/GetContainerEvents",
            request_serializer=api_pb2.GetEventsRequest.SerializeToString,
            response_deserializer=api_pb2.ContainerEventResponse.FromString,
        )(api_pb2.GetEventsRequest(), timeout=60)
        seen: List[Tuple[str, int]] = []
        done = threading.Event()

        def read() -> None:
            try:
                for ev in events:
                    seen.append((ev.container_id, ev.container_event_type))
                    if ev.container_event_type == api_pb2.CONTAINER_STARTED_EVENT:
                        done.set()
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.3)  # the subscription is in place before the container starts
        pod = co.pod_sandbox_config("events", namespace="e2e")
        pod_id = co.run_pod(ch, pod)
        cid = co.create_and_start(
            ch, pod_id, pod, co.container_config("app", pod, command=["sleep", "3600"])
        )
        assert done.wait(20), f"no CONTAINER_STARTED_EVENT; saw {seen}"
        assert (cid, api_pb2.CONTAINER_STARTED_EVENT) in seen
        events.cancel()
        co.remove_pod(ch, pod_id)


def test_relay_survives_a_runtime_restart(relay_factory, runtime) -> None:
    relay = relay_factory()
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"
        runtime.stop_daemon()
        with pytest.raises(grpc.RpcError) as err:
            co.call(ch, "Version", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert relay.running
        runtime.start_daemon()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert co.call(ch, "Version", timeout=5).runtime_name == "containerd"
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "relay did not recover"
                time.sleep(0.2)
    assert relay.running
    assert relay.log_text().count("does not accept connections") <= 1


def test_relay_waits_for_the_runtime_before_opening_its_socket(relay_factory, runtime) -> None:
    runtime.stop_daemon()
    relay = relay_factory(start=False)
    import os  # noqa: PLC0415

    proc = relay
    proc_thread = threading.Thread(target=proc.start, kwargs={"timeout": 30}, daemon=True)
    proc_thread.start()
    time.sleep(1.5)
    assert not os.path.exists(relay.socket), "socket must not exist before the runtime answers"
    runtime.start_daemon()
    proc_thread.join(30)
    assert os.path.exists(relay.socket)
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"
    assert relay.log_text().count("waiting for the runtime") == 1


def test_sigterm_stops_cleanly(relay_factory) -> None:
    import os  # noqa: PLC0415

    relay = relay_factory()
    assert os.stat(relay.socket).st_mode & 0o777 == 0o660
    assert relay.stop() == 0
    assert not os.path.exists(relay.socket)


def test_second_instance_refuses(relay_factory) -> None:
    first = relay_factory()
    second = relay_factory(workdir=first.workdir, start=False)
    second.proc = None
    import subprocess  # noqa: PLC0415

    out = subprocess.run(
        second.command(), capture_output=True, text=True, timeout=30, env=second.env, check=False
    )
    assert out.returncode != 0
    assert "already serves" in out.stderr
    assert first.running


def test_second_instance_on_the_same_state_refuses(relay_factory, tmp_path) -> None:
    """Another socket but the same state directory: two policies would overwrite each
    other's state and re-place each other's containers."""
    import subprocess  # noqa: PLC0415

    first = relay_factory("-policy=static", "-reserved-cpus=0")
    second = relay_factory(
        "-policy=static", "-reserved-cpus=0", f"-relay-dir={first.state_dir}", start=False
    )
    out = subprocess.run(
        second.command(), capture_output=True, text=True, timeout=30, env=second.env, check=False
    )
    assert out.returncode != 0
    assert f"uses the state directory {first.state_dir}" in out.stderr
    assert not os.path.exists(second.socket)
    assert first.running
    with grpc.insecure_channel("unix:" + first.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"


def test_many_hooked_calls_keep_one_connection(relay_factory) -> None:
    """Kubelet keeps one connection for everything. Pod after pod through a policy (the
    relay answers those calls itself) must not get it sent away by containerd's
    keepalive enforcement (GOAWAY too_many_pings)."""
    relay = relay_factory("-policy=static", "-reserved-cpus=0")
    ready = []
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        ch.subscribe(
            lambda s: ready.append(s) if s == grpc.ChannelConnectivity.READY else None,
            try_to_connect=True,
        )
        for i in range(15):
            pod = co.pod_sandbox_config(f"cycle{i}", namespace="e2e")
            pod_id = co.run_pod(ch, pod)
            co.create_and_start(
                ch, pod_id, pod, co.container_config("app", pod, command=["sleep", "60"])
            )
            co.remove_pod(ch, pod_id)
        assert co.call(ch, "Version").runtime_name == "containerd"
    assert len(ready) == 1, "the client had to reconnect"
    assert "too_many_pings" not in relay.log_text()


def test_project_client_with_metadata_through_the_relay(relay_factory, runtime) -> None:
    """The project's own CRI client, with invocation metadata (text and -bin) as
    kubelet's tracing adds: the relay passes it and answers exactly like containerd."""
    from cri_resmgr.cri.client import CriClient  # noqa: PLC0415

    relay = relay_factory()
    metadata = (
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-debug-bin", b"\x00\x01\xfe\xff"),
    )
    answers = []
    for address in (runtime.address, relay.address):
        with CriClient(address) as client:
            client.wait_ready(10)
            version = client.runtime.Version(
                api_pb2.VersionRequest(version="v1"), metadata=metadata, timeout=10
            )
            images = client.image.ListImages(
                api_pb2.ListImagesRequest(), metadata=metadata, timeout=10
            )
            answers.append((version, sorted(i.id for i in images.images)))
    assert answers[0] == answers[1]
    assert answers[1][0].runtime_name == "containerd"
