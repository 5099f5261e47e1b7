"""Balloons policy placement-decision benchmarks.

* **fill**: the time of one `BalloonsPolicy.allocate` (the policy's share of a
  CreateContainer) while a machine fills up with containers of 100m-4 CPUs spread over
  five balloon types (namespaces, annotations, kube-system; new balloons, growing
  ones, idle-CPU sharing at core, NUMA and package level, min-balloons at start), then
  of `release` while it drains, as wall-clock and CPU time; on the real 112-CPU
  server topology (tests/data/topologies/server.tar.xz) and on a generated 8-socket
  448-CPU machine.
* **many balloons**: allocate+release pairs next to up to 100 one-core balloons
  whose containers share idle CPUs (none, core, NUMA node), and the time of
  recomputing every balloon's placement with nothing changed.
* **churn**: 10,000 containers created and removed (a steady population of about 200,
  a fifth of them resized once), the CPU time per decision printed per block of
  1,000 so that one can see it stays flat.

The target is <= 2 ms per CreateContainer decision. Nothing is asserted: these are
numbers for people. Needs no root.

Run: `python -m bench.bench_balloons [--quick]`.
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

from bench.common import Clock, cpu_timed, machines, reserved_of, stats_ms
from cri_resmgr.errors import AllocationError
from cri_resmgr.policy.balloons import ANNOTATION, BalloonsPolicy
from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Pod
from cri_resmgr.resources.topology import Topology

#: the balloon types of every run, as Config.policy_options("balloons") gives them
TYPES: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("web", {"namespaces": ("web-*",), "max-cpus": 16, "share-idle-cpus-in-same": "core"}),
    ("db", {"namespaces": ("db",), "min-balloons": 4, "min-cpus": 2, "prefer-new-balloons": True}),
    ("batch", {"namespaces": ("batch",), "share-idle-cpus-in-same": "numa"}),
    ("spread", {"namespaces": ("spread",), "prefer-spreading-pods": True, "max-balloons": 8}),
    ("default", {"min-cpus": 2, "share-idle-cpus-in-same": "package"}),
)
NAMESPACES = ("web-a", "web-b", "db", "batch", "spread", "default", "kube-system")


def make_policy(topology: Topology) -> BalloonsPolicy:
    return BalloonsPolicy(topology, reserved_of(topology), {"on-error": "fail", "types": TYPES})


def workload(rng: random.Random, i: int) -> Tuple[Pod, Container]:
    """A random pod and container: namespace, sometimes an annotation, a request."""
    namespace = rng.choice(NAMESPACES)
    annotations = {}
    if rng.random() < 0.05:
        annotations = {f"{ANNOTATION}/pod": rng.choice(("web", "db", "batch"))}
    pod = Pod(
        id=f"pod-{namespace}-{i // 3}",
        uid=f"uid-{i // 3}",
        name=f"p{i // 3}",
        namespace=namespace,
        qos=BURSTABLE,
        annotations=annotations,
    )
    roll = rng.random()
    if roll < 0.15:
        qos, milli = BESTEFFORT, 0
    elif roll < 0.4:
        qos, milli = GUARANTEED, 1000 * rng.randint(1, 4)
    else:
        qos, milli = BURSTABLE, rng.choice((100, 250, 500, 1000, 1500, 2500))
    container = Container(
        id="",
        pod_id=pod.id,
        name=f"c{i}",
        pod_name=pod.name,
        namespace=namespace,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
        pod_annotations=annotations,
    )
    return pod, container


def fill_once(topology: Topology, seed: int, clock: Clock) -> Tuple[int, int]:
    """One fill-and-drain round into ``clock``; (containers placed, balloons at the top)."""
    rng = random.Random(seed)
    p = make_policy(topology)
    keys: List[str] = []
    misses = 0
    i = 0
    while misses < 20:
        pod, c = workload(rng, i)
        key = f"k{i}"
        i += 1
        try:
            clock.measure("allocate", functools.partial(p.allocate, key, pod, c))
        except AllocationError:
            misses += 1
            continue
        keys.append(key)
    top = len(p.describe())
    rng.shuffle(keys)
    for key in keys:
        clock.measure("release", functools.partial(p.release, key))
    return len(keys), top


def bench_fill(name: str, topology: Topology, rounds: int) -> None:
    clock = Clock()
    placed = balloons = 0
    for r in range(rounds):
        n, b = fill_once(topology, r, clock)
        placed += n
        balloons += b
    print(
        f"{name}: {len(topology.online)} CPUs, {placed // rounds} containers in "
        f"{balloons // rounds} balloons per fill"
    )
    clock.report("allocate", "allocate (CreateContainer)")
    clock.report("release", "release (RemoveContainer)")


def _pair(p: BalloonsPolicy, key: str, pod: Pod, c: Container) -> None:
    p.allocate(key, pod, c)
    p.release(key)


def bench_many_balloons(name: str, topology: Topology, pairs: int) -> None:
    """Allocate+release pairs (each makes and deletes a balloon, so the idle CPUs
    change) next to up to 100 one-core balloons that share idle CPUs at a level, and
    the cost of recomputing every balloon's placement (`_refresh`) with nothing changed."""
    tpc = max(1, topology.threads_per_core)
    reserved = reserved_of(topology)
    usable = len(topology.online - reserved - topology.isolated)
    count = min(100, usable // tpc // 2)  # half the machine stays idle
    print(f"{name}: {count} one-core balloons, {pairs} allocate+release pairs")
    for level in ("", "core", "numa"):
        btype = {"namespaces": ("b",), "prefer-new-balloons": True}
        if level:
            btype["share-idle-cpus-in-same"] = level
        p = BalloonsPolicy(topology, reserved, {"types": (("b", btype),)})
        for i in range(count):
            pod = Pod(id=f"pod{i}", uid=f"u{i}", name=f"p{i}", namespace="b")
            c = Container(
                id="", pod_id=pod.id, name="c", pod_name=pod.name, namespace="b", cpu_request=500
            )
            p.allocate(f"k{i}", pod, c)
        clock = Clock()
        pod = Pod(id="extra", uid="extra", name="extra", namespace="b")
        c = Container(
            id="", pod_id=pod.id, name="c", pod_name=pod.name, namespace="b", cpu_request=500
        )
        pair = functools.partial(_pair, p, "extra", pod, c)
        for _ in range(pairs):
            clock.measure("pair", pair)
            clock.measure("refresh", p._refresh)  # noqa: SLF001 - what the pairs repeat
        what = f"idle CPUs per {level}" if level else "no idle CPU sharing"
        clock.report("pair", f"{what}: allocate+release")
        clock.report("refresh", "  _refresh (nothing changed)")


def bench_churn(name: str, topology: Topology, total: int, block: int) -> None:
    rng = random.Random(42)
    p = make_policy(topology)
    live: Dict[str, Tuple[Pod, Container]] = {}
    times: List[float] = []
    created = failed = 0
    print(f"{name}: churn of {total} containers, ~200 live; CPU time per decision by block")
    while created < total:
        if len(live) < 200 and (len(live) < 150 or rng.random() < 0.5):
            key = f"c{created}"
            pod, c = workload(rng, created)
            created += 1
            if cpu_timed(times, p.allocate, key, pod, c):
                live[key] = (pod, c)
            else:
                failed += 1
        elif rng.random() < 0.2:
            key = rng.choice(list(live))
            pod, c = live[key]
            resized = Container(**{**c.__dict__, "cpu_request": rng.choice((200, 1000, 3000))})
            if cpu_timed(times, p.update, key, pod, resized):
                live[key] = (pod, resized)
            else:
                failed += 1
        else:
            key = rng.choice(list(live))
            del live[key]
            cpu_timed(times, p.release, key)
        if len(times) >= block:
            print(f"  after {created:6d} created: {stats_ms(times)}")
            times = []
    print(f"  ({failed} allocations or resizes failed: max-cpus, max-balloons or no free CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    churn = 2000 if args.quick else 10000
    with tempfile.TemporaryDirectory(prefix="bench-balloons-") as tmp:
        for name, topology in machines(Path(tmp)):
            bench_fill(name, topology, rounds)
            bench_many_balloons(name, topology, 50 if args.quick else 500)
            bench_churn(name, topology, churn, churn // 10)
            print()


if __name__ == "__main__":
    main()
