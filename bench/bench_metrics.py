"""Metrics benchmark: what call statistics and the Prometheus endpoint cost the relay.

Three parts, numbers for people (nothing is asserted; docs/status.md records them):

1. In-process costs (no root needed): one `metrics.CallStats.observe` (what every call
   through the relay pays: the service always keeps these statistics for
   ``cri-resmgr status``), the same with prometheus-client objects instead (the design
   not taken), and one scrape (`Metrics.render`) with every CRI method seen.
2. Paired A/B against a throwaway containerd (root), the criterion: in one process,
   the feature switched off and on in alternating blocks (ABBA order), p50/p99 latency
   at concurrency 1 for Version, ListContainers and ListImages:

   * the call statistics: a bare `relay.Relay` (child process) whose `CallStats`
     observer is added and removed (SIGUSR1/SIGUSR2);
   * the metrics endpoint: the real service with ``[metrics] listen`` on a unix
     socket, scraped every second or not at all (Prometheus scrapes every 15-60 s).

   Same process, same moment: what is left is the feature. Target: p50 ratio <= 1.05.
3. Separate processes, as bench_relay does (direct, ``relay``, ``relay+stats``,
   ``service`` with metrics off, ``service+metrics`` scraped every second), interleaved
   round by round, p50/p99 and calls/s at concurrency 8. On a busy machine two
   processes differ by more than the features do; part 2 is the measurement.

Run: ``python -m bench.bench_metrics [--pairs N] [--block S] [--rounds N] [--quick]
[--micro-only]``.
`main(argv)` is what ``make bench`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from bench.bench_relay import METHODS as BENCH_METHODS
from bench.bench_relay import measure, populate
from cri_resmgr import metrics, relay
from cri_resmgr.cri.methods import METHODS
from harness import cri_objects as co
from harness.containerd import Containerd
from harness.relay import RelayProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
RS = "/runtime.v1.RuntimeService/"


# --- part 1: in-process ------------------------------------------------------------------


def _best(stmt: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """Best-of-`repeat` microseconds per call (the least disturbed run)."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def micro(number: int = 100_000) -> Dict[str, float]:
    """Microseconds per operation; see the module docstring."""
    stats = metrics.CallStats()
    now = time.monotonic()
    record = relay.CallRecord(RS + "ListContainers", now, now + 0.0004, time.time(), 0, "")
    out = {"CallStats.observe": _best(lambda: stats.observe(record), number)}

    reg = CollectorRegistry()
    calls = Counter("c", "c", ["method", "code"], registry=reg)
    hist = Histogram("h", "h", ["method"], buckets=metrics.LATENCY_BUCKETS, registry=reg)

    def with_labels() -> None:
        calls.labels("ListContainers", "OK").inc()
        hist.labels("ListContainers").observe(0.0004)

    child_c = calls.labels("ListContainers", "OK")
    child_h = hist.labels("ListContainers")

    def with_children() -> None:
        child_c.inc()
        child_h.observe(0.0004)

    out["prometheus-client counter+histogram (labels())"] = _best(with_labels, number)
    out["prometheus-client counter+histogram (cached child)"] = _best(with_children, number)
    out["empty call"] = _best(lambda: None, number)

    for path in METHODS:
        for code in (0, 5):
            stats.observe(relay.CallRecord(path, now, now + 0.001, 0.0, code, ""))
    m = metrics.Metrics(stats)
    out[f"scrape, {len(METHODS)} methods (Metrics.render)"] = _best(m.render, 20, repeat=3)
    return out


def report_micro(results: Dict[str, float]) -> None:
    print("in-process costs (best of 7, microseconds per operation)")
    for name, us in results.items():
        print(f"  {name:<52}{us:>10.2f}")


# --- part 2: end to end ------------------------------------------------------------------


