"""Topology-aware policy placement-decision benchmarks.

* **fill**: the time of one `TopologyAwarePolicy.allocate` (the policy's share of a
  CreateContainer) while a machine fills up: 100 shared containers of 20 pods
  (Burstable, BestEffort, fractional Guaranteed, some with memory limits and
  memory-type annotations, a few kube-system ones), then Guaranteed containers of 1-8
  exclusive CPUs until no pool can give more (each one shrinks a pool's shared CPUs
  and updates the shared containers there), then `release` of all of them in random
  order; as wall-clock and CPU time; on the real 112-CPU server topology (SNC, PMEM,
  isolated CPUs: tests/data/topologies/server.tar.xz) and on a generated 8-socket
  448-CPU machine.
* **1000 shared**: exclusive allocate+release pairs next to 1000 shared containers
  (each pair shrinks and widens a pool, so the shared containers there are updated
  twice), and the static policy on the same workload for scale.
* **hooks**: CreateContainer (and its StartContainer) through the real hooks
  (`simulate`: the request bytes decoded, the policy, the request rewritten, the state
  saved, the in-memory runtime answering): the whole relay-side cost. The state
  directory is in /dev/shm when there is one, so that the number is CPU, not the
  disk's fsync (which costs a few ms per save on a VM disk).
* **churn**: 10,000 containers created and removed in simulation (a steady population
  of about 200, a third of them exclusive, a fifth resized once); the CPU time per
  decision printed per block of 1,000 so that one can see it stays flat.

The target is <= 2 ms per CreateContainer decision. Nothing is asserted: these are
numbers for people. Needs no root.

Run: `python -m bench.bench_topology_aware [--quick]`.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple, Type

from bench.common import Clock, cpu_timed, machines, reserved_of, stats_ms
from cri_resmgr.errors import AllocationError
from cri_resmgr.hooks import HookOptions, Hooks
from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Pod, Policy
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.policy.topology_aware import TopologyAwarePolicy
from cri_resmgr.resources.topology import Topology
from cri_resmgr.simulate import InMemoryRuntime, ScenarioError, Simulation, parse_scenario
from cri_resmgr.state import State

MEMORY_TYPE = "memory-type.cri-resource-manager.intel.com/pod"
GIB = 1 << 30
#: where the hooks benchmarks keep their state file (memory-backed if possible)
_STATE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


def pod_of(i: int, namespace: str = "default") -> Pod:
    return Pod(id=f"pod{i}", uid=f"uid{i}", name=f"p{i}", namespace=namespace, qos=GUARANTEED)


def container(
    name: str, pod: Pod, milli: int, qos: str, *, memory: int = 0, kinds: str = ""
) -> Container:
    return Container(
        id="",
        pod_id=pod.id,
        name=name,
        pod_name=pod.name,
        namespace=pod.namespace,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
        memory_limit=memory,
        pod_annotations={MEMORY_TYPE: kinds} if kinds else {},
    )


def shared_workload(rng: random.Random, i: int) -> Tuple[Pod, Container]:
    pod = pod_of(rng.randrange(20), "kube-system" if rng.random() < 0.05 else "default")
    roll = rng.random()
    memory = rng.choice((0, 256 << 20, GIB, 4 * GIB))
    kinds = rng.choice(("", "", "", "dram,pmem", "pmem"))
    if roll < 0.5:
        milli = rng.randint(100, 600)
        return pod, container(f"s{i}", pod, milli, BURSTABLE, memory=memory, kinds=kinds)
    if roll < 0.8:
        return pod, container(f"s{i}", pod, 0, BESTEFFORT, kinds=kinds)
    milli = rng.choice((250, 500))
    return pod, container(f"s{i}", pod, milli, GUARANTEED, memory=memory, kinds=kinds)


def fill_once(topology: Topology, seed: int, clock: Clock) -> int:
    """One fill-and-drain round, measured into ``clock``; returns the exclusive count."""
    rng = random.Random(seed)
    p = TopologyAwarePolicy(topology, reserved_of(topology), {})
    for i in range(100):
        pod, c = shared_workload(rng, i)
        clock.measure("shared", functools.partial(p.allocate, f"s{i}", pod, c))
    keys: List[str] = []
    most = 8  # the largest request still tried: halved after each refusal
    while most:
        key = f"x{len(keys)}"
        pod = pod_of(100 + len(keys))
        memory = rng.choice((0, GIB))
        c = container(key, pod, 1000 * rng.randint(1, most), GUARANTEED, memory=memory)
        try:
            clock.measure("exclusive", functools.partial(p.allocate, key, pod, c))
        except AllocationError:
            most //= 2
            continue
        keys.append(key)
    keys += [f"s{i}" for i in range(100)]
    rng.shuffle(keys)
    for key in keys:
        clock.measure("release", functools.partial(p.release, key))
    return len(keys) - 100


def bench_fill(name: str, topology: Topology, rounds: int) -> None:
    clock = Clock()
    placed = sum(fill_once(topology, r, clock) for r in range(rounds))
    tree = TopologyAwarePolicy(topology, reserved_of(topology), {}).tree
    print(
        f"{name}: {len(topology.online)} CPUs, {len(tree.pools)} pools, "
        f"{placed // rounds} exclusive containers per fill"
    )
    clock.report("exclusive", "allocate exclusive (next to 100 shared)")
    clock.report("shared", "allocate shared")
    clock.report("release", "release")


def _pair(p: Policy, key: str, pod: Pod, c: Container) -> None:
    p.allocate(key, pod, c)
    p.release(key)


def bench_many_shared(name: str, topology: Topology, shared: int, pairs: int) -> None:
    """Exclusive allocate+release pairs next to ``shared`` small shared containers: every pair
    shrinks and widens a pool's shared CPUs, so the shared containers there get new
    placements twice. The static policy on the same workload, for scale."""
    print(f"{name}: {pairs} exclusive allocate+release pairs next to {shared} shared containers")
    makers: Tuple[Tuple[str, Type[Policy]], ...] = (
        ("topology-aware", TopologyAwarePolicy),
        ("static", StaticPolicy),
    )
    for label, cls in makers:
        p = cls(topology, reserved_of(topology), {})
        rng = random.Random(5)
        for i in range(shared):  # small ones: they leave room for exclusive CPUs
            pod = pod_of(rng.randrange(200))
            milli = rng.choice((0, 10, 25, 50))
            qos = BURSTABLE if milli else BESTEFFORT
            p.allocate(f"s{i}", pod, container(f"s{i}", pod, milli, qos))
        clock = Clock()
        for j in range(pairs):
            key = f"x{j}"
            pod = pod_of(1000 + j)
            c = container(key, pod, 1000 * rng.randint(1, 4), GUARANTEED)
            clock.measure("pair", functools.partial(_pair, p, key, pod, c))
        clock.report("pair", f"{label}: allocate+release")


def _scenario(rng: random.Random, creates: int, live: int) -> Tuple[dict, List[int]]:
    """A simulate scenario: ``creates`` containers, at most ``live`` at a time, each in
    a pod of its own; returns the document and the event index of every create."""
    events: List[dict] = []
    creates_at: List[int] = []
    alive: Dict[str, None] = {}
    n = 0
    while n < creates:
        if len(alive) < live and (len(alive) < live * 3 // 4 or rng.random() < 0.5):
            name = f"p{n}"
            n += 1
            roll = rng.random()
            annotations = {MEMORY_TYPE: "dram,pmem"} if rng.random() < 0.1 else {}
            events.append({"run-pod": {"name": name, "annotations": annotations}})
            if roll < 0.33:
                cpu = str(rng.randint(1, 4))
                spec = {"limits": {"cpu": cpu, "memory": "1Gi"}}
            elif roll < 0.8:
                spec = {"requests": {"cpu": f"{rng.randint(100, 2000)}m"}}
            else:
                spec = {}
            creates_at.append(len(events))
            events.append({"create-container": {"pod": name, "name": "c", **spec}})
            if roll < 0.33 and rng.random() < 0.2:
                cpu = str(rng.randint(1, 4))
                events.append(
                    {
                        "update-container": {
                            "pod": name,
                            "name": "c",
                            "limits": {"cpu": cpu, "memory": "1Gi"},
                        }
                    }
                )
            alive[name] = None
        else:
            name = rng.choice(list(alive))
            del alive[name]
            events.append({"remove-pod": {"name": name}})
    return {"events": events}, creates_at


class _TimedSimulation(Simulation):
    """A Simulation that records the CPU time of every event, by kind."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.times: List[Tuple[str, float, float]] = []  # (kind, cpu s, wall s)

    def run(self) -> bool:
        for ev in self.scenario.events:
            handler = getattr(self, "_" + ev.kind.replace("-", "_"))
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                handler(ev)
            except (AllocationError, ScenarioError):
                pass  # the machine is full for this one (kubelet would retry); no resize
            self.times.append((ev.kind, time.process_time() - cpu, time.perf_counter() - wall))
        return True


