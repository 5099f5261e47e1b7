"""End-to-end: the balloons policy through a real `cri-resmgr` process and a real containerd.

On this 2-CPU machine with ``reserved-cpus = 0`` and one balloon type ``web`` (namespace
web, at most one balloon of at most 1 CPU): web containers share CPU 1, containers of
other namespaces run in the default balloon on the reserved CPU 0 (as do kube-system
ones), an annotation sends a pod of another namespace to the web balloon, a container
that does not fit is refused with RESOURCE_EXHAUSTED (a bad annotation with
INVALID_ARGUMENT), and once another goes there is room again. The
relay is killed with SIGKILL and restarted in between: every placement survives. A
configuration the machine cannot satisfy stops the relay at start with an error that
names the section and key (no traceback). What is checked is the kernel's view: the
containers' cpuset cgroups.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import grpc
import pytest

from cri_resmgr.cri import api_pb2
from harness import cri_objects as co
from harness.cgroups import cpuset_of
from harness.relay import RelayError

pytestmark = pytest.mark.e2e

ANNOTATION = "balloon.balloons.cri-resource-manager.intel.com/pod"
CONFIG = """\
[policy]
name = balloons
reserved-cpus = 0

[policy.balloons.type.web]
namespaces = web
max-cpus = 1
max-balloons = 1
"""


@pytest.fixture
def two_cpus() -> None:
    if os.sched_getaffinity(0) != {0, 1}:
        pytest.skip("this test is written for a machine with exactly CPUs 0 and 1")


def _expect(relay: Any, channel: grpc.Channel, cid: str, cpus: str, mems: str = "0") -> None:
    """The container's cgroup has `cpus`/`mems`; else fail with the relay's log."""
    got = cpuset_of(co.container_pid(channel, cid))
    assert got.allowed == got.cpus  # the process obeys its cgroup
    assert (got.cpus, got.mems) == (cpus, mems), (
        f"{cid[:12]}: cgroup {(got.cpus, got.mems)}, want {(cpus, mems)}\n" + relay.log_tail(60)
    )


def _restart(relay: Any) -> None:
    """SIGKILL the relay (no shutdown code runs) and start it again; returns once the
    new process accepts calls, i.e. after its restore and resync."""
    relay.restart_after_kill()


def _pools(relay: Any) -> Dict[str, str]:
    """Container id -> the balloon its persisted placement names."""
    state = json.loads((Path(relay.state_dir) / "state.json").read_text())
    return {cid: c["placement"]["pool"] for cid, c in state["containers"].items() if c["placement"]}


def _balloons_relay(make: Callable[..., Any], config: str = CONFIG) -> Any:
    relay = make(start=False)
    (relay.config_dir / "10-balloons.conf").write_text(config)
    return relay


def test_balloons_place_and_survive_sigkill(
    two_cpus: None,
    runtime: Any,
    relay_factory: Callable[..., Any],
) -> None:
    relay = _balloons_relay(relay_factory).start()
    ch = grpc.insecure_channel(relay.address)
    logs = str(runtime.pod_log_root)

    def start(
        name: str,
        namespace: str,
        milli: int,
        annotations: Optional[Dict[str, str]] = None,
    ) -> str:
        pod = co.pod_sandbox_config(
            name, namespace=namespace, qos="burstable", log_root=logs, annotations=annotations
        )
        pod_id = co.run_pod(ch, pod)
        cfg = co.container_config("app", pod, command=["sleep", "3600"], requests={"cpu": milli})
        return co.create_and_start(ch, pod_id, pod, cfg)

    a = start("a", "web", 400)
    _expect(relay, ch, a, "1")
    d = start("d", "default", 300)
    _expect(relay, ch, d, "0")  # the default balloon runs on the reserved CPUs
    k = start("dns", "kube-system", 100)
    _expect(relay, ch, k, "0")
    s = start("special", "default", 300, {ANNOTATION: "web"})
    _expect(relay, ch, s, "1")
    assert _pools(relay) == {a: "web[0]", d: "default", k: "reserved", s: "web[0]"}

    _restart(relay)
    ch = grpc.insecure_channel(relay.address)
    for cid, cpus in ((a, "1"), (d, "0"), (k, "0"), (s, "1")):
        _expect(relay, ch, cid, cpus)
    assert _pools(relay) == {a: "web[0]", d: "default", k: "reserved", s: "web[0]"}

    # 700m are in web[0]; 300m more fit its one CPU, 500m more do not
    b = start("b", "web", 300)
    _expect(relay, ch, b, "1")
    with pytest.raises(grpc.RpcError) as info:
        start("c", "web", 500)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = info.value.details() or ""
    assert "cri-resmgr: cannot place web/c:app (500m CPU) in a balloon of type web" in details
    assert "max-balloons 1 reached" in details

    # a bad annotation fails the container with a message naming it
    with pytest.raises(grpc.RpcError) as info:
        start("bad", "default", 100, {ANNOTATION: "nope"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names no balloon type" in (info.value.details() or "")

    # the first web container goes: now 400m fit again
    co.call(ch, "StopContainer", api_pb2.StopContainerRequest(container_id=a, timeout=0))
    co.call(ch, "RemoveContainer", api_pb2.RemoveContainerRequest(container_id=a))
    c = start("c2", "web", 400)
    _expect(relay, ch, c, "1")

    _restart(relay)
    ch = grpc.insecure_channel(relay.address)
    for cid, cpus in ((b, "1"), (c, "1"), (d, "0"), (k, "0"), (s, "1")):
        _expect(relay, ch, cid, cpus)
    assert _pools(relay)[c] == "web[0]" and a not in _pools(relay)
    assert "Traceback" not in relay.log_text()
    # the runtime fixture removes the pods (straight at containerd)


def test_unsatisfiable_configuration_is_refused_at_start(
    two_cpus: None,
    runtime: Any,
    relay_factory: Callable[..., Any],
) -> None:
    config = CONFIG + "\n[policy.balloons.type.big]\nmin-balloons = 2\nmin-cpus = 1\n"
    relay = _balloons_relay(relay_factory, config)
    with pytest.raises(RelayError) as info:
        relay.start()
    text = str(info.value)
    assert "[policy.balloons.type.big] min-balloons" in text, text
    assert (
        "the balloons created at start need 2 CPUs (big 2 x 1) but balloons can use only 1" in text
    )
    assert "Traceback" not in relay.log_text()
    assert not relay.running


def test_unsatisfiable_configuration_is_refused_on_reload(
    two_cpus: None,
    runtime: Any,
    relay_factory: Callable[..., Any],
) -> None:
    """SIGHUP with balloon types the machine cannot hold: the reload is rejected with the
    same error as at start, and the running configuration stays in force."""
    relay = _balloons_relay(relay_factory)
    relay.start()
    conf = relay.config_dir / "10-balloons.conf"
    conf.write_text(CONFIG + "\n[policy.balloons.type.big]\nmin-balloons = 2\nmin-cpus = 1\n")
    relay.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "configuration rejected" not in relay.log_text():
        assert time.monotonic() < deadline, relay.log_tail()
        time.sleep(0.05)
    log = relay.log_text()
    assert "10-balloons.conf" in log and "[policy.balloons.type.big] min-balloons" in log
    assert relay.running
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"
