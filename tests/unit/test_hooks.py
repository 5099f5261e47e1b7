"""hooks: CRI calls through the hook table with a fake forward and a fake runtime client.

The runtime is `simulate.InMemoryRuntime`: its `forward(method)` is the relay's forward
and the object itself is the runtime client the hooks push to and resync from.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import pytest

from cri_resmgr import errors, podspec
from cri_resmgr import hooks as hk
from cri_resmgr.config import load as load_config
from cri_resmgr.cri import api_pb2
from cri_resmgr.policy.base import (
    BESTEFFORT,
    BURSTABLE,
    EXCLUSIVE,
    GUARANTEED,
    SHARED,
    Container,
    Decision,
    Placement,
    Pod,
    Policy,
)
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.relay import CallInfo, ForwardError
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load
from cri_resmgr.simulate import InMemoryRuntime
from cri_resmgr.state import STATE_FILE, ContainerEntry, State

GIB = 1 << 30
RS = "/runtime.v1.RuntimeService/"


@pytest.fixture(scope="module")
def topo4(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """4 CPUs (0-3), one node, no SMT."""
    root = tmp_path_factory.mktemp("topo4")
    synthetic.write_sysfs(root, cores_per_node=4, threads_per_core=1, extras=False)
    return load(root)


@pytest.fixture(scope="module")
def topo16(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """16 CPUs in two nodes (0-7, 8-15), no SMT."""
    root = tmp_path_factory.mktemp("topo16")
    synthetic.write_sysfs(root, nodes_per_die=2, cores_per_node=8, threads_per_core=1, extras=False)
    return load(root)


class Node:
    """Kubelet's side: builds requests as kubelet does and calls the hook table."""

    def __init__(self, hooks: hk.Hooks, runtime: InMemoryRuntime) -> None:
        self.hooks = hooks
        self.runtime = runtime
        self.table = hooks.table()
        self.sent: List[Tuple[str, bytes]] = []  # what reached the runtime
        self.pods: Dict[str, Tuple[str, api_pb2.PodSandboxConfig, str]] = {}
        self.report: Optional[hk.ResyncReport] = None

    def forward(self, method: str) -> Callable[[bytes], bytes]:
        real = self.runtime.forward(RS + method)

        def fwd(request: bytes) -> bytes:
            self.sent.append((method, request))
            return real(request)

        return fwd

    def call(
        self, method: str, msg: Any, forward: Optional[Callable[[bytes], bytes]] = None
    ) -> Any:
        reply = self.table[RS + method](
            msg.SerializeToString(),
            forward or self.forward(method),
            CallInfo(method=RS + method, metadata=(), deadline=None),
        )
        return getattr(api_pb2, method + "Response").FromString(reply)

    def run_pod(self, name: str, qos: str = GUARANTEED, namespace: str = "default") -> str:
        uid = f"uid-{name}"
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            labels={podspec.LABEL_POD_NAME: name},
            annotations={"pod-annotation": name},
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=podspec.cgroup_parent(uid, qos)),
        )
        pod_id = self.call(
            "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config)
        ).pod_sandbox_id
        self.pods[name] = (pod_id, config, qos)
        return str(pod_id)

    def create_request(
        self, pod: str, name: str, cpu: int = 0, memory: int = GIB, attempt: int = 0
    ) -> api_pb2.CreateContainerRequest:
        pod_id, config, qos = self.pods[pod]
        if qos == GUARANTEED:
            spec = podspec.Requirements(cpu_limit=cpu, memory_limit=memory)
        elif qos == BURSTABLE:
            spec = podspec.Requirements(cpu_request=cpu or 100)
        else:
            spec = podspec.Requirements()
        res = podspec.container_resources(spec, qos, 16 * GIB)
        return api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id,
            config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
                annotations={"container-annotation": name},
                linux=api_pb2.LinuxContainerConfig(
                    resources=api_pb2.LinuxContainerResources(**res.to_json())
                ),
            ),
            sandbox_config=config,
        )

    def create(self, pod: str, name: str, cpu: int = 0, **kw: Any) -> str:
        req = self.create_request(pod, name, cpu, **kw)
        cid = str(self.call("CreateContainer", req).container_id)
        self.call("StartContainer", api_pb2.StartContainerRequest(container_id=cid))
        return cid

    def cpus(self, cid: str) -> str:
        return str(self.runtime.containers[cid].resources.cpuset_cpus)

    def stop_remove(self, cid: str) -> None:
        self.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
        self.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))


def make(
    topo: Topology,
    tmp_path: Path,
    *,
    reserved: str = "0",
    on_error: str = "fail",
    policy: Optional[Policy] = None,
    runtime: Optional[InMemoryRuntime] = None,
    metrics: Optional[Any] = None,
) -> Node:
    policy = policy or StaticPolicy(topo, CPUSet.parse(reserved), {})
    state = State.load(str(tmp_path / "state"), policy.NAME)
    runtime = runtime or InMemoryRuntime()
    hooks = hk.Hooks(policy, state, runtime, hk.HookOptions(on_error=on_error), metrics=metrics)
    node = Node(hooks, runtime)
    node.report = hooks.resync()
    return node


def saved(tmp_path: Path) -> Dict[str, Any]:
    return json.loads((tmp_path / "state" / STATE_FILE).read_text())  # type: ignore[no-any-return]


# --- CreateContainer -------------------------------------------------------------------


