"""metrics: call statistics (counts, codes, window percentiles) and the Prometheus endpoint."""

from __future__ import annotations

import math
import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from loop_thread import LoopThread
from prometheus_client.parser import text_string_to_metric_families

from cri_resmgr import metrics, relay
from cri_resmgr.metrics import CallStats, Metrics, MetricsServer

RS = "/runtime.v1.RuntimeService/"


def rec(
    method: str,
    start: float,
    seconds: float,
    code: int = 0,
    *,
    runtime: Optional[float] = None,
    split: bool = False,
) -> Any:
    """A CallRecord; ``runtime`` is the relay's runtime time (None: not measured)."""
    return relay.CallRecord(
        method=method,
        start=start,
        end=start + seconds,
        wall=0.0,
        code=code,
        details="",
        runtime=runtime,
    )


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _method(snap: Dict[str, Any], name: str) -> Dict[str, Any]:
    return next(m for m in snap["methods"] if m["method"] == name)


# --- CallStats ---------------------------------------------------------------------------


def test_counts_codes_and_errors() -> None:
    stats = CallStats()
    assert stats.wants(RS + "Version") == relay.WANT_STATUS
    assert stats.wants("/x.Y/Z") == relay.WANT_STATUS
    for code in (0, 0, 0, 5, 14):
        stats.observe(rec(RS + "CreateContainer", 1.0, 0.1, code))
    stats.observe(rec(RS + "Version", 1.0, 0.001))
    snap = stats.snapshot(now=2.0)
    create = _method(snap, "CreateContainer")
    assert create["calls"] == 5 and create["errors"] == 2
    assert create["codes"] == {"OK": 3, "NOT_FOUND": 1, "UNAVAILABLE": 1}
    assert create["mean_seconds"] == pytest.approx(0.1)
    assert create["window"]["calls"] == 5 and create["window"]["errors"] == 2
    assert [m["method"] for m in snap["methods"]] == ["CreateContainer", "Version"]
    assert snap["window_seconds"] == metrics.WINDOW_SLOTS * metrics.WINDOW_SLOT


def test_unknown_methods_are_other_and_the_table_is_bounded() -> None:
    stats = CallStats()
    for i in range(5000):
        stats.observe(rec(f"/evil.Service/M{i}", 1.0, 0.001))
    snap = stats.snapshot(now=2.0)
    assert [m["method"] for m in snap["methods"]] == ["other"]
    assert _method(snap, "other")["calls"] == 5000
    assert len(stats._methods) <= 4096


def test_window_percentiles_within_ten_percent() -> None:
    clock = Clock(500.0)
    stats = CallStats(clock=clock)
    samples = [0.0001 * (1.05**i) for i in range(120)]  # 100 us .. ~35 ms
    for i, s in enumerate(samples):
        stats.observe(rec(RS + "ListContainers", 490.0 + i / 100, s))
    w = _method(stats.snapshot(), "ListContainers")["window"]
    ordered = sorted(samples)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        exact = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
        assert w[name] == pytest.approx(exact, rel=0.1), name
    assert w["max"] == pytest.approx(max(samples))
    assert w["p50"] <= w["p90"] <= w["p99"] <= w["max"]


def test_window_forgets_old_slots() -> None:
    clock = Clock(0.0)
    stats = CallStats(clock=clock)
    stats.observe(rec(RS + "Version", 5.0, 1.0))  # ends at 6 s: slot 0
    stats.observe(rec(RS + "Version", 100.0, 0.001))  # slot 10
    clock.now = 101.0
    w = _method(stats.snapshot(), "Version")["window"]
    assert w["calls"] == 2 and w["max"] == pytest.approx(1.0)
    clock.now = 6.0 + metrics.WINDOW_SLOTS * metrics.WINDOW_SLOT  # slot 0 fell out
    snap = stats.snapshot()
    w = _method(snap, "Version")["window"]
    assert w["calls"] == 1 and w["max"] == pytest.approx(0.001)
    assert _method(snap, "Version")["calls"] == 2  # all-time counts stay
    # a slot reused after a full turn starts from zero
    stats.observe(rec(RS + "Version", 300.0, 0.002))  # slot 30 = index 0 again
    clock.now = 301.0
    w = _method(stats.snapshot(), "Version")["window"]
    assert w["calls"] == 2  # slots 10 and 30
    clock.now = 10_000.0
    assert "p50" not in _method(stats.snapshot(), "Version")["window"]


