"""What the policy and topology benchmarks share: the machines and the clock.

* `SERVER_TARBALL`, `extract_server`: the real 112-CPU server topology of the tests
  (tests/data/topologies/server.tar.xz: 2 sockets, 4 SNC nodes, 2 PMEM nodes,
  isolated CPUs), unpacked into a scratch directory;
* `machines`: that server and a generated 8-socket 448-CPU machine, the two every
  policy benchmark runs on;
* `Clock`, `stats_ms`: wall-clock and CPU time per call, printed in milliseconds;
* `cpu_timed`: one policy call of a churn run, its CPU time kept, a refusal counted;
* `reserved_of`: the reserved CPUs the benchmarks use (the first core).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from cri_resmgr.errors import AllocationError
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

__all__ = [
    "SERVER_TARBALL",
    "Clock",
    "cpu_timed",
    "extract_server",
    "machines",
    "reserved_of",
    "stats_ms",
]

SERVER_TARBALL = Path(__file__).resolve().parent.parent / "tests/data/topologies/server.tar.xz"


def extract_server(tmp: Path) -> Optional[Path]:
    """The server's sysfs tree unpacked under ``tmp/server``; None (and a note) when
    the tarball or tar is missing."""
    if not (SERVER_TARBALL.is_file() and shutil.which("tar")):
        print(f"(no {SERVER_TARBALL} or no tar: skipping the server topology)")
        return None
    server = tmp / "server"
    server.mkdir()
    subprocess.run(["tar", "-xJf", str(SERVER_TARBALL), "-C", str(server)], check=True)
    return server


def machines(tmp: Path) -> List[Tuple[str, Topology]]:
    """(label, topology) of the real server (when available) and of a generated
    8-socket 448-CPU machine, written under ``tmp``."""
    out: List[Tuple[str, Topology]] = []
    server = extract_server(tmp)
    if server is not None:
        out.append(("server (real, 112 CPUs, 4 SNC nodes + 2 PMEM)", load(server)))
    big = synthetic.write_sysfs(
        tmp / "big", sockets=8, cores_per_node=28, threads_per_core=2, extras=False
    )
    out.append(("generated 8-socket 448-CPU", load(big.root)))
    return out


def reserved_of(topology: Topology) -> CPUSet:
    """The first core (all its threads), as ``reserved-cpus = 1`` would give."""
    return CPUSet(topology.cpus_sorted_by_topology()[: topology.threads_per_core])


def stats_ms(samples: List[float]) -> str:
    """mean / median / p99 / max of samples in seconds, printed in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"n={len(samples):6d}  mean {statistics.fmean(samples) * 1e3:7.3f} ms  "
        f"median {statistics.median(samples) * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms  "
        f"max {ordered[-1] * 1e3:7.3f} ms"
    )


def cpu_timed(times: List[float], call: Callable[..., object], *args: object) -> bool:
    """Run ``call(*args)`` and append its CPU time (seconds, this process) to ``times``;
    False when the policy refused it (`AllocationError`), True otherwise."""
    start = time.process_time()
    try:
        call(*args)
        ok = True
    except AllocationError:
        ok = False
    times.append(time.process_time() - start)
    return ok


class Clock:
    """Wall-clock and CPU time of the calls it measures, seconds per call by label.

    The CPU time (this process) is the policy's own cost; the wall-clock time also
    counts preemption by other processes, which dominates its tail on a busy machine.
    """

    def __init__(self) -> None:
        self.wall: Dict[str, List[float]] = {}
        self.cpu: Dict[str, List[float]] = {}

    def measure(self, label: str, fn: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()  # raises: nothing is recorded
        self.cpu.setdefault(label, []).append(time.process_time() - cpu)
        self.wall.setdefault(label, []).append(time.perf_counter() - wall)

    def report(self, label: str, title: str) -> None:
        print(f"  {title:40s} wall {stats_ms(self.wall[label])}")
        print(f"  {'':40s} cpu  {stats_ms(self.cpu[label])}")