def _hooks(topology: Topology, directory: str) -> Tuple[Hooks, InMemoryRuntime]:
    policy = TopologyAwarePolicy(topology, reserved_of(topology), {})
    runtime = InMemoryRuntime()
    hooks = Hooks(policy, State.load(directory, policy.NAME), runtime, HookOptions())
    hooks.resync()
    return hooks, runtime


def bench_hooks(name: str, topology: Topology, creates: int) -> None:
    """CreateContainer (with its RunPodSandbox/StartContainer) through the real hooks."""
    rng = random.Random(3)
    doc, _ = _scenario(rng, creates, 200)
    with tempfile.TemporaryDirectory(prefix="bench-ta-hooks-", dir=_STATE_DIR) as tmp:
        hooks, runtime = _hooks(topology, tmp)
        sim = _TimedSimulation(hooks, runtime, parse_scenario(doc))
        sim.run()
        hooks.close()
        hooks.state.close()
    creates_cpu = [cpu for kind, cpu, _ in sim.times if kind == "create-container"]
    creates_wall = [wall for kind, _, wall in sim.times if kind == "create-container"]
    print(f"{name}: {creates} CreateContainer+StartContainer through the hooks (~200 live)")
    print(f"  {'create-container (hooks, state saved)':40s} wall {stats_ms(creates_wall)}")
    print(f"  {'':40s} cpu  {stats_ms(creates_cpu)}")


