"""End-to-end: the static policy through a real `cri-resmgr` process and a real containerd.

On this 2-CPU machine with ``-policy static -reserved-cpus 0`` (as the issue writes
it): a Guaranteed 1-CPU container gets CPU 1 for itself, a Burstable container of the
same run is moved to CPU 0 and back to 0-1 once the first is removed. Between the steps the relay is
killed with SIGKILL and restarted; every allocation survives (no CPU is given twice).
What is checked is the kernel's view: the containers' cpuset cgroups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Tuple

import grpc
import pytest

from cri_resmgr.cri import api_pb2
from harness import cri_objects as co
from harness.cgroups import cpuset_of

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def _cpus(channel: grpc.Channel, cid: str) -> Tuple[str, str]:
    """(cpuset.cpus, cpuset.mems) of the container's real cgroup."""
    got = cpuset_of(co.container_pid(channel, cid))
    assert got.allowed == got.cpus  # the process obeys its cgroup
    return got.cpus, got.mems


def _expect(relay: Any, channel: grpc.Channel, cid: str, cpus: str, mems: str = "0") -> None:
    """The container's cgroup has `cpus`/`mems`; else fail with the relay's log."""
    got = _cpus(channel, cid)
    assert got == (cpus, mems), f"{cid[:12]}: cgroup {got}, want {(cpus, mems)}\n" + (
        relay.log_tail(60)
    )


def _state(relay: Any) -> dict:
    return json.loads((Path(relay.state_dir) / "state.json").read_text())  # type: ignore[no-any-return]


def _restart(relay: Any) -> None:
    """SIGKILL the relay (no shutdown code runs) and start it again; returns once the
    new process accepts calls, i.e. after its restore and resync."""
    relay.restart_after_kill()


@pytest.fixture
def two_cpus() -> None:
    if os.sched_getaffinity(0) != {0, 1}:
        pytest.skip("this test is written for a machine with exactly CPUs 0 and 1")


def test_static_policy_survives_sigkill(
    two_cpus: None, runtime: Any, relay_factory: Callable[..., Any]
) -> None:
    relay = relay_factory("-policy", "static", "-reserved-cpus", "0")
    ch = grpc.insecure_channel(relay.address)
    logs = str(runtime.pod_log_root)

    # a Burstable container: the whole shared pool
    b_pod = co.pod_sandbox_config("burst", qos="burstable", log_root=logs)
    b_pod_id = co.run_pod(ch, b_pod)
    b_cfg = co.container_config("app", b_pod, command=["sleep", "3600"], requests={"cpu": 250})
    b = co.create_and_start(ch, b_pod_id, b_pod, b_cfg)
    _expect(relay, ch, b, "0-1")

    _restart(relay)
    ch = grpc.insecure_channel(relay.address)
    _expect(relay, ch, b, "0-1")

    # a Guaranteed 1-CPU container: CPU 1 (0 is reserved); the Burstable one moves to 0
    g_pod = co.pod_sandbox_config("guar", qos="guaranteed", log_root=logs)
    g_pod_id = co.run_pod(ch, g_pod)
    g_res = {"cpu": 1000, "memory": 64 * MIB}
    g_cfg = co.container_config(
        "app", g_pod, command=["sleep", "3600"], requests=g_res, limits=g_res
    )
    g = co.create_and_start(ch, g_pod_id, g_pod, g_cfg)
    _expect(relay, ch, g, "1")
    _expect(relay, ch, b, "0")
    placed = _state(relay)["containers"]
    assert placed[g]["placement"]["exclusive"] == "1"
    assert placed[b]["placement"]["cpus"] == "0"

    _restart(relay)
    ch = grpc.insecure_channel(relay.address)
    _expect(relay, ch, g, "1")
    _expect(relay, ch, b, "0")
    assert _state(relay)["containers"][g]["placement"]["exclusive"] == "1"

    # CPU 1 is still taken after the restart: a second exclusive CPU is refused
    g2_pod = co.pod_sandbox_config("guar2", qos="guaranteed", log_root=logs)
    g2_pod_id = co.run_pod(ch, g2_pod)
    g2_cfg = co.container_config(
        "app", g2_pod, command=["sleep", "3600"], requests=g_res, limits=g_res
    )
    with pytest.raises(grpc.RpcError) as info:
        co.create_and_start(ch, g2_pod_id, g2_pod, g2_cfg)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cri-resmgr" in (info.value.details() or "")
    co.remove_pod(ch, g2_pod_id)

    # the Guaranteed container goes: the Burstable one is back on 0-1
    co.call(ch, "StopContainer", api_pb2.StopContainerRequest(container_id=g, timeout=0))
    co.call(ch, "RemoveContainer", api_pb2.RemoveContainerRequest(container_id=g))
    _expect(relay, ch, b, "0-1")

    _restart(relay)
    ch = grpc.insecure_channel(relay.address)
    _expect(relay, ch, b, "0-1")
    state = _state(relay)
    assert g not in state["containers"] and state["containers"][b]["placement"]["cpus"] == "0-1"

    # and CPU 1 can be given out again
    g3 = co.create_and_start(
        ch,
        g_pod_id,
        g_pod,
        co.container_config(
            "again", g_pod, command=["sleep", "3600"], requests=g_res, limits=g_res
        ),
    )
    _expect(relay, ch, g3, "1")
    _expect(relay, ch, b, "0")
    assert "placed default/guar:again" in relay.log_text()
    co.remove_pod(ch, g_pod_id)
    co.remove_pod(ch, b_pod_id)


def test_containers_from_before_the_relay_are_adopted(
    two_cpus: None, runtime: Any, relay_factory: Callable[..., Any]
) -> None:
    """A Guaranteed container created straight at containerd is placed at start-up."""
    direct = runtime.channel()
    logs = str(runtime.pod_log_root)
    g_pod = co.pod_sandbox_config("early", qos="guaranteed", log_root=logs)
    g_pod_id = co.run_pod(direct, g_pod)
    g_res = {"cpu": 1000, "memory": 64 * MIB}
    g_cfg = co.container_config(
        "app", g_pod, command=["sleep", "3600"], requests=g_res, limits=g_res
    )
    g = co.create_and_start(direct, g_pod_id, g_pod, g_cfg)
    assert _cpus(direct, g)[0] == "0-1"  # nobody pinned it

    relay = relay_factory("-policy=static", "-reserved-cpus=cpuset:0")
    _expect(relay, direct, g, "1")  # adopted and pushed before the socket opened
    assert _state(relay)["containers"][g]["placement"]["exclusive"] == "1"
    assert "adopting default/early:app" in relay.log_text()
    co.remove_pod(grpc.insecure_channel(relay.address), g_pod_id)