def test_table_covers_the_hooked_methods(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    assert set(node.table) == set(hk.HOOKED_METHODS)
    assert all(m.startswith(RS) for m in node.table)


def test_create_allocates_and_rewrites(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="cri_resmgr.hooks")
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=2000)
    # the request the runtime got carries the cpuset (bytes, decoded)
    method, raw = [s for s in node.sent if s[0] == "CreateContainer"][0]
    sent = api_pb2.CreateContainerRequest.FromString(raw).config.linux.resources
    assert (sent.cpuset_cpus, sent.cpuset_mems) == ("1-2", "0")
    assert b"1-2" in raw
    assert sent.cpu_shares == 2048 and sent.memory_limit_in_bytes == GIB  # kubelet's fields stay
    assert node.cpus(cid) == "1-2"
    # recorded under the runtime's id, persisted
    entry = node.hooks.state.containers[cid]
    assert entry.placement is not None and entry.placement.cpu_class == EXCLUSIVE
    assert entry.container.id == cid and entry.container.qos == GUARANTEED
    assert entry.container.annotations == {"container-annotation": "app"}
    assert entry.container.pod_annotations == {"pod-annotation": "web"}
    assert saved(tmp_path)["containers"][cid]["placement"]["cpus"] == "1-2"
    assert set(node.hooks.policy.placements()) == {cid}  # provisional key renamed
    # one INFO line naming namespace/pod:container and the CPUs and memory nodes
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    placed = [m for m in lines if m.startswith("placed default/web:app")]
    assert len(placed) == 1 and "cpus 1-2" in placed[0] and "mems 0" in placed[0]


