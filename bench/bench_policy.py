"""Static policy placement-decision benchmarks.

* **fill**: the time of one `StaticPolicy.allocate` (the policy's share of a
  CreateContainer) while a machine fills up with exclusive containers of 1-8 CPUs
  next to 100 shared ones (each exclusive allocation also builds the updates of the
  100 shared containers), then of `release` while it drains, as wall-clock and as
  CPU time (the wall-clock tail on a busy machine is preemption); on the real 112-CPU
  server topology (tests/data/topologies/server.tar.xz) and on a generated 8-socket
  448-CPU machine.
* **churn**: 10,000 containers created and removed (a steady population of about 200,
  a third of them exclusive); the time per decision is printed per block of 1,000
  so that one can see it stays flat.
* **allocator**: `CPUAllocator.take` alone for a few request sizes on an empty and a
  fragmented machine.

The target is <= 2 ms per CreateContainer decision. Nothing is asserted: these are
numbers for people. Needs no root.

Run: `python -m bench.bench_policy [--quick]`.
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from bench.common import Clock, cpu_timed, machines, reserved_of, stats_ms
from cri_resmgr.errors import AllocationError
from cri_resmgr.policy.allocator import CPUAllocator
from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Pod
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

POD = Pod(id="bench-pod", uid="bench-uid", name="bench", namespace="bench", qos=GUARANTEED)


def container(name: str, milli: int, qos: str) -> Container:
    return Container(
        id="",
        pod_id=POD.id,
        name=name,
        pod_name=POD.name,
        namespace=POD.namespace,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
    )


def fill_once(topology: Topology, seed: int, clock: Clock) -> int:
    """One fill-and-drain round, measured into ``clock``; returns the exclusive count."""
    rng = random.Random(seed)
    p = StaticPolicy(topology, reserved_of(topology), {})
    for i in range(100):
        c = container(f"s{i}", 500, BURSTABLE)
        clock.measure("shared", functools.partial(p.allocate, f"s{i}", POD, c))
    keys: List[str] = []
    while True:
        key = f"x{len(keys)}"
        c = container(key, 1000 * rng.randint(1, 8), GUARANTEED)
        try:
            clock.measure("exclusive", functools.partial(p.allocate, key, POD, c))
        except AllocationError:
            break
        keys.append(key)
    rng.shuffle(keys)
    for key in keys:
        clock.measure("release", functools.partial(p.release, key))
    return len(keys)


def bench_fill(name: str, topology: Topology, rounds: int) -> None:
    clock = Clock()
    placed = sum(fill_once(topology, r, clock) for r in range(rounds))
    print(f"{name}: {len(topology.online)} CPUs, {placed // rounds} exclusive containers per fill")
    clock.report("exclusive", "allocate exclusive (100 shared updates)")
    clock.report("shared", "allocate shared")
    clock.report("release", "release exclusive")


def bench_churn(name: str, topology: Topology, total: int, block: int) -> None:
    rng = random.Random(42)
    p = StaticPolicy(topology, reserved_of(topology), {})
    live: Dict[str, None] = {}
    times: List[float] = []
    created = 0
    failed = 0
    print(f"{name}: churn of {total} containers, ~200 live; CPU time per decision by block")
    while created < total:
        if len(live) < 200 and (len(live) < 150 or rng.random() < 0.5):
            key = f"c{created}"
            created += 1
            roll = rng.random()
            if roll < 0.33:
                c = container(key, 1000 * rng.randint(1, 4), GUARANTEED)
            elif roll < 0.8:
                c = container(key, rng.randint(100, 2000), BURSTABLE)
            else:
                c = container(key, 0, BESTEFFORT)
            if cpu_timed(times, p.allocate, key, POD, c):
                live[key] = None
            else:
                failed += 1
        else:
            key = rng.choice(list(live))
            del live[key]
            cpu_timed(times, p.release, key)
        if len(times) >= block:
            print(f"  after {created:6d} created: {stats_ms(times)}")
            times = []
    print(f"  ({failed} allocations failed for lack of free CPUs)")


def bench_allocator(name: str, topology: Topology, number: int) -> None:
    alloc = CPUAllocator(topology)
    rng = random.Random(7)
    fragmented = CPUSet(c for c in topology.online if rng.random() < 0.6)
    print(f"{name}: CPUAllocator.take, microseconds per call")
    for count in (1, 2, 4, 8, 28, 56):
        for label, avail in (("empty", topology.online), ("60% free", fragmented)):
            if count > len(avail):
                continue
            start = time.perf_counter()
            for _ in range(number):
                alloc.take(avail, count)
            per = (time.perf_counter() - start) / number * 1e6
            print(f"  take({count:3d}) from {label:9s} {per:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    churn = 2000 if args.quick else 10000
    number = 50 if args.quick else 500
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        for name, topology in machines(Path(tmp)):
            bench_fill(name, topology, rounds)
            bench_churn(name, topology, churn, churn // 10)
            bench_allocator(name, topology, number)
            print()


if __name__ == "__main__":
    main()