def bench_churn(name: str, topology: Topology, total: int, block: int) -> None:
    """10k creates/removes in simulation; CPU time per decision, by block of creates."""
    rng = random.Random(42)
    doc, _ = _scenario(rng, total, 200)
    print(f"{name}: churn of {total} containers in simulation, ~200 live; CPU time per event")
    with tempfile.TemporaryDirectory(prefix="bench-ta-churn-", dir=_STATE_DIR) as tmp:
        hooks, runtime = _hooks(topology, tmp)
        sim = _TimedSimulation(hooks, runtime, parse_scenario(doc))
        sim.run()
        hooks.close()
        hooks.state.close()
    created = 0
    decisions: List[float] = []
    for kind, cpu, _wall in sim.times:
        if kind == "run-pod":
            continue
        decisions.append(cpu)
        if kind == "create-container":
            created += 1
            if created % block == 0:
                print(f"  after {created:6d} created: {stats_ms(decisions)}")
                decisions = []


def bench_policy_churn(name: str, topology: Topology, total: int, block: int) -> None:
    """The same churn at the policy alone (no hooks, no state file)."""
    rng = random.Random(42)
    p = TopologyAwarePolicy(topology, reserved_of(topology), {})
    live: Dict[str, Tuple[Pod, Container]] = {}
    times: List[float] = []
    created = failed = 0
    print(f"{name}: churn of {total} containers at the policy, ~200 live; CPU time per call")
    while created < total:
        if len(live) < 200 and (len(live) < 150 or rng.random() < 0.5):
            key = f"c{created}"
            pod = pod_of(created)
            created += 1
            roll = rng.random()
            if roll < 0.33:
                c = container(key, pod, 1000 * rng.randint(1, 4), GUARANTEED, memory=GIB)
            elif roll < 0.8:
                c = container(key, pod, rng.randint(100, 2000), BURSTABLE)
            else:
                c = container(key, pod, 0, BESTEFFORT)
            if cpu_timed(times, p.allocate, key, pod, c):
                live[key] = (pod, c)
            else:
                failed += 1
            if roll < 0.33 and key in live and rng.random() < 0.2:
                c2 = container(key, pod, 1000 * rng.randint(1, 4), GUARANTEED, memory=GIB)
                if cpu_timed(times, p.update, key, pod, c2):
                    live[key] = (pod, c2)
                else:
                    failed += 1
            if created % block == 0:
                print(f"  after {created:6d} created: {stats_ms(times)}")
                times = []
        else:
            key = rng.choice(list(live))
            del live[key]
            cpu_timed(times, p.release, key)
    print(f"  ({failed} allocations or resizes failed for lack of free CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    churn = 2000 if args.quick else 10000
    hooked = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory(prefix="bench-topology-aware-") as tmp:
        for name, topology in machines(Path(tmp)):
            bench_fill(name, topology, rounds)
            bench_many_shared(name, topology, 1000, 20 if args.quick else 100)
            bench_hooks(name, topology, hooked)
            bench_policy_churn(name, topology, churn, churn // 10)
            bench_churn(name, topology, churn, churn // 10)
            print()


if __name__ == "__main__":
    main()