def placed_lines(caplog: Any) -> List[str]:
    """The INFO lines of the hooks that announce a placement."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "cri_resmgr.hooks"
        and r.levelno == logging.INFO
        and r.getMessage().startswith("placed ")
    ]


def test_one_info_line_per_placement(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    """Moved while its create was in flight, placed again by a policy without rename,
    adopted at the resync: each placement is one INFO line."""
    caplog.set_level(logging.INFO, logger="cri_resmgr.hooks")
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("be", BESTEFFORT)
    node.run_pod("web")
    real = node.runtime.forward(RS + "CreateContainer")

    def meanwhile(request: bytes) -> bytes:
        node.create("web", "g", cpu=2000)  # moves the shared pool under the in-flight one
        return real(request)

    node.call("CreateContainer", node.create_request("be", "s"), forward=meanwhile)
    lines = placed_lines(caplog)
    assert len(lines) == 2 and {line.split(" ")[1] for line in lines} == {
        "default/web:g",
        "default/be:s",
    }
    assert [line for line in lines if "be:s" in line][0].count("cpus 0,3") == 1
    caplog.clear()
    adopted = runtime.CreateContainer(node.create_request("web", "direct", cpu=1000))
    runtime.StartContainer(api_pb2.StartContainerRequest(container_id=adopted.container_id))
    other = make(topo4, tmp_path, runtime=runtime, policy=NoRename(topo4, CPUSet.of(0), {}))
    # adopted, and the others placed again (a policy switch): one line each
    assert sorted(line.split(" ")[1] for line in placed_lines(caplog)) == [
        "default/be:s",
        "default/web:direct",
        "default/web:g",
    ]
    caplog.clear()
    other.pods = node.pods
    other.create("web", "late", cpu=0)  # NoRename: released and placed again under its id
    assert [line.split(" ")[1] for line in placed_lines(caplog)] == ["default/web:late"]


def test_undo_when_the_runtime_rejects_create(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    node.runtime.fail("CreateContainer", "INVALID_ARGUMENT", "bad image")
    with pytest.raises(ForwardError) as info:
        node.create("web", "app", cpu=3000)
    assert info.value.code.name == "INVALID_ARGUMENT"  # the runtime's error goes to kubelet
    assert node.hooks.policy.placements() == {}
    assert not node.hooks.state.containers and not node.hooks._inflight
    assert saved(tmp_path)["containers"] == {}
    # the CPUs are free again: the same request fits
    cid = node.create("web", "app", cpu=3000)
    assert node.cpus(cid) == "1-3"


def test_undo_releases_knock_on_updates(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    shared = node.create("be", "shared")
    assert node.cpus(shared) == "0-3"
    node.run_pod("web")
    node.runtime.fail("CreateContainer", "INTERNAL")
    with pytest.raises(ForwardError):
        node.create("web", "app", cpu=2000)
    # the shared container was moved off 1-2 before the create, and back after the undo
    assert node.cpus(shared) == "0-3"
    assert node.runtime.containers[shared].updates == 2


def test_ambiguous_failure_keeps_a_created_container(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    real = node.runtime.forward(RS + "CreateContainer")

    def created_then_timeout(request: bytes) -> bytes:
        real(request)  # the runtime made it ...
        raise hk.runtime_error("DEADLINE_EXCEEDED", "deadline exceeded")  # ... kubelet gave up

    req = node.create_request("web", "app", cpu=1000)
    with pytest.raises(ForwardError):
        node.call("CreateContainer", req, forward=created_then_timeout)
    (cid,) = node.runtime.containers
    assert cid in node.hooks.state.containers  # kept: its CPUs stay taken until removal
    assert set(node.hooks.policy.placements()) == {cid}
    # kubelet later removes it: released
    node.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
    assert node.hooks.policy.placements() == {}


def test_ambiguous_failure_without_a_container_releases(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    node.runtime.fail("CreateContainer", "DEADLINE_EXCEEDED")
    with pytest.raises(ForwardError):
        node.create("web", "app", cpu=1000)
    assert node.hooks.policy.placements() == {}


def test_on_error_fail_sends_the_policy_error(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    with pytest.raises(errors.AllocationError) as info:
        node.create("web", "big", cpu=4000)  # 4 CPUs, one reserved
    assert errors.grpc_status(info.value)[0] == "RESOURCE_EXHAUSTED"
    assert not [s for s in node.sent if s[0] == "CreateContainer"]  # never reached the runtime
    assert not node.hooks.state.containers and not node.hooks._inflight


def test_on_error_pass_forwards_unmodified(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    node = make(topo4, tmp_path, on_error="pass")
    node.run_pod("web")
    req = node.create_request("web", "big", cpu=4000)
    cid = node.call("CreateContainer", req).container_id
    method, raw = [s for s in node.sent if s[0] == "CreateContainer"][0]
    assert raw == req.SerializeToString()  # byte for byte what kubelet sent
    assert node.cpus(cid) == ""
    entry = node.hooks.state.containers[cid]
    assert entry.placement is None  # tracked, not placed
    assert "on-error=pass" in caplog.text and "default/web:big" in caplog.text
    node.stop_remove(cid)
    assert cid not in node.hooks.state.containers


class FakeMetrics:
    def __init__(self) -> None:
        self.decisions: List[Tuple[str, str, str]] = []
        self.writes: List[float] = []

    def decision(self, policy: str, operation: str, outcome: str = "ok") -> None:
        self.decisions.append((policy, operation, outcome))

    def state_write(self, seconds: float) -> None:
        self.writes.append(seconds)


def test_decisions_and_state_writes_are_counted(topo4: Topology, tmp_path: Path) -> None:
    metrics = FakeMetrics()
    node = make(topo4, tmp_path, on_error="pass", metrics=metrics)
    node.run_pod("web")
    cid = node.create("web", "ok", cpu=1000)
    node.call("CreateContainer", node.create_request("web", "big", cpu=4000))
    assert ("static", "allocate", "ok") in metrics.decisions
    assert metrics.decisions.count(("static", "allocate", "failed")) == 1
    assert metrics.decisions.count(("static", "allocate", "passed")) == 1
    node.stop_remove(cid)
    assert ("static", "release", "ok") in metrics.decisions
    assert metrics.writes and all(w >= 0 for w in metrics.writes)


class Broken(Policy):
    """A policy with a bug."""

    NAME = "broken"

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        raise KeyError("oops")

    def release(self, key: str) -> Decision:
        return Decision()

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        raise KeyError("oops")

    def restore(self, entries: Iterable[Tuple[str, Pod, Container, Placement]]) -> Decision:
        return Decision()

    def placements(self) -> Mapping[str, Placement]:
        return {}


def test_policy_bug_with_on_error_fail_is_a_policy_error(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path, policy=Broken(topo4, CPUSet.of(0), {}))
    node.run_pod("web")
    with pytest.raises(errors.PolicyError, match="KeyError"):
        node.create("web", "app", cpu=1000)


def test_policy_bug_with_on_error_pass_forwards(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path, on_error="pass", policy=Broken(topo4, CPUSet.of(0), {}))
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    assert node.cpus(cid) == ""


class NoRename(Policy):
    """Places every container on CPU 3 and does not implement rename."""

    NAME = "norename"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.keys: Dict[str, Placement] = {}

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        self.keys[key] = Placement(cpus=CPUSet.of(3), mems=CPUSet.of(0))
        return Decision(placement=self.keys[key])

    def release(self, key: str) -> Decision:
        self.keys.pop(key, None)
        return Decision()

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        return Decision()

    def restore(self, entries: Iterable[Tuple[str, Pod, Container, Placement]]) -> Decision:
        return Decision()

    def placements(self) -> Mapping[str, Placement]:
        return dict(self.keys)


def test_policy_without_rename_is_placed_again_under_the_id(
    topo4: Topology, tmp_path: Path
) -> None:
    policy = NoRename(topo4, CPUSet.of(0), {})
    node = make(topo4, tmp_path, policy=policy)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    assert list(policy.keys) == [cid]
    assert node.cpus(cid) == "3"


def test_pod_unknown_to_the_state_uses_the_sandbox_config(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    # the sandbox was created before cri-resmgr ran: straight at the runtime
    uid = "uid-old"
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="old", uid=uid, namespace="ns1"),
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=podspec.cgroup_parent(uid, GUARANTEED)),
    )
    pod_id = node.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
    node.pods["old"] = (pod_id, config, GUARANTEED)
    cid = node.create("old", "app", cpu=1000)
    assert node.hooks.state.containers[cid].container.key == "ns1/old:app"
    assert node.hooks.state.pods[pod_id].key == "ns1/old"
    assert node.hooks.state.containers[cid].placement.cpu_class == EXCLUSIVE  # type: ignore[union-attr]


@pytest.mark.parametrize("method", [m for m in hk.HOOKED_METHODS if m != hk.START_CONTAINER])
def test_undecodable_request_is_forwarded_as_is(
    topo4: Topology, tmp_path: Path, caplog: Any, method: str
) -> None:
    """Every decoding hook forwards what does not decode byte for byte, and says so."""
    node = make(topo4, tmp_path)
    got = []
    reply = node.table[method](
        b"\xff\xff\xff", lambda b: (got.append(b), b"")[1], CallInfo(method, (), None)
    )
    assert got == [b"\xff\xff\xff"] and reply == b""
    name = method.rsplit("/", 1)[1]
    assert f"{name} request does not decode" in caplog.text


def test_resources_round_trip_through_protobuf() -> None:
    res = podspec.LinuxResources(
        cpu_period=100000, cpu_quota=-1, cpu_shares=2, memory_limit_in_bytes=GIB, cpuset_mems="0"
    )
    msg = hk.resources_pb(res)
    assert msg.cpu_quota == -1 and msg.cpuset_cpus == "" and msg.cpuset_mems == "0"
    assert hk._plain(msg) == res


# --- knock-on updates --------------------------------------------------------------------


def test_updates_are_pushed_before_the_reply(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    a = node.create("be", "a")
    b = node.create("be", "b")
    assert node.cpus(a) == node.cpus(b) == "0-3"
    node.run_pod("web")
    order: List[str] = []
    real = node.runtime.forward(RS + "CreateContainer")

    def watch(request: bytes) -> bytes:
        order.append(f"create; a on {node.cpus(a)}")
        return real(request)

    g = node.call("CreateContainer", node.create_request("web", "app", cpu=2000), forward=watch)
    # shared containers moved off the exclusive CPUs before the new container was created
    assert order == ["create; a on 0,3"]
    assert node.cpus(a) == node.cpus(b) == "0,3"
    assert node.cpus(g.container_id) == "1-2"
    assert node.runtime.containers[a].updates == 1
    # removal gives the CPUs back to the shared pool, pushed too
    node.stop_remove(g.container_id)
    assert node.cpus(a) == node.cpus(b) == "0-3"


class Contended:
    """A lock that runs `on_wait()` when an acquire would block (then blocks)."""

    def __init__(self, lock: Any, on_wait: Callable[[], None]) -> None:
        self._lock = lock
        self._on_wait = on_wait

    def __enter__(self) -> Contended:
        if not self._lock.acquire(blocking=False):
            self._on_wait()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def test_updates_sent_by_another_push_are_waited_for(topo4: Topology, tmp_path: Path) -> None:
    """A CreateContainer whose knock-on updates another thread's push took from the dirty
    set (and is still sending) waits for that push before it forwards: the shared
    container is off the new exclusive CPUs before the new container exists."""
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    a = node.create("be", "a")
    node.run_pod("web")
    hooks = node.hooks
    stub = node.runtime.runtime
    real_update = stub.UpdateContainerResources
    real_create = node.runtime.forward(RS + "CreateContainer")
    sending, let_it_finish = threading.Event(), threading.Event()
    order: List[str] = []
    other = Thread(hooks._push, None)  # another call's push (a create, a removal, ...)

    def slow_update(req: Any, timeout: Optional[float] = None) -> Any:
        if threading.current_thread() is other:
            sending.set()
            let_it_finish.wait()
        return real_update(req, timeout)

    def create(request: bytes) -> bytes:
        order.append(f"create; a on {node.cpus(a)}")
        let_it_finish.set()
        return real_create(request)

    def allocated() -> bool:  # the create's updates are in the dirty set, not sent yet
        return threading.current_thread() is creating and bool(hooks._inflight and hooks._dirty)

    def other_push_takes_them() -> None:
        other.start()
        sending.wait()

    stub.UpdateContainerResources = slow_update
    hooks._lock = Seam(hooks._lock, allocated, other_push_takes_them)  # type: ignore[assignment]
    hooks._push_lock = Contended(hooks._push_lock, let_it_finish.set)  # type: ignore[assignment]
    request = node.create_request("web", "g", cpu=2000)
    creating = Thread(node.call, "CreateContainer", request, create)
    creating.start()
    creating.join()
    other.join()
    assert order == ["create; a on 0,3"]
    assert node.runtime.containers[a].updates == 1


def test_failed_push_is_logged_and_retried(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    a = node.create("be", "a")
    node.run_pod("web")
    # fails at the push before the create, the retry after it and the one at start
    node.runtime.fail("UpdateContainerResources", "UNAVAILABLE", "shim busy", times=3)
    g = node.create("web", "app", cpu=1000)  # the create itself succeeds
    assert node.cpus(g) == "1"
    assert node.cpus(a) == "0-3"  # not moved yet
    assert "default/be:a" in caplog.text and "shim busy" in caplog.text
    status = node.hooks.status()
    pending = {c["container"]: c["update_pending"] for c in status["containers"]}
    assert pending["default/be:a"] is True
    # the next change retries it
    node.create("web", "other", cpu=1000)
    assert node.cpus(a) == "0,3"
    assert not node.hooks._dirty


def test_a_create_finishing_during_shutdown_still_pushes_and_saves(
    topo4: Topology, tmp_path: Path
) -> None:
    """close() shuts the push pool down; a bind after it sends its pushes one by one."""
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    a, b = node.create("be", "a"), node.create("be", "b")
    node.run_pod("web")
    node.runtime.fail("UpdateContainerResources", "UNAVAILABLE", times=2)  # a, b stay dirty
    real = node.runtime.forward(RS + "CreateContainer")

    def shutdown_meanwhile(request: bytes) -> bytes:
        node.hooks.close()  # the service stops while the runtime creates the container
        return real(request)

    request = node.create_request("web", "g", cpu=2000)
    cid = node.call("CreateContainer", request, forward=shutdown_meanwhile).container_id
    assert node.cpus(a) == node.cpus(b) == "0,3"  # retried after the create, pool or not
    assert saved(tmp_path)["containers"][cid]["placement"]["cpus"] == "1-2"
    assert not node.hooks._dirty


def test_placement_changed_while_create_was_in_flight(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("be", BESTEFFORT)
    node.run_pod("web")
    real = node.runtime.forward(RS + "CreateContainer")
    seen = {}

    def slow(request: bytes) -> bytes:
        # while the shared container's create is in flight, a guaranteed one takes CPUs
        sent = api_pb2.CreateContainerRequest.FromString(request)
        seen["sent"] = sent.config.linux.resources.cpuset_cpus
        seen["g"] = node.create("web", "g", cpu=2000)
        return real(request)

    reply = node.call("CreateContainer", node.create_request("be", "s"), forward=slow)
    sid = reply.container_id
    assert seen["sent"] == "0-3"
    assert node.cpus(seen["g"]) == "1-2"
    # it was created with the old pool; the hooks pushed the new one before replying
    assert node.cpus(sid) == "0,3"
    assert node.hooks.state.containers[sid].placement.cpus == CPUSet.parse("0,3")  # type: ignore[union-attr]


# --- persistence ---------------------------------------------------------------------------


def test_state_is_persisted_before_the_reply(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    events: List[str] = []
    real_save = node.hooks.state.save

    def save() -> None:
        real_save()
        events.append("saved:" + ",".join(sorted(saved(tmp_path)["containers"])))

    node.hooks.state.save = save  # type: ignore[method-assign]
    real = node.runtime.forward(RS + "CreateContainer")

    def fwd(request: bytes) -> bytes:
        events.append("forwarded")
        return real(request)

    reply = node.call("CreateContainer", node.create_request("web", "app", cpu=1000), forward=fwd)
    events.append("replied")
    cid = reply.container_id
    assert events[0] == "forwarded" and events[-1] == "replied"
    assert f"saved:{cid}" in events[1:-1]  # on disk before the reply
    # and a removal is on disk before its reply too
    node.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
    assert saved(tmp_path)["containers"] == {}


def test_save_failure_does_not_fail_the_call(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")

    def broken() -> None:
        raise errors.StateError("cannot write state file x: No space left on device")

    node.hooks.state.save = broken  # type: ignore[method-assign]
    cid = node.create("web", "app", cpu=1000)
    assert node.cpus(cid) == "1"
    assert "No space left" in caplog.text


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_creates_never_double_book(topo16: Topology, tmp_path: Path) -> None:
    node = make(topo16, tmp_path, reserved="0")
    node.runtime.delay["CreateContainer"] = 0.01  # the lock is not held across this
    for i in range(4):
        node.run_pod(f"g{i}")
    node.run_pod("be", BESTEFFORT)
    results: Dict[str, Any] = {}

    def worker(i: int) -> None:
        pod = f"g{i % 4}"
        try:
            if i % 5 == 4:
                results[f"s{i}"] = node.create("be", f"s{i}")
            else:
                results[f"g{i}"] = node.create(pod, f"c{i}", cpu=2000)
        except errors.AllocationError as exc:
            results[f"g{i}"] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = {k: v for k, v in results.items() if k.startswith("g") and isinstance(v, str)}
    refused = [k for k, v in results.items() if isinstance(v, Exception)]
    assert len(placed) == 7 and len(refused) == 9  # 15 free CPUs, one kept for the pool
    owned: List[int] = []
    for cid in placed.values():
        cpus = CPUSet.parse(node.cpus(cid))
        assert len(cpus) == 2 and 0 not in cpus
        owned += list(cpus)
    assert len(owned) == len(set(owned)) == 14  # nobody got a CPU twice
    pool = topo16.online - CPUSet(owned)
    for key, cid in results.items():
        if key.startswith("s"):
            assert CPUSet.parse(node.cpus(cid)) == pool  # shared ones see the final pool
    assert not node.hooks._inflight
    on_disk = saved(tmp_path)["containers"]
    assert set(on_disk) == set(placed.values()) | {v for k, v in results.items() if k[0] == "s"}


# --- UpdateContainerResources from kubelet ----------------------------------------------------


def _update(node: Node, cid: str, cpu: int, forward: Any = None) -> bytes:
    res = podspec.container_resources(
        podspec.Requirements(cpu_limit=cpu, memory_limit=GIB), GUARANTEED, 16 * GIB
    )
    req = api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(**res.to_json())
    )
    node.call("UpdateContainerResources", req, forward=forward)
    return [r for m, r in node.sent if m == "UpdateContainerResources"][-1] if not forward else b""


def test_kubelet_update_is_forwarded_with_our_cpusets(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    raw = _update(node, cid, 1000)  # same size: still forwarded, with our cpuset filled in
    sent = api_pb2.UpdateContainerResourcesRequest.FromString(raw)
    assert sent.linux.cpuset_cpus == "1" and sent.linux.cpuset_mems == "0"
    assert sent.linux.cpu_quota == 100000
    raw = _update(node, cid, 2000)  # resize to 2 CPUs
    assert api_pb2.UpdateContainerResourcesRequest.FromString(raw).linux.cpuset_cpus == "1-2"
    assert node.hooks.state.containers[cid].container.cpu_request == 2000
    assert node.cpus(cid) == "1-2"


def test_kubelet_update_of_an_unknown_container_passes(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    req = api_pb2.UpdateContainerResourcesRequest(
        container_id="nope", linux=api_pb2.LinuxContainerResources(cpu_shares=5)
    )
    with pytest.raises(ForwardError):  # the runtime says NOT_FOUND, as it would
        node.call("UpdateContainerResources", req)
    assert [m for m, _ in node.sent] == ["UpdateContainerResources"]
    assert node.sent[-1][1] == req.SerializeToString()


def test_kubelet_update_refused_by_the_runtime_keeps_the_old_size(
    topo4: Topology, tmp_path: Path
) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    node.runtime.fail("UpdateContainerResources", "INTERNAL")
    with pytest.raises(ForwardError):
        _update(node, cid, 2000)
    assert node.hooks.state.containers[cid].container.cpu_request == 1000
    assert node.hooks.policy.placements()[cid].cpus == CPUSet.of(1)


def test_kubelet_update_the_policy_refuses(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    with pytest.raises(errors.AllocationError):
        _update(node, cid, 4000)
    assert node.hooks.policy.placements()[cid].cpus == CPUSet.of(1)
    # with on-error=pass it is forwarded, with the old cpuset
    node.hooks.set_options(hk.HookOptions(on_error="pass"))
    raw = _update(node, cid, 4000)
    assert api_pb2.UpdateContainerResourcesRequest.FromString(raw).linux.cpuset_cpus == "1"


def count_saves(node: Node) -> List[str]:
    """Every `State.save` the hooks make from now on (each costs two fsyncs)."""
    saves: List[str] = []
    real = node.hooks.state.save

    def save() -> None:
        saves.append("save")
        real()

    node.hooks.state.save = save  # type: ignore[method-assign]
    return saves


def test_kubelet_update_without_a_change_decides_and_writes_nothing(
    topo4: Topology, tmp_path: Path
) -> None:
    """kubelet's reconcile resends unchanged resources: forwarded with our cpusets, but no
    policy call and no state write."""
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    saves = count_saves(node)
    updates: List[str] = []
    real_update = node.hooks.policy.update

    def update(key: str, pod: Pod, container: Container) -> Decision:
        updates.append(key)
        return real_update(key, pod, container)

    node.hooks.policy.update = update  # type: ignore[method-assign]
    raw = _update(node, cid, 1000)  # what it was created with
    sent = api_pb2.UpdateContainerResourcesRequest.FromString(raw)
    assert (sent.linux.cpuset_cpus, sent.linux.cpuset_mems, sent.linux.cpu_quota) == (
        "1",
        "0",
        100000,
    )
    assert saves == [] and updates == []
    _update(node, cid, 2000)  # a real resize decides and writes
    assert updates == [cid] and saves
    assert node.cpus(cid) == "1-2"


# --- stop/remove -------------------------------------------------------------------------------


def test_stop_releases_and_remove_forgets(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=3000)
    node.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
    assert node.hooks.policy.placements() == {}
    entry = node.hooks.state.containers[cid]
    assert entry.stopped and entry.placement is None
    node.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
    assert cid not in node.hooks.state.containers


def test_failed_stop_keeps_the_allocation(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    node.runtime.fail("StopContainer", "DEADLINE_EXCEEDED")
    with pytest.raises(ForwardError):
        node.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
    assert cid in node.hooks.policy.placements()
    # NOT_FOUND: the runtime no longer has it, so it is released
    node.runtime.fail("StopContainer", "NOT_FOUND")
    with pytest.raises(ForwardError):
        node.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
    assert cid not in node.hooks.policy.placements()


def test_pod_stop_and_remove_release_everything(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    pod_id = node.run_pod("web")
    a = node.create("web", "a", cpu=1000)
    b = node.create("web", "b", cpu=1000)
    node.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert node.hooks.policy.placements() == {}
    assert node.hooks.state.containers[a].stopped and node.hooks.state.containers[b].stopped
    node.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not node.hooks.state.containers and not node.hooks.state.pods
    assert saved(tmp_path)["pods"] == {}


def test_stop_and_remove_that_change_nothing_write_nothing(topo4: Topology, tmp_path: Path) -> None:
    """One state write per change: none for an empty pod, an unknown or already stopped
    container; one for the removal of a pod with containers."""
    node = make(topo4, tmp_path)
    pod_id = node.run_pod("web")
    empty = node.run_pod("empty")
    cid = node.create("web", "app", cpu=1000)
    saves = count_saves(node)
    node.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=empty))
    with pytest.raises(ForwardError):  # NOT_FOUND from the runtime
        node.call("StopContainer", api_pb2.StopContainerRequest(container_id="unknown"))
    assert saves == []
    node.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
    assert len(saves) == 1
    node.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))  # again
    node.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert len(saves) == 1
    node.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert len(saves) == 2 and not node.hooks.state.containers
    assert set(saved(tmp_path)["pods"]) == {empty}


def test_pod_removed_while_a_create_is_in_flight(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    pod_id = node.run_pod("web")
    real = node.runtime.forward(RS + "CreateContainer")

    def racing(request: bytes) -> bytes:
        reply = real(request)
        node.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        node.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        return reply

    node.call("CreateContainer", node.create_request("web", "app", cpu=3000), forward=racing)
    assert node.hooks.policy.placements() == {}  # the 3 CPUs are free again
    assert not node.hooks.state.containers and not node.hooks._inflight


class Seam:
    """`hooks._lock` with a seam, to force an interleaving without sleeping.

    Each time a thread lets go of the lock completely, `when()` is checked (still under
    the lock); the first time it holds, `then()` runs right after the release, in that
    thread, with the lock free: exactly what another thread could do at that point.
    """

    def __init__(self, lock: Any, when: Callable[[], bool], then: Callable[[], None]) -> None:
        self._lock = lock
        self._when = when
        self._then = then
        self._depth = threading.local()
        self.fired = False

    def __enter__(self) -> Seam:
        self._lock.acquire()
        self._depth.n = getattr(self._depth, "n", 0) + 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth.n -= 1
        fire = self._depth.n == 0 and not self.fired and self._when()
        if fire:
            self.fired = True
        self._lock.release()
        if fire:
            self._then()


class Thread(threading.Thread):
    """A thread whose exception is raised again by `join`."""

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        super().__init__(target=self._run, args=(target, *args))
        self.error: Optional[BaseException] = None

    def _run(self, target: Callable[..., Any], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self.error = exc

    def join(self, timeout: Optional[float] = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def test_pod_removal_releases_a_container_bound_while_it_was_forwarded(
    topo4: Topology, tmp_path: Path
) -> None:
    """RemovePodSandbox is at the runtime while a CreateContainer in the pod completes:
    the container it finds in the state afterwards is released, not just forgotten."""
    node = make(topo4, tmp_path)
    pod_id = node.run_pod("web")
    real = node.runtime.forward(RS + "RemovePodSandbox")
    forwarding, created = threading.Event(), threading.Event()

    def slow_remove(request: bytes) -> bytes:
        forwarding.set()
        created.wait()
        return real(request)

    remove = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
    t = Thread(node.call, "RemovePodSandbox", remove, slow_remove)
    t.start()
    forwarding.wait()
    cid = node.create("web", "app", cpu=3000)  # created and bound while the removal runs
    assert cid in node.hooks.policy.placements()
    created.set()
    t.join()
    assert node.hooks.policy.placements() == {}  # its 3 CPUs are free again
    assert not node.hooks.state.containers and not node.hooks.state.pods
    node.run_pod("next")
    assert node.cpus(node.create("next", "app", cpu=3000)) == "1-3"


def test_pod_removed_between_the_runtime_reply_and_the_bind(
    topo4: Topology, tmp_path: Path
) -> None:
    """No moment exists where a created container is out of the in-flight table but not
    yet in the state: a RemovePodSandbox there would miss it on both sides."""
    node = make(topo4, tmp_path)
    pod_id = node.run_pod("web")
    hooks = node.hooks

    def created_but_unrecorded() -> bool:
        return not hooks._inflight and any(
            c not in hooks.state.containers for c in node.runtime.containers
        )

    def remove_pod() -> None:
        node.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        node.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    seam = Seam(hooks._lock, created_but_unrecorded, remove_pod)
    hooks._lock = seam  # type: ignore[assignment]
    node.call("CreateContainer", node.create_request("web", "app", cpu=3000))
    if not seam.fired:
        remove_pod()  # no such moment: kubelet removes the pod after the create
    assert hooks.policy.placements() == {}
    assert not hooks.state.containers and not hooks.state.pods


# --- resync ---------------------------------------------------------------------------------------


def test_restart_restores_every_allocation(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("be", BESTEFFORT)
    s = node.create("be", "s")
    node.run_pod("web")
    g = node.create("web", "g", cpu=2000)
    # "kill -9": a new policy, state and hooks over the same runtime and directory
    node2 = make(topo4, tmp_path, runtime=runtime)
    report = node2.report
    assert report is not None
    assert report.restored == [f"default/be:s ({s})", f"default/web:g ({g})"]
    assert node2.hooks.policy.placements()[g].cpus == CPUSet.parse("1-2")
    assert node2.hooks.policy.placements()[s].cpus == CPUSet.parse("0,3")
    assert report.adopted == [] and report.dropped == [] and report.pushed == []
    # no CPU is given twice after the restart
    node2.pods = node.pods
    with pytest.raises(errors.AllocationError):
        node2.create("web", "g2", cpu=2000)
    g3 = node2.create("web", "g3", cpu=1000)
    assert node2.cpus(g3) in ("0", "3") and node2.cpus(g3) not in node2.cpus(g)


def test_resync_drops_vanished_and_adopts_unknown(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("web")
    gone = node.create("web", "gone", cpu=1000)
    exited = node.create("web", "exited", cpu=1000)
    # while cri-resmgr was down: one container removed, one exited, one created directly
    runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=gone))
    runtime.StopContainer(api_pb2.StopContainerRequest(container_id=exited))
    pod_id = node.pods["web"][0]
    req = node.create_request("web", "new", cpu=1000)
    new = runtime.CreateContainer(req).container_id
    runtime.StartContainer(api_pb2.StartContainerRequest(container_id=new))
    assert node.cpus(new) == ""  # unpinned: the runtime never saw the hooks
    # an unknown pod with a running container (created before cri-resmgr ever ran)
    uid = "uid-old"
    old_cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="old", uid=uid, namespace="ns"),
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=podspec.cgroup_parent(uid, BURSTABLE)),
    )
    old_pod = runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=old_cfg)).pod_sandbox_id
    node.pods["old"] = (old_pod, old_cfg, BURSTABLE)
    old = runtime.CreateContainer(node.create_request("old", "c")).container_id
    runtime.StartContainer(api_pb2.StartContainerRequest(container_id=old))

    node2 = make(topo4, tmp_path, runtime=runtime)  # resync runs in make()
    placements = node2.hooks.policy.placements()
    assert gone not in node2.hooks.state.containers
    assert node2.hooks.state.containers[exited].stopped and exited not in placements
    assert placements[new].cpu_class == EXCLUSIVE  # adopted and placed ...
    assert node.cpus(new) == str(placements[new].cpus)  # ... and pushed
    assert node2.hooks.state.containers[old].container.key == "ns/old:c"
    assert node2.hooks.state.containers[old].container.qos == BURSTABLE
    assert placements[old].cpu_class == SHARED
    assert node.cpus(old) == str(placements[old].cpus)
    assert pod_id in node2.hooks.state.pods and old_pod in node2.hooks.state.pods
    # the CPUs of the gone and exited containers are free: 1 + the new one's
    assert len({str(p.cpus) for k, p in placements.items() if p.cpu_class == EXCLUSIVE}) == 1


def test_resync_drops_pods_the_runtime_lost(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    pod_id = node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    node2 = make(topo4, tmp_path, runtime=runtime)
    assert not node2.hooks.state.pods and not node2.hooks.state.containers
    assert node2.hooks.policy.placements() == {}
    assert cid not in saved(tmp_path)["containers"]


def test_resync_pushes_placements_the_runtime_lacks(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    # killed between allocation and push: the runtime shows something else
    runtime.containers[cid].resources.cpuset_cpus = "0-3"
    report = make(topo4, tmp_path, runtime=runtime).report
    assert report is not None and report.pushed == [f"default/web:app ({cid})"]
    assert node.cpus(cid) == "1"
    assert runtime.containers[cid].updates == 1


def test_resync_re_places_on_offline_or_reserved_cpus(
    topo4: Topology, tmp_path: Path, caplog: Any
) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    assert node.cpus(cid) == "1"
    # restart with CPU 1 reserved now
    node2 = make(topo4, tmp_path, reserved="0-1", runtime=runtime)
    placement = node2.hooks.policy.placements()[cid]
    assert placement.cpus in (CPUSet.of(2), CPUSet.of(3))
    assert node.cpus(cid) == str(placement.cpus)
    assert "CPUs 1 are reserved" in caplog.text


def test_resync_after_a_policy_switch_places_everything(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime, policy=NoRename(topo4, CPUSet.of(0), {}))
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    assert node.cpus(cid) == "3"
    node2 = make(topo4, tmp_path, runtime=runtime)  # static now
    assert node2.hooks.state.switched_from == "norename"
    assert node2.hooks.policy.placements()[cid].cpus == CPUSet.of(1)
    assert node.cpus(cid) == "1"


def test_resync_without_runtime_restores_the_state(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    policy = StaticPolicy(topo4, CPUSet.of(0), {})
    hooks = hk.Hooks(policy, State.load(str(tmp_path / "state"), "static"), None)
    report = hooks.resync()
    assert report.restored == [f"default/web:app ({cid})"]
    assert policy.placements()[cid].cpus == CPUSet.of(1)


def test_resync_survives_a_failing_restore(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)

    class BadRestore(StaticPolicy):
        def restore(self, entries: Any) -> Decision:
            raise RuntimeError("bug")

    node2 = make(topo4, tmp_path, runtime=runtime, policy=BadRestore(topo4, CPUSet.of(0), {}))
    assert node2.hooks.policy.placements()[cid].cpu_class == EXCLUSIVE


def test_a_half_done_restore_is_thrown_away(topo4: Topology, tmp_path: Path) -> None:
    """A restore that fails after changing the policy's accounting (it took CPUs for a
    container, then raised) must not leave those CPUs taken: re-placing starts afresh."""
    runtime = InMemoryRuntime()
    node = make(topo4, tmp_path, runtime=runtime)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=2000)

    class HalfRestore(StaticPolicy):
        def restore(self, entries: Any) -> Decision:
            listed = list(entries)
            self.allocate("ghost", listed[0][1], listed[0][2])  # half done ...
            raise RuntimeError("bug")  # ... then fails

    node2 = make(topo4, tmp_path, runtime=runtime, policy=HalfRestore(topo4, CPUSet.of(0), {}))
    placements = node2.hooks.policy.placements()
    assert "ghost" not in placements
    assert placements[cid].cpu_class == EXCLUSIVE and len(placements[cid].cpus) == 2


def test_resync_runs_once(topo4: Topology, tmp_path: Path, caplog: Any) -> None:
    """A second resync (while serving) changes nothing: it does not even ask the runtime,
    so it cannot drop containers created after its listing or adopt in-flight ones."""
    node = make(topo4, tmp_path)  # resynced at start-up
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    listings: List[Any] = []
    stub = node.runtime.runtime
    real_list = stub.ListPodSandbox
    stub.ListPodSandbox = lambda req, timeout=None: listings.append(req) or real_list(req, timeout)
    assert node.hooks.resync() is node.report
    assert listings == []
    assert set(node.hooks.policy.placements()) == {cid}
    assert "resync runs once" in caplog.text


def test_resync_when_the_runtime_does_not_answer(topo4: Topology, tmp_path: Path) -> None:
    runtime = InMemoryRuntime()
    runtime.fail("ListPodSandbox", "UNAVAILABLE")
    policy = StaticPolicy(topo4, CPUSet.of(0), {})
    hooks = hk.Hooks(policy, State.load(str(tmp_path / "s"), "static"), runtime)
    with pytest.raises(errors.RuntimeUnavailable):
        hooks.resync()


# --- wiring, options, status -----------------------------------------------------------------


def test_hooks_from_config_open_the_state(topo4: Topology, tmp_path: Path) -> None:
    config = load_config(
        "", {("policy", "name"): "static", ("policy", "disable-policy-switch"): "true"}
    )
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / STATE_FILE).write_text(
        json.dumps({"version": 1, "policy": "none", "pods": {}, "containers": {}})
    )
    store = State(str(tmp_path / "st"))
    with pytest.raises(errors.StateError, match="disable-policy-switch"):
        hk.Hooks(StaticPolicy(topo4, CPUSet.of(0), {}), store, None, config)
    config = load_config("", {("policy", "name"): "static"})
    config_pass = load_config(
        "", {("policy", "name"): "static", ("policy.static", "on-error"): "pass"}
    )
    hooks = hk.Hooks(
        StaticPolicy(topo4, CPUSet.of(0), {}), State(str(tmp_path / "st")), None, config_pass
    )
    assert hooks.options.on_error == "pass" and hooks.state.origin == "switched"
    hooks.reconfigure(config.policy_options("static"))
    assert hooks.options.on_error == "fail"


def test_status_snapshot(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    status = node.hooks.status()
    json.dumps(status)  # serializable
    assert status["policy"] == "static" and status["reserved"] == "0"
    assert status["pods"][0]["pod"] == "default/web"
    (c,) = status["containers"]
    assert c["id"] == cid and c["container"] == "default/web:app"
    assert c["placement"]["cpus"] == "1" and c["update_pending"] is False
    assert status["pools"]["shared"] == "0,2-3"
    assert status["state"]["origin"] == "missing" and status["state"]["last_save"]
    node.hooks.close()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="on-error"):
        hk.HookOptions(on_error="ignore")
    assert hk.HookOptions.from_options({"on-error": "pass"}).on_error == "pass"
    assert hk.HookOptions.from_options({}).on_error == "fail"


def test_entries_round_trip_through_the_state(topo4: Topology, tmp_path: Path) -> None:
    node = make(topo4, tmp_path)
    node.run_pod("web")
    cid = node.create("web", "app", cpu=1000)
    again = State.load(str(tmp_path / "state"), "static")
    entry: ContainerEntry = again.containers[cid]
    assert entry == node.hooks.state.containers[cid]
    assert entry.resources.cpu_quota == 100000
