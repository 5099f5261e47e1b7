"""Relay benchmark: latency, throughput and memory, direct vs through the relay.

Starts a throwaway containerd (harness) with ~100 containers, and `cri-resmgr`
processes in front of it: policy none without dump, the same with
`-dump='reset,full:.*'` (every message decoded and rendered), and with metrics on
when the service supports them. Then, interleaved round by round (direct, relay,
relay+dump, ... direct, relay, ...), it measures for Version, ListContainers and
ListImages:

* p50/p99 latency at concurrency 1 (sync grpcio client, one call at a time);
* calls/s at concurrency 8 (grpc.aio client, 8 calls in flight on one channel);

and prints medians over the rounds with the ratios to direct. Last, the relay's RSS
(VmRSS) before and after 100k Version calls. Nothing is asserted: these are numbers
for people (docs/performance.md records them and the targets).

Run: `python -m bench.bench_relay [--rounds N] [--calls N] [--quick]` as root.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import grpc
from grpc import aio

from cri_resmgr.cri import api_pb2
from harness import cri_objects as co
from harness.containerd import Containerd
from harness.relay import RelayProcess

METHODS: Dict[str, bytes] = {
    "Version": api_pb2.VersionRequest(version="v1").SerializeToString(),
    "ListContainers": api_pb2.ListContainersRequest().SerializeToString(),
    "ListImages": api_pb2.ListImagesRequest().SerializeToString(),
}


def _path(method: str) -> str:
    return co.method_path(method)


def latency(target: str, method: str, calls: int) -> Tuple[float, float]:
    """p50, p99 in microseconds of `calls` sequential calls."""
    with grpc.insecure_channel("unix:" + target) as ch:
        fn = ch.unary_unary(_path(method))
        body = METHODS[method]
        for _ in range(min(200, calls)):
            fn(body)
        samples = []
        for _ in range(calls):
            t = time.perf_counter()
            fn(body)
            samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def _throughput(target: str, method: str, seconds: float, concurrency: int) -> float:
    async with aio.insecure_channel("unix:" + target) as ch:
        fn = ch.unary_unary(_path(method))
        body = METHODS[method]
        for _ in range(50):
            await fn(body)
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await fn(body)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def throughput(target: str, method: str, seconds: float, concurrency: int = 8) -> float:
    return asyncio.run(_throughput(target, method, seconds, concurrency))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def populate(ctrd: Containerd, containers: int) -> None:
    """Create `containers` sleeping containers in pods of 10 (ListContainers gets real)."""
    with grpc.insecure_channel("unix:" + ctrd.socket) as ch:
        for p in range(0, containers, 10):
            pod = co.pod_sandbox_config(f"bench-{p}", namespace="bench")
            pod_id = co.run_pod(ch, pod)
            for c in range(min(10, containers - p)):
                cfg = co.container_config(f"c{c}", pod, command=["sleep", "36000"])
                co.create_and_start(ch, pod_id, pod, cfg)


def measure(targets: Dict[str, str], rounds: int, calls: int, seconds: float) -> Dict:
    results: Dict[Tuple[str, str, str], List[float]] = {}
    for _ in range(rounds):
        for method in METHODS:
            for name, target in targets.items():  # interleaved: direct, relay, ...
                p50, p99 = latency(target, method, calls)
                qps = throughput(target, method, seconds)
                for metric, value in (("p50", p50), ("p99", p99), ("qps", qps)):
                    results.setdefault((method, name, metric), []).append(value)
    return {k: statistics.median(v) for k, v in results.items()}


def report(results: Dict, targets: Sequence[str]) -> None:
    print(
        f"{'method':<16}{'path':<14}{'p50 us':>9}{'p99 us':>9}{'calls/s c8':>12}"
        f"{'p50 ratio':>11}{'qps ratio':>11}"
    )
    for method in METHODS:
        base_p50 = results[(method, "direct", "p50")]
        base_qps = results[(method, "direct", "qps")]
        for name in targets:
            p50 = results[(method, name, "p50")]
            p99 = results[(method, name, "p99")]
            qps = results[(method, name, "qps")]
            print(
                f"{method:<16}{name:<14}{p50:>9.0f}{p99:>9.0f}{qps:>12.0f}"
                f"{p50 / base_p50:>11.2f}{qps / base_qps:>11.2f}"
            )


def memory(relay: RelayProcess, calls: int) -> None:
    assert relay.proc is not None
    pid = relay.proc.pid
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        fn = ch.unary_unary(_path("Version"))
        body = METHODS["Version"]
        for _ in range(1000):
            fn(body)
        before = rss_kib(pid)
        marks = []
        for i in range(calls):
            fn(body)
            if (i + 1) % (calls // 4) == 0:
                marks.append(rss_kib(pid))
    print(
        f"relay RSS: {before / 1024:.1f} MiB after warm-up; after "
        + ", ".join(
            f"{(i + 1) * calls // 4 // 1000}k calls {m / 1024:.1f} MiB" for i, m in enumerate(marks)
        )
    )


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_relay")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="latency samples per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="throughput run length")
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--memory-calls", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer calls")
    args = parser.parse_args(list(argv))
    if args.quick:
        args.rounds, args.calls, args.seconds, args.memory_calls = 1, 500, 1.0, 20_000
    with Containerd() as ctrd, tempfile.TemporaryDirectory(prefix="crr-b-", dir="/tmp") as d:
        print(f"populating containerd with {args.containers} containers ...", flush=True)
        populate(ctrd, args.containers)
        variants: Dict[str, Callable[[], RelayProcess]] = {
            "relay": lambda: RelayProcess(ctrd.socket, Path(d) / "plain", "-dump=reset,off:.*"),
            "relay+dump": lambda: RelayProcess(
                ctrd.socket, Path(d) / "dump", "-dump='reset,full:.*'", f"-dump-file={d}/cri.dump"
            ),
        }
        relays = {name: make().start() for name, make in variants.items()}
        try:
            targets = {"direct": ctrd.socket, **{n: r.socket for n, r in relays.items()}}
            print(
                f"measuring: {args.rounds} rounds x {len(METHODS)} methods x {len(targets)} paths",
                flush=True,
            )
            results = measure(targets, args.rounds, args.calls, args.seconds)
            report(results, list(targets))
            memory(relays["relay"], args.memory_calls)
        finally:
            for r in relays.values():
                r.stop()
            ctrd.remove_all_pods()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
