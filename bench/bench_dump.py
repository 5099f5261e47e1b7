"""Micro-benchmark of the CRI dump: observe() cost, writer throughput, event-loop impact.

Run: `.venv/bin/python bench/bench_dump.py` (or `-m bench.bench_dump`). Three parts:

1. `observe()` on the caller's thread, nanoseconds per call (the relay pays only this).
2. The writer: full-level CreateContainer records formatted and written per second,
   all different, and all the same (kubelet's repeated polls hit the rendering cache).
3. The effect on an event loop: an asyncio unix-socket echo server answers a client
   process at concurrency 1; after each answer it calls `observe()` with a CreateContainer
   record, as the relay does. Round-trip p50/p99 without a dump and with `reset,full:.*`
   to a file, every call with a different container name (no rendering cache hits).
   The echo costs far less than a relayed call, so the ratio here is an upper bound of
   what the dump adds to a real call (the writer competes for the GIL and the CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_resmgr import dump, http2, relay  # noqa: E402
from cri_resmgr.config import parse_dump_rules  # noqa: E402
from cri_resmgr.cri import api_pb2  # noqa: E402

CREATE = "/runtime.v1.RuntimeService/CreateContainer"

_CLIENT = r"""
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
msg = b"x" * 64
out = []
for i in range(n):
    t = time.perf_counter()
    s.sendall(msg)
    got = 0
    while got < len(msg):
        got += len(s.recv(4096))
    out.append(time.perf_counter() - t)
print(" ".join("%.9f" % v for v in out))
"""


def create_record(i: int = 0) -> relay.CallRecord:
    """A kubelet-sized CreateContainer call (request about 2 KB); `i` names the container."""
    labels = {
        "io.kubernetes.container.name": "app",
        "io.kubernetes.pod.name": "web",
        "io.kubernetes.pod.namespace": "default",
        "io.kubernetes.pod.uid": "00817f22-67f4-4450-b837-a1f0fea7f81a",
    }
    sandbox = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="u1"),
        labels=labels,
        annotations={"kubernetes.io/config.source": "api"},
        log_directory="/var/log/pods/default_web_00817f22-67f4-4450-b837-a1f0fea7f81a",
    )
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id="ab" * 32,
        sandbox_config=sandbox,
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=f"app{i}"),
            image=api_pb2.ImageSpec(image="docker.io/library/busybox:latest"),
            command=["sleep", "3600"],
            envs=[api_pb2.KeyValue(key=f"VAR_{i}", value=b"value %d" % i) for i in range(10)],
            labels=labels,
            annotations={"io.kubernetes.container.hash": "d5a63845"},
            log_path="app/0.log",
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(
                    cpu_period=100000, cpu_quota=50000, cpu_shares=512, oom_score_adj=985
                ),
                security_context=api_pb2.LinuxContainerSecurityContext(
                    masked_paths=["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
                    readonly_paths=["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
                ),
            ),
        ),
    )
    reply = api_pb2.CreateContainerResponse(container_id="cd" * 32)
    now = time.monotonic()
    return relay.CallRecord(
        CREATE,
        now,
        now + 0.1,
        time.time(),
        0,
        "",
        http2.grpc_frame(request.SerializeToString()),
        http2.grpc_frame(reply.SerializeToString()),
    )


def bench_observe(n: int) -> None:
    d = dump.Dump(parse_dump_rules("reset,full:.*"), None, queue_size=n + 1)
    record = create_record()
    d.wants(CREATE)
    t = time.perf_counter()
    for _ in range(n):
        d.observe(record)
    dt = time.perf_counter() - t
    print(f"observe():            {dt / n * 1e9:8.0f} ns/call (queueing, writer not running)")


def bench_writer(n: int, directory: str) -> None:
    for distinct in (True, False):
        path = os.path.join(directory, f"throughput-{distinct}.log")
        d = dump.Dump(parse_dump_rules("reset,full:.*"), path, queue_size=n + 1)
        one = create_record()
        for i in range(n):
            d.observe(create_record(i) if distinct else one)
        t = time.perf_counter()
        d.start()
        d.flush()
        dt = time.perf_counter() - t
        d.stop()
        size = os.path.getsize(path)
        what = "distinct" if distinct else "repeated"
        print(
            f"writer (full, {what}): {n / dt:8.0f} calls/s, {dt / n * 1e6:4.0f} us/call, "
            f"{size / n:.0f} bytes/call"
        )


async def _serve(path: str, n: int, d: Optional[dump.Dump], client: str) -> List[float]:
    records = [create_record(i) for i in range(n)]
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        while True:
            data = await reader.read(64)
            if not data:
                break
            writer.write(data)
            if d is not None:
                d.observe(records[count % n])
                count += 1
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", client, path, str(n), stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    server.close()
    await server.wait_closed()
    return [float(v) for v in out.split()]


def bench_loop(n: int, directory: str) -> None:
    results = {}
    for name in ("no dump", "full dump", "no dump ", "full dump "):
        d = None
        if name.startswith("full"):
            d = dump.Dump(parse_dump_rules("reset,full:.*"), os.path.join(directory, "loop.log"))
            d.start()
        sock = os.path.join(directory, "echo.sock")
        lat = asyncio.run(_serve(sock, n, d, _CLIENT))
        if d is not None:
            stats = d.stats()
            d.stop()
            extra = f"  (written {stats['written']}, dropped {stats['dropped']})"
        else:
            extra = ""
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[int(len(lat) * 0.99)]
        results[name.strip()] = p50
        print(f"echo {name.strip():10s} p50 {p50 * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us{extra}")
    print(f"echo p50 ratio full/no dump: {results['full dump'] / results['no dump']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        bench_observe(args.n * 10)
        bench_writer(args.n, directory)
        bench_loop(args.n, directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