def serve_relay(runtime: str, path: str, stats: bool) -> int:
    """Child process: a bare Relay until SIGTERM; SIGUSR1 adds a CallStats observer,
    SIGUSR2 removes it (`stats`: start with it)."""

    async def run() -> None:
        observer = metrics.CallStats()
        r = relay.Relay(runtime, observers=[observer] if stats else [])
        await r.start(path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: r.set_observers([observer]))
        loop.add_signal_handler(signal.SIGUSR2, lambda: r.set_observers([]))
        await stop.wait()
        await r.stop(1.0)

    asyncio.run(run())
    return 0


class BareRelay:
    """`serve_relay` in a child process; `observe(on)` switches the CallStats observer."""

    def __init__(self, runtime: str, path: Path, stats: bool) -> None:
        self.socket = str(path)
        args = [sys.executable, "-m", "bench.bench_metrics", "--serve", runtime, self.socket]
        self.cmd = args + (["--stats"] if stats else [])
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> BareRelay:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(self.cmd, env=env, cwd=str(REPO_ROOT))
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bare relay did not start: {self.cmd}")
            time.sleep(0.02)
        return self

    def observe(self, on: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class Scraper(threading.Thread):
    """GET /metrics on a unix socket every `interval` seconds while `enabled` is set."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.interval = interval
        self.stopped = threading.Event()
        self.enabled = threading.Event()
        self.enabled.set()
        self.scrapes = 0
        self.bytes = 0
        self.seconds: List[float] = []

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if not self.enabled.is_set():
                continue
            start = time.perf_counter()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(self.path)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    self.bytes += len(chunk)
            self.seconds.append(time.perf_counter() - start)
            self.scrapes += 1

    def switch(self, on: bool) -> None:
        if on:
            self.enabled.set()
        else:
            self.enabled.clear()


Results = Dict[Tuple[str, str, str], float]


def _pct(samples: List[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def paired(
    target: str, method: str, switch: Callable[[bool], None], pairs: int, block: float
) -> Tuple[List[float], List[float]]:
    """Latency samples (seconds, concurrency 1) with the feature off and on, measured in
    alternating blocks of `block` seconds (ABBA order) against one process."""
    off: List[float] = []
    on: List[float] = []
    body = BENCH_METHODS[method]
    with grpc.insecure_channel("unix:" + target) as ch:
        fn = ch.unary_unary(co.method_path(method))
        for _ in range(200):
            fn(body)
        for i in range(pairs):
            for state in (False, True) if i % 2 == 0 else (True, False):
                switch(state)
                time.sleep(0.05)
                out = on if state else off
                end = time.perf_counter() + block
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    fn(body)
                    out.append(time.perf_counter() - t)
    return off, on


def ab_tests(bare: BareRelay, service: Any, scraper: Scraper, pairs: int, block: float) -> None:
    """The criterion: same process, feature off vs on, interleaved."""
    print(
        f"paired A/B in one process ({pairs} pairs of {block:g} s blocks, concurrency 1; "
        "metrics scraped every 1 s when on)"
    )
    print(
        f"{'method':<16}{'what':<30}{'p50 off':>9}{'p50 on':>9}{'ratio':>8}{'p99 off':>9}"
        f"{'p99 on':>9}{'ratio':>8}"
    )
    for method in BENCH_METHODS:
        cases = (
            ("call stats (bare relay)", bare.socket, bare.observe),
            ("metrics endpoint (service)", service.socket, scraper.switch),
        )
        for what, target, switch in cases:
            off, on = paired(target, method, switch, pairs, block)
            p50_off, p50_on = _pct(off, 0.5), _pct(on, 0.5)
            p99_off, p99_on = _pct(off, 0.99), _pct(on, 0.99)
            print(
                f"{method:<16}{what:<30}{p50_off:>9.0f}{p50_on:>9.0f}{p50_on / p50_off:>8.3f}"
                f"{p99_off:>9.0f}{p99_on:>9.0f}{p99_on / p99_off:>8.3f}",
                flush=True,
            )
    scraper.switch(True)


def report_e2e(results: Results, pairs: Sequence[Tuple[str, str]]) -> None:
    print(f"{'method':<16}{'path':<17}{'p50 us':>9}{'p99 us':>9}{'calls/s c8':>12}")
    names = list(dict.fromkeys(k[1] for k in results))  # in the order measured
    for method in BENCH_METHODS:
        for name in names:
            p50 = results[(method, name, "p50")]
            p99 = results[(method, name, "p99")]
            qps = results[(method, name, "qps")]
            print(f"{method:<16}{name:<17}{p50:>9.0f}{p99:>9.0f}{qps:>12.0f}")
    print()
    print(f"{'method':<16}{'ratio':<34}{'p50':>8}{'p99':>8}{'calls/s':>9}")
    for method in BENCH_METHODS:
        for new, base in pairs:
            r50 = results[(method, new, "p50")] / results[(method, base, "p50")]
            r99 = results[(method, new, "p99")] / results[(method, base, "p99")]
            rq = results[(method, new, "qps")] / results[(method, base, "qps")]
            print(f"{method:<16}{new + ' / ' + base:<34}{r50:>8.3f}{r99:>8.3f}{rq:>9.3f}")


def end_to_end(args: argparse.Namespace) -> None:
    with Containerd() as ctrd, tempfile.TemporaryDirectory(prefix="crr-m-", dir="/tmp") as d:
        print(f"populating containerd with {args.containers} containers ...", flush=True)
        populate(ctrd, args.containers)
        metrics_socket = f"{d}/metrics.sock"
        service_metrics = RelayProcess(ctrd.socket, Path(d) / "svcm", "-dump=reset,off:.*")
        (service_metrics.config_dir / "50-metrics.conf").write_text(
            f"[metrics]\nlisten = unix:{metrics_socket}\n"
        )
        variants: Dict[str, Any] = {
            "relay": BareRelay(ctrd.socket, Path(d) / "bare.sock", stats=False),
            "relay+stats": BareRelay(ctrd.socket, Path(d) / "stats.sock", stats=True),
            "service": RelayProcess(ctrd.socket, Path(d) / "svc", "-dump=reset,off:.*"),
            "service+metrics": service_metrics,
        }
        started = {name: v.start() for name, v in variants.items()}
        scraper = Scraper(metrics_socket)
        scraper.start()
        try:
            ab_tests(started["relay"], started["service+metrics"], scraper, args.pairs, args.block)
            print()
            targets = {"direct": ctrd.socket, **{n: v.socket for n, v in started.items()}}
            print(
                f"separate processes: {args.rounds} rounds x 3 methods x {len(targets)} paths "
                "(service+metrics scraped every 1 s; differences between processes on a busy "
                "machine are noise of +-10 % or more)",
                flush=True,
            )
            results = measure(targets, args.rounds, args.calls, args.seconds)
        finally:
            scraper.stopped.set()
            scraper.join(15)
            for v in started.values():
                v.stop()
            ctrd.remove_all_pods()
        report_e2e(
            results,
            [("relay+stats", "relay"), ("service+metrics", "service"), ("service", "relay")],
        )
        if scraper.seconds:
            print(
                f"scrapes: {scraper.scrapes}, {scraper.bytes // max(1, scraper.scrapes)} bytes "
                f"each, median {statistics.median(scraper.seconds) * 1e3:.1f} ms"
            )


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_metrics")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="latency samples per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="throughput run length")
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=6, help="A/B pairs per method and feature")
    parser.add_argument("--block", type=float, default=2.0, help="seconds per A/B block")
    parser.add_argument("--quick", action="store_true", help="1 round, fewer calls")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process part")
    parser.add_argument("--serve", nargs=2, metavar=("RUNTIME", "SOCKET"), help=argparse.SUPPRESS)
    parser.add_argument("--stats", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.serve:
        return serve_relay(args.serve[0], args.serve[1], args.stats)
    if args.quick:
        args.rounds, args.calls, args.seconds, args.pairs, args.block = 1, 500, 1.0, 2, 1.0
    report_micro(micro(20_000 if args.quick else 100_000))
    if args.micro_only:
        return 0
    if os.geteuid() != 0:
        print("end-to-end part skipped: it starts containerd and needs root")
        return 0
    print()
    end_to_end(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
