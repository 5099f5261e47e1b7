"""End-to-end: the topology-aware policy through a real `cri-resmgr` and a real containerd.

This VM has 2 CPUs and one NUMA node; with ``-policy topology-aware -reserved-cpus 0``
CPU 0 is reserved and CPU 1 is the only shared CPU, so:

* kube-system containers and ``prefer-reserved-cpus`` ones run on CPU 0;
* Burstable/BestEffort containers run on CPU 1 (mems 0, cpu.shares from the request);
* a Guaranteed 1-CPU container cannot have CPU 1 for itself (the machine keeps one
  shared CPU): CreateContainer fails with RESOURCE_EXHAUSTED, and with
  ``prefer-shared-cpus`` the same container runs on CPU 1;
* ``cpu.preserve`` leaves the container's cpuset as containerd made it (0-1);
* a malformed annotation is one WARNING line and the container still runs.

Between the steps the relay is killed with SIGKILL and restarted: every placement
survives. A reload (SIGHUP) that adds a namespace to reserved-pool-namespaces moves
that namespace's running container to CPU 0. What is checked is the kernel's view:
the containers' cpuset (and cpu) cgroups.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import grpc
import pytest

from harness import cri_objects as co
from harness.cgroups import CGROUP_ROOT, cpuset_of

pytestmark = pytest.mark.e2e

MIB = 1 << 20
D = "cri-resource-manager.intel.com"


def _cgroup(channel: grpc.Channel, cid: str) -> Tuple[str, str]:
    """(cpuset.cpus, cpuset.mems) of the container's real cgroup."""
    got = cpuset_of(co.container_pid(channel, cid))
    assert got.allowed == got.cpus  # the process obeys its cgroup
    return got.cpus, got.mems


def _shares(channel: grpc.Channel, cid: str) -> int:
    """cpu.shares (v1) or cpu.weight-derived shares (v2) of the container's cgroup."""
    pid = co.container_pid(channel, cid)
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            directory = CGROUP_ROOT / controllers / path.lstrip("/")
            return int((directory / "cpu.shares").read_text())
        if controllers == "":
            weight = int((CGROUP_ROOT / path.lstrip("/") / "cpu.weight").read_text())
            return 2 + ((weight - 1) * 262142) // 9999  # runc's shares -> weight, inverted
    raise AssertionError(f"process {pid} is in no cpu cgroup")


def _expect(relay: Any, channel: grpc.Channel, cid: str, cpus: str, mems: str = "0") -> None:
    got = _cgroup(channel, cid)
    assert got == (cpus, mems), f"{cid[:12]}: cgroup {got}, want {(cpus, mems)}\n" + (
        relay.log_tail(60)
    )