def test_rate_over_the_window() -> None:
    clock = Clock(0.0)
    stats = CallStats(clock=clock)
    for i in range(300):
        stats.observe(rec(RS + "Version", float(i), 0.001))
    clock.now = 300.0
    w = _method(stats.snapshot(), "Version")["window"]
    assert w["rate"] == pytest.approx(1.0, rel=0.05)
    young = CallStats(clock=clock)  # counting for 10 s: the rate is over 10 s, not 5 min
    for i in range(20):
        young.observe(rec(RS + "Version", 300.0 + i / 2, 0.001))
    clock.now = 310.0
    assert _method(young.snapshot(), "Version")["window"]["rate"] == pytest.approx(2.0)


def test_runtime_split() -> None:
    stats = CallStats()
    stats.observe(rec(RS + "CreateContainer", 1.0, 0.100, runtime=0.080))
    stats.observe(rec(RS + "CreateContainer", 1.0, 0.001, runtime=0.002))  # clock skew: 0
    stats.observe(rec(RS + "CreateContainer", 1.0, 0.010, split=True))  # runtime unknown
    entry = _method(stats.snapshot(now=2.0), "CreateContainer")
    assert entry["runtime_mean_seconds"] == pytest.approx(0.041)
    assert entry["relay_mean_seconds"] == pytest.approx(0.010)
    m = Metrics(stats)
    fams = _families(m)
    rt = fams["cri_resmgr_runtime_duration_seconds"]
    assert _sample(rt, "_count", method="CreateContainer") == 2
    assert _sample(rt, "_sum", method="CreateContainer") == pytest.approx(0.082)
    ov = fams["cri_resmgr_relay_overhead_seconds"]
    assert _sample(ov, "_bucket", method="CreateContainer", le="0.0001") == 1
    assert _sample(ov, "_count", method="CreateContainer") == 2
    assert _sample(fams["cri_resmgr_call_duration_seconds"], "_count") == 3


# --- Prometheus ------------------------------------------------------------------------


def _families(m: Metrics) -> Dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.families_text(m))}


