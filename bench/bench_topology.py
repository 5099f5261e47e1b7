"""Topology and CPU set micro-benchmarks.

* CPUSet operations policies do on every allocation (union, intersection,
  difference, len, iteration, membership, subset, parse, str) on an 8-socket
  448-CPU machine's sets, next to the same operations on frozenset for scale;
* `topology.load` of a generated 8-socket 448-CPU machine with 8 PMEM nodes (and
  of the real server tree when tests/data/topologies/server.tar.xz is there);
* `Topology.cpus_sorted_by_topology` and `threads_of` on that machine.

Nothing is asserted: these are numbers for people. Needs no root.

Run: `python -m bench.bench_topology [--quick]`.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from pathlib import Path
from typing import Callable, List, Tuple

from bench.common import extract_server
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load


def per_call(fn: Callable[[], object], number: int) -> float:
    """Best of 5 runs, microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def bench_cpuset(topology: Topology, number: int) -> List[Tuple[str, float, float]]:
    node0 = topology.node_cpus(0)
    package0 = topology.package_cpus(0)
    half = CPUSet(topology.online.ids[::2])
    a, b = package0, half
    fa, fb = frozenset(a), frozenset(b)
    text = str(half)
    rows = [
        ("a | b", per_call(lambda: a | b, number), per_call(lambda: fa | fb, number)),
        ("a & b", per_call(lambda: a & b, number), per_call(lambda: fa & fb, number)),
        ("a - b", per_call(lambda: a - b, number), per_call(lambda: fa - fb, number)),
        (
            "len(a & b)",
            per_call(lambda: len(a & b), number),
            per_call(lambda: len(fa & fb), number),
        ),
        ("a <= b", per_call(lambda: a <= b, number), per_call(lambda: fa <= fb, number)),
        ("300 in a", per_call(lambda: 300 in a, number), per_call(lambda: 300 in fa, number)),
        (
            "sorted ids (a & b)",
            per_call(lambda: (a & b).ids, number),
            per_call(lambda: sorted(fa & fb), number),
        ),
        (
            "str(a - node0)",
            per_call(lambda: str(a - node0), number),
            per_call(lambda: ",".join(map(str, sorted(fa - frozenset(node0)))), number),
        ),
        (f"parse {len(text)} chars", per_call(lambda: CPUSet.parse(text), number), float("nan")),
        (
            "hash(a & b)",
            per_call(lambda: hash(a & b), number),
            per_call(lambda: hash(fa & fb), number),
        ),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    number = 2000 if args.quick else 20000

    with tempfile.TemporaryDirectory(prefix="bench-topology-") as tmp:
        root = Path(tmp) / "big"
        spec = dict(sockets=8, cores_per_node=28, threads_per_core=2)
        synthetic.write_sysfs(
            root,
            sockets=8,
            cores_per_node=28,
            threads_per_core=2,
            memory_only_nodes=[("pmem", s) for s in range(8)],
            extras=False,
        )
        load_ms = min(timeit.repeat(lambda: load(root), number=1, repeat=3)) * 1e3
        topology = load(root)
        print(f"generated machine {spec}: {len(topology.online)} CPUs, {len(topology.nodes)} nodes")
        print(f"  load: {load_ms:.1f} ms")

        server = extract_server(Path(tmp))
        if server is not None:
            ms = min(timeit.repeat(lambda: load(server), number=1, repeat=3)) * 1e3
            print(f"real server (112 CPUs, 6 nodes): load {ms:.1f} ms")

        print("\nCPUSet vs frozenset on the 448-CPU machine (a = package 0, b = every 2nd CPU)")
        print(f"  {'operation':<22}{'CPUSet us':>12}{'frozenset us':>14}")
        for name, ours, theirs in bench_cpuset(topology, number):
            print(f"  {name:<22}{ours:>12.3f}{theirs:>14.3f}")

        some = CPUSet(topology.online.ids[::7])
        helpers = [
            ("cpus_sorted_by_topology(64 CPUs)", lambda: topology.cpus_sorted_by_topology(some)),
            ("threads_of(64 CPUs)", lambda: topology.threads_of(some)),
            ("closest_cpu_nodes(pmem node)", lambda: topology.closest_cpu_nodes(8)),
            ("node_of(cpu)", lambda: topology.node_of(300)),
        ]
        print("\nTopology helpers")
        for name, fn in helpers:
            print(f"  {name:<34}{per_call(fn, number // 10):>10.2f} us")


if __name__ == "__main__":
    main()