def _wait_for(relay: Any, channel: grpc.Channel, cid: str, cpus: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _cgroup(channel, cid)[0] != cpus:
        assert time.monotonic() < deadline, f"{cid[:12]} never moved to {cpus}\n" + (
            relay.log_tail(60)
        )
        time.sleep(0.1)


def _state(relay: Any) -> Dict[str, Any]:
    return json.loads((Path(relay.state_dir) / "state.json").read_text())  # type: ignore[no-any-return]


def _restart(relay: Any) -> grpc.Channel:
    """SIGKILL the relay, start it again, return a channel once it accepts calls."""
    relay.restart_after_kill()
    return grpc.insecure_channel(relay.address)


def _connection(relay: Any) -> grpc.Channel:
    """A channel to the relay (grpcio shares one connection among them, as kubelet
    uses one: pod after pod of hooked calls must not lose it to GOAWAY too_many_pings)."""
    return grpc.insecure_channel(relay.address)


@pytest.fixture
def two_cpus() -> None:
    if os.sched_getaffinity(0) != {0, 1}:
        pytest.skip("this test is written for a machine with exactly CPUs 0 and 1")


class _Pods:
    """Pods of one test, started and removed through the relay."""

    def __init__(self, relay: Any, log_root: str) -> None:
        self.relay = relay
        self.log_root = log_root
        self.ids: Dict[str, str] = {}  # pod name -> sandbox id

    def start(
        self,
        name: str,
        ns: str = "default",
        qos: str = "burstable",
        annotations: Any = None,
        **resources: Any,
    ) -> str:
        """Run pod ``name`` with one container ``app`` (sleep); its container id."""
        own = _connection(self.relay)
        try:
            pod = co.pod_sandbox_config(
                name, namespace=ns, qos=qos, log_root=self.log_root, annotations=annotations
            )
            self.ids[name] = co.run_pod(own, pod)
            cfg = co.container_config("app", pod, command=["sleep", "3600"], **resources)
            return co.create_and_start(own, self.ids[name], pod, cfg)
        finally:
            own.close()

    def remove(self, name: str) -> None:
        own = _connection(self.relay)
        try:
            co.remove_pod(own, self.ids.pop(name))
        finally:
            own.close()


def _malformed(relay: Any) -> List[str]:
    return [
        line
        for line in relay.log_text().splitlines()
        if "malformed annotation" in line and "WARNING" in line
    ]


def test_topology_aware_placements_survive_restart_and_reload(
    two_cpus: None, runtime: Any, relay_factory: Callable[..., Any]
) -> None:
    relay = relay_factory("-policy", "topology-aware", "-reserved-cpus", "0")
    ch = grpc.insecure_channel(relay.address)
    pods = _Pods(relay, str(runtime.pod_log_root))
    g = {"cpu": 1000, "memory": 64 * MIB}

    want = {  # container id -> cpuset.cpus of its cgroup
        pods.start("dns", ns="kube-system", qos="besteffort"): "0",
        pods.start("web", requests={"cpu": 250, "memory": 32 * MIB}): "1",
        pods.start("prom", ns="monitoring", requests={"cpu": 100}): "1",
        pods.start("agent", annotations={f"prefer-reserved-cpus.{D}/pod": "true"}): "0",
        # untouched: containerd's default
        pods.start("legacy", annotations={f"cpu.preserve.{D}/container.app": "true"}): "0-1",
        # malformed: the default (DRAM) applies
        pods.start("odd", annotations={f"memory-type.{D}/pod": "fast"}): "1",
    }
    web, mon, keep = list(want)[1], list(want)[2], list(want)[4]
    for cid, cpus in want.items():
        _expect(relay, ch, cid, cpus)
    assert _shares(ch, web) == 256
    warnings = _malformed(relay)
    assert len(warnings) == 1, warnings
    assert "pod default/odd container app" in warnings[0]
    assert f"memory-type.{D}/pod='fast'" in warnings[0]

    # a Guaranteed 1-CPU container cannot take the last shared CPU ...
    with pytest.raises(grpc.RpcError) as info:
        pods.start("guar", qos="guaranteed", requests=g, limits=g)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cannot give default/guar:app 1 exclusive CPUs" in (info.value.details() or "")
    pods.remove("guar")
    # ... but runs on it when it prefers shared CPUs
    shared_g = pods.start(
        "guar2",
        qos="guaranteed",
        annotations={f"prefer-shared-cpus.{D}/pod": "true"},
        requests=g,
        limits=g,
    )
    want[shared_g] = "1"
    _expect(relay, ch, shared_g, "1")
    assert _shares(ch, shared_g) == 1024
    placed = _state(relay)["containers"]
    assert [placed[c]["placement"]["class"] for c in list(want)[:5]] == [
        "reserved", "shared", "shared", "reserved", "preserved",
    ]  # fmt: skip

    # a crash and a restart: everything stays where it was
    ch = _restart(relay)
    for cid, cpus in want.items():
        _expect(relay, ch, cid, cpus)
    after = _state(relay)["containers"]
    assert {k: v["placement"] for k, v in after.items()} == {
        k: v["placement"] for k, v in placed.items()
    }
    assert len(_malformed(relay)) == 1  # adopting it again is no new placement

    # a reload that reserves the monitoring namespace moves its container at once
    (Path(relay.config_dir) / "90-monitoring.conf").write_text(
        "[policy.topology-aware]\nreserved-pool-namespaces = kube-system, monitoring\n"
    )
    relay.signal(signal.SIGHUP)
    _wait_for(relay, ch, mon, "0")
    want[mon] = "0"
    assert "needs a restart" not in relay.log_text()

    # and that survives another restart too
    ch = _restart(relay)
    for cid, cpus in want.items():
        _expect(relay, ch, cid, cpus)
    assert _state(relay)["containers"][mon]["placement"]["class"] == "reserved"
    assert _state(relay)["containers"][keep]["placement"]["class"] == "preserved"

    for name in list(pods.ids):
        pods.remove(name)
    assert not _state(relay)["containers"]
