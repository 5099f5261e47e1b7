"""`make bench`: every benchmark, one after the other, each in its own process.

Numbers for people; nothing is asserted about time. What each prints and the targets
it is compared with are described in its module docstring and in
docs/performance.md. `python -m bench [NAME ...] [--quick]` runs a subset (names
without the `bench_` prefix), `--quick` a shorter smoke run of each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

# In the order a reader meets the topics: the relay itself, then what plugs into it.
BENCHMARKS = (
    ("relay", "relay latency/throughput/memory, with and without the full dump"),
    ("metrics", "what call statistics and the metrics endpoint add to the relay"),
    ("dump", "the dump observer's cost per call"),
    ("topology", "reading the sysfs topology"),
    ("policy", "static policy: placement time and churn"),
    ("topology_aware", "topology-aware policy: placement time and churn"),
    ("balloons", "balloons policy: placement time and churn"),
    ("state", "state write time and start-up resync with 500 containers"),
)
# Benchmarks that start a containerd need root.
NEEDS_ROOT = {"relay", "metrics", "state"}


def main(argv: list) -> int:
    quick = "--quick" in argv
    wanted = [a for a in argv if not a.startswith("-")] or [name for name, _ in BENCHMARKS]
    unknown = set(wanted) - {name for name, _ in BENCHMARKS}
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(n for n, _ in BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name, what in BENCHMARKS:
        if name not in wanted:
            continue
        print(f"\n===== bench_{name}: {what}", flush=True)
        if name in NEEDS_ROOT and os.geteuid() != 0:
            print("skipped: needs root (it starts a containerd)")
            continue
        cmd = [sys.executable, "-m", f"bench.bench_{name}"] + (["--quick"] if quick else [])
        if name == "dump" and quick:
            cmd = [sys.executable, "-m", "bench.bench_dump", "-n", "1000"]
        started = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"----- bench_{name}: exit {rc}, {time.monotonic() - started:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