def _sample(family: Any, suffix: str = "", **labels: str) -> float:
    values = [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (family.name + suffix, labels, family.samples)
    return float(values[0])


class FakeHooks:
    def __init__(self) -> None:
        self.calls = 0

    def status(self) -> Dict[str, Any]:
        self.calls += 1
        return {
            "pools": {"shared": "0,3-7", "reserved": "0", "exclusive": "1-2"},
            "containers": [
                {
                    "container": "default/web:app",
                    "placement": {"class": "exclusive", "exclusive": "1-2", "cpus": "1-2"},
                },
                {"container": "default/web:side", "placement": {"class": "shared", "cpus": "3-7"}},
                {"container": "kube-system/dns:dns", "placement": None},
            ],
            "state": {"last_save_seconds": 0.0025},
        }


class FakeDump:
    def stats(self) -> Dict[str, int]:
        return {"queued": 3, "written": 10, "dropped": 2, "failed": 1}


class FakeRelay:
    def runtime_reachable(self) -> bool:
        return False

    def connections(self) -> int:
        return 4


def fake_service() -> Any:
    return SimpleNamespace(
        hooks=FakeHooks(),
        dump=FakeDump(),
        relay=FakeRelay(),
        config=SimpleNamespace(policy_name="static"),
        started=1234.5,
    )


def test_exposition_of_calls() -> None:
    stats = CallStats()
    for seconds, code in ((0.0002, 0), (0.003, 0), (0.2, 2), (500.0, 0)):
        stats.observe(rec(RS + "CreateContainer", 1.0, seconds, code))
    m = Metrics(stats)
    fams = _families(m)
    calls = fams["cri_resmgr_calls"]
    assert calls.type == "counter"
    assert _sample(calls, "_total", method="CreateContainer", code="OK") == 3
    assert _sample(calls, "_total", method="CreateContainer", code="UNKNOWN") == 1
    hist = fams["cri_resmgr_call_duration_seconds"]
    assert hist.type == "histogram"
    assert _sample(hist, "_bucket", method="CreateContainer", le="0.00025") == 1
    assert _sample(hist, "_bucket", method="CreateContainer", le="0.005") == 2
    assert _sample(hist, "_bucket", method="CreateContainer", le="120.0") == 3
    assert _sample(hist, "_bucket", method="CreateContainer", le="+Inf") == 4
    assert _sample(hist, "_count", method="CreateContainer") == 4
    assert _sample(hist, "_sum", method="CreateContainer") == pytest.approx(500.2032)
    info = fams["cri_resmgr_info"]
    assert _sample(info, policy="") == 1


def test_fed_metrics_and_service_gauges() -> None:
    svc = fake_service()
    m = Metrics(CallStats(), service=svc)
    m.decision("static", "allocate")
    m.decision("static", "allocate")
    m.decision("static", "allocate", "failed")
    m.state_write(0.004)
    m.resync(1.5)
    fams = _families(m)
    dec = fams["cri_resmgr_policy_decisions"]
    assert _sample(dec, "_total", policy="static", operation="allocate", outcome="ok") == 2
    assert _sample(dec, "_total", policy="static", operation="allocate", outcome="failed") == 1
    sw = fams["cri_resmgr_state_write_duration_seconds"]
    assert _sample(sw, "_count") == 1 and _sample(sw, "_bucket", le="0.005") == 1
    assert _sample(fams["cri_resmgr_resync_duration_seconds"]) == 1.5
    pools = fams["cri_resmgr_pool_cpus"]
    assert _sample(pools, pool="shared") == 6
    assert _sample(pools, pool="exclusive") == 2
    exclusive = fams["cri_resmgr_container_exclusive_cpus"]
    assert _sample(exclusive, namespace="default", pod="web", container="app") == 2
    assert len(exclusive.samples) == 1
    per_class = fams["cri_resmgr_containers"]
    assert _sample(per_class, cpu_class="exclusive") == 1
    assert _sample(per_class, cpu_class="unplaced") == 1
    assert _sample(fams["cri_resmgr_dump_queue_depth"]) == 3
    assert _sample(fams["cri_resmgr_dump_dropped"], "_total") == 2
    assert _sample(fams["cri_resmgr_dump_written"], "_total") == 10
    assert _sample(fams["cri_resmgr_dump_write_failures"], "_total") == 1
    assert _sample(fams["cri_resmgr_runtime_reachable"]) == 0
    assert _sample(fams["cri_resmgr_relay_connections"]) == 4
    assert _sample(fams["cri_resmgr_start_time_seconds"]) == 1234.5
    assert _sample(fams["cri_resmgr_state_last_write_duration_seconds"]) == 0.0025
    assert _sample(fams["cri_resmgr_info"], policy="static") == 1


def test_metric_names_follow_conventions() -> None:
    m = Metrics(CallStats(), service=fake_service())
    m.decision("static", "release")
    text = metrics.families_text(m)
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("cri_resmgr_"), fam.name
        if fam.name.endswith("_created"):
            continue  # prometheus-client's creation timestamps of counters and histograms
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        if "seconds" in fam.name:
            assert fam.name.endswith("_seconds"), fam.name


def test_a_failing_service_does_not_break_the_scrape() -> None:
    svc = fake_service()

    def broken() -> None:
        raise RuntimeError("locked up")

    svc.hooks.status = broken
    fams = _families(Metrics(CallStats(), service=svc))
    assert "cri_resmgr_pool_cpus" not in fams
    assert "cri_resmgr_calls" in fams


def test_parse_listen() -> None:
    assert metrics.parse_listen("127.0.0.1:8891") == ("tcp", ("127.0.0.1", 8891))
    assert metrics.parse_listen(":8891") == ("tcp", ("", 8891))
    assert metrics.parse_listen("[::1]:9") == ("tcp", ("::1", 9))
    assert metrics.parse_listen("unix:/run/m.sock") == ("unix", "/run/m.sock")
    with pytest.raises(ValueError, match="HOST:PORT or unix:PATH"):
        metrics.parse_listen("nope")


# --- the endpoint ------------------------------------------------------------------------


def _get(sock: socket.socket, path: str, accept: str = "") -> List[bytes]:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n" + (f"Accept: {accept}\r\n" if accept else "")
    sock.sendall(head.encode() + b"\r\n")
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return [head_bytes, body]


def test_server_over_tcp(loop: LoopThread) -> None:
    stats = CallStats()
    stats.observe(rec(RS + "CreateContainer", 1.0, 0.1))
    server = MetricsServer("127.0.0.1:0", Metrics(stats, service=fake_service()))
    loop.run(server.start())
    try:
        host, port = server.address().rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        head, body = _get(socket.create_connection((host, int(port)), 5), "/metrics")
        assert head.startswith(b"HTTP/1.0 200")
        assert b"text/plain; version=0.0.4" in head
        assert b'cri_resmgr_calls_total{code="OK",method="CreateContainer"} 1.0' in body
        head, body = _get(
            socket.create_connection((host, int(port)), 5),
            "/metrics",
            accept="application/openmetrics-text; version=1.0.0",
        )
        assert b"application/openmetrics-text" in head and body.endswith(b"# EOF\n")
        head, _ = _get(socket.create_connection((host, int(port)), 5), "/other")
        assert head.startswith(b"HTTP/1.0 404")
        assert server.scrapes == 2
    finally:
        loop.run(server.stop())


def test_server_over_unix_socket(loop: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / "metrics.sock")
    server = MetricsServer("unix:" + path, Metrics(CallStats()))
    loop.run(server.start())
    try:
        assert server.address() == "unix:" + path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        head, body = _get(s, "/")
        assert head.startswith(b"HTTP/1.0 200") and b"cri_resmgr_info" in body
    finally:
        loop.run(server.stop())
    assert not os.path.exists(path)
