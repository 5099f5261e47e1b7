"""State and start-up benchmarks: state write time, and resync with 500 containers.

* **state write**: `State.save()` after one change, with 100, 500 and 1000 containers
  in the state (each save is the temp file + fsync + rename + directory fsync a
  CreateContainer pays before kubelet gets its reply).
* **resync**: a throwaway containerd with 500 running containers (50 pods of 10); the
  static policy's `Hooks.resync()` on an empty state (every container adopted and
  placed: a first start on a busy node) and again on the state that run wrote (a
  restart). Target: <= 1 s. Needs root (containerd).

Nothing is asserted; these are numbers for people.
Run: `python -m bench.bench_state [--containers N] [--skip-resync]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import List, Sequence

import grpc

from cri_resmgr import hooks, state
from cri_resmgr.cri.client import CriClient
from cri_resmgr.policy.base import BESTEFFORT, Container, Placement, Pod
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources import topology
from cri_resmgr.resources.cpuset import CPUSet


def _entry(i: int) -> state.ContainerEntry:
    container = Container(
        id=f"{i:064x}",
        pod_id=f"pod{i // 10:061x}",
        name=f"c{i}",
        pod_name=f"p{i // 10}",
        namespace="bench",
        qos=BESTEFFORT,
    )
    placement = Placement(cpus=CPUSet.parse("0-63"), mems=CPUSet.parse("0-1"))
    return state.ContainerEntry(container=container, placement=placement)


def bench_state_write(sizes: Sequence[int] = (100, 500, 1000), saves: int = 50) -> None:
    print("state write (save after one change, incl. fsyncs):")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="crr-state-") as d:
            st = state.State.load(d, "static")
            for i in range(size // 10):
                st.put_pod(Pod(id=f"pod{i:061x}", uid=f"u{i}", name=f"p{i}", namespace="bench"))
            for i in range(size):
                st.put_container(_entry(i))
            st.save()
            times: List[float] = []
            for n in range(saves):
                st.put_container(_entry(n % size))  # one container changed
                t = time.perf_counter()
                st.save()
                times.append(time.perf_counter() - t)
            times.sort()
            print(
                f"  {size:5d} containers: p50 {statistics.median(times) * 1e3:6.2f} ms, "
                f"p99 {times[int(len(times) * 0.99)] * 1e3:6.2f} ms"
            )


def bench_resync(containers: int) -> None:
    from harness import cri_objects as co  # noqa: PLC0415 - needs root and containerd
    from harness.containerd import Containerd  # noqa: PLC0415

    with Containerd() as ctrd:
        print(f"resync: creating {containers} containers in containerd ...", flush=True)
        with grpc.insecure_channel("unix:" + ctrd.socket) as ch:
            for p in range(0, containers, 10):
                pod = co.pod_sandbox_config(f"r{p}", namespace="bench")
                pod_id = co.run_pod(ch, pod)
                for c in range(min(10, containers - p)):
                    co.create_and_start(
                        ch,
                        pod_id,
                        pod,
                        co.container_config(f"c{c}", pod, command=["sleep", "9999"]),
                    )
        topo = topology.load("/")
        with tempfile.TemporaryDirectory(prefix="crr-resync-") as d:
            for label in ("first start (empty state, adopt all)", "restart (state restored)"):
                policy = StaticPolicy(topo, CPUSet.of(0), {})
                st = state.State.load(d, "static")
                client = CriClient(ctrd.socket)
                h = hooks.Hooks(policy, st, client)
                t = time.perf_counter()
                report = h.resync()
                elapsed = time.perf_counter() - t
                h.close()
                client.close()
                print(
                    f"  {label}: {elapsed * 1e3:7.1f} ms for {containers} containers "
                    f"({len(report.adopted)} adopted, {len(report.restored)} restored, "
                    f"{len(report.pushed)} pushed)"
                )
        ctrd.remove_all_pods()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_state")
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--skip-resync", action="store_true", help="no containerd needed")
    parser.add_argument("--quick", action="store_true", help="100 containers, fewer saves")
    args = parser.parse_args(list(argv))
    if args.quick:
        args.containers = min(args.containers, 100)
    bench_state_write()
    if not args.skip_resync:
        bench_resync(args.containers)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
