"""Call statistics for ``cri-resmgr status`` and the Prometheus metrics endpoint.

Ownership:

* `CallStats`, a relay observer (always on) that counts every finished call per
  method and status code and keeps latency histograms: cumulative ones with the
  Prometheus bucket bounds `LATENCY_BUCKETS`, and a rolling window of `WINDOW_SLOTS`
  slots of `WINDOW_SLOT` seconds (five minutes) of fine logarithmic buckets, from which
  `snapshot()` computes the percentiles ``cri-resmgr status`` shows. `observe` is O(1)
  and allocation-free except once per slot per method: a few list increments and two
  bisects (see bench/bench_metrics.py for its cost).
* `Metrics`, the Prometheus side (``prometheus-client``, imported only when metrics
  are on): a private registry with a collector that renders `CallStats` and the
  service's state at scrape time, and the metric objects the hooks and the service
  feed (`decision`, `state_write`, `resync`).
* `MetricsServer`, the HTTP endpoint for ``[metrics] listen`` (``HOST:PORT`` or
  ``unix:PATH``), served on the service's event loop; the exposition text is rendered
  in a worker thread.

Metric names (all ``cri_resmgr_`` prefixed; times in seconds)::

    calls_total{method,code}                     finished CRI calls by gRPC status code
    call_duration_seconds{method}                histogram: the call as the relay saw it
    runtime_duration_seconds{method}             histogram: time spent in the runtime *
    relay_overhead_seconds{method}               histogram: call duration - runtime time *
    dump_queue_depth, dump_dropped_total, dump_written_total, dump_write_failures_total
    policy_decisions_total{policy,operation,outcome}   outcome: ok | failed | passed
    pool_cpus{pool}                              CPUs in each pool of the active policy
    container_exclusive_cpus{namespace,pod,container}  CPUs a container owns alone
    containers{cpu_class}                        containers per CPU class
    state_write_duration_seconds                 histogram of state file writes
    state_last_write_duration_seconds            the last state write
    resync_duration_seconds                      the start-up resync with the runtime
    runtime_reachable, relay_connections, start_time_seconds, info{version,policy}

(*) The relay is a frame relay: it sees when a call starts (the request's header block
arrives) and ends (the reply's trailers leave). `relay.CallRecord.runtime` is the time
between forwarding the request's last frame and the runtime's first reply frame (for
hooked calls: the time the hook's forwards waited); the rest is the relay's. Records
without it (e.g. a call cancelled before the runtime answered) go only into
``call_duration_seconds``.
``method`` is the CRI short name (``CreateContainer``); non-CRI methods are ``other``.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import bisect
import logging
import math
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from cri_resmgr import control, relay, sockets
from cri_resmgr.cri.methods import METHODS
from cri_resmgr.version import __version__

__all__ = [
    "CODE_NAMES",
    "LATENCY_BUCKETS",
    "WINDOW_SLOT",
    "WINDOW_SLOTS",
    "CallStats",
    "Metrics",
    "MetricsServer",
    "code_name",
    "parse_listen",
]

log = logging.getLogger(__name__)

#: gRPC status code names by value (as grpc.StatusCode names them).
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

#: Upper bounds (seconds) of the Prometheus latency histogram buckets (+Inf implied).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
STATE_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

WINDOW_SLOT = 10.0  # seconds per window slot
WINDOW_SLOTS = 30  # slots in the window: 5 minutes
#: Fine bucket bounds for window percentiles: 1 us * 2**(i/4), up to ~270 s (+-9 %).
FINE_BOUNDS = tuple(1e-6 * 2 ** (i / 4) for i in range(4 * 28 + 1))
_NFINE = len(FINE_BOUNDS) + 1

OTHER_METHOD = "other"
#: Whether relay.CallRecord carries the runtime time (see the module docstring).


def code_name(code: int) -> str:
    """The gRPC status code name of `code` (`5` -> ``NOT_FOUND``), ``CODE_<n>`` if unknown."""
    if 0 <= code < len(CODE_NAMES):
        return CODE_NAMES[code]
    return f"CODE_{code}"


def _short(path: str) -> str:
    info = METHODS.get(path)
    return info.name if info is not None else OTHER_METHOD


class _Method:
    """Everything counted for one method (written on the event loop only)."""

    __slots__ = (
        "name",
        "codes",
        "hist",
        "sum",
        "rt_hist",
        "rt_sum",
        "ov_hist",
        "ov_sum",
        "win_slot",
        "win_calls",
        "win_errors",
        "win_max",
        "win_fine",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.codes: Dict[int, int] = {}
        nb = len(LATENCY_BUCKETS) + 1
        self.hist = [0] * nb  # non-cumulative; the last is +Inf
        self.sum = 0.0
        self.rt_hist = [0] * nb
        self.rt_sum = 0.0
        self.ov_hist = [0] * nb
        self.ov_sum = 0.0
        self.win_slot = [-1] * WINDOW_SLOTS  # which slot number each entry holds
        self.win_calls = [0] * WINDOW_SLOTS
        self.win_errors = [0] * WINDOW_SLOTS
        self.win_max = [0.0] * WINDOW_SLOTS
        self.win_fine: List[List[int]] = [[] for _ in range(WINDOW_SLOTS)]


def _percentile(fine: Sequence[int], total: int, q: float, ceiling: float) -> float:
    """The `q` quantile (0..1) from fine bucket counts: the bucket's geometric middle."""
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(fine):
        seen += n
        if seen >= rank:
            if i >= len(FINE_BOUNDS):
                return ceiling
            hi = FINE_BOUNDS[i]
            lo = FINE_BOUNDS[i - 1] if i > 0 else 0.0
            mid = math.sqrt(lo * hi) if lo > 0 else hi
            return min(mid, ceiling)
    return ceiling


class CallStats(relay.Observer):
    """Per-method call counts, status codes and latencies; see the module docstring.

    `observe` runs on the relay's event loop. `snapshot` and `families` may run in any
    thread: they copy lists (atomic under the GIL), so a reader sees each list as it was
    at one moment; counts and sums may be one call apart.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._methods: Dict[str, _Method] = {}
        self._by_name: Dict[str, _Method] = {}
        self._clock = clock
        self._started = clock()  # monotonic: the window is younger than its span at first
        self.since = time.time()  # wall time counting started
        self.split = True  # CallRecord.runtime splits runtime time from relay time

    def wants(self, method: str) -> int:
        return relay.WANT_STATUS

    def _method(self, path: str) -> _Method:
        name = _short(path)
        m = self._by_name.get(name)
        if m is None:
            m = self._by_name[name] = _Method(name)
        if len(self._methods) < 4096:  # unknown paths share "other"; bound the table
            self._methods[path] = m
        return m

    def observe(self, record: relay.CallRecord) -> None:
        m = self._methods.get(record.method)
        if m is None:
            m = self._method(record.method)
        end = record.end
        total = end - record.start
        code = record.code
        codes = m.codes
        codes[code] = codes.get(code, 0) + 1
        m.hist[bisect.bisect_left(LATENCY_BUCKETS, total)] += 1
        m.sum += total
        runtime = record.runtime
        if runtime is not None:
            m.rt_hist[bisect.bisect_left(LATENCY_BUCKETS, runtime)] += 1
            m.rt_sum += runtime
            over = max(total - runtime, 0.0)
            m.ov_hist[bisect.bisect_left(LATENCY_BUCKETS, over)] += 1
            m.ov_sum += over
        slot = int(end / WINDOW_SLOT)
        i = slot % WINDOW_SLOTS
        if m.win_slot[i] != slot:
            m.win_slot[i] = slot
            m.win_calls[i] = 0
            m.win_errors[i] = 0
            m.win_max[i] = 0.0
            m.win_fine[i] = [0] * _NFINE
        m.win_calls[i] += 1
        if code:
            m.win_errors[i] += 1
        m.win_fine[i][bisect.bisect_left(FINE_BOUNDS, total)] += 1
        m.win_max[i] = max(m.win_max[i], total)

    # -- reading

    def snapshot(self, now: Optional[float] = None) -> Dict[str, Any]:
        """The status document's ``calls`` part: per method, all-time counts and codes,
        and for the window (the last `WINDOW_SLOTS` * `WINDOW_SLOT` seconds) calls,
        errors, rate (calls/s) and latency percentiles p50/p90/p99 and max (seconds).
        Means of the runtime/relay split are included when the relay reports it."""
        now = self._clock() if now is None else now
        current = int(now / WINDOW_SLOT)
        oldest = current - WINDOW_SLOTS + 1
        # the window spans the full slots before the current one plus the current part
        span = (WINDOW_SLOTS - 1) * WINDOW_SLOT + (now - current * WINDOW_SLOT)
        span = min(span, now - self._started)
        out = []
        for m in list(self._by_name.values()):
            codes = dict(m.codes)
            calls = sum(codes.values())
            entry: Dict[str, Any] = {
                "method": m.name,
                "calls": calls,
                "errors": calls - codes.get(0, 0),
                "codes": {code_name(c): n for c, n in sorted(codes.items())},
                "mean_seconds": (m.sum / calls) if calls else None,
            }
            rt_calls = sum(m.rt_hist)
            if rt_calls:
                entry["runtime_mean_seconds"] = m.rt_sum / rt_calls
                entry["relay_mean_seconds"] = m.ov_sum / rt_calls
            fine = [0] * _NFINE
            wcalls = werrors = 0
            wmax = 0.0
            slots = list(m.win_slot)
            for i, slot in enumerate(slots):
                if oldest <= slot <= current:
                    counts = m.win_fine[i]
                    for j, n in enumerate(counts):
                        if n:
                            fine[j] += n
                    wcalls += m.win_calls[i]
                    werrors += m.win_errors[i]
                    wmax = max(wmax, m.win_max[i])
            window: Dict[str, Any] = {"calls": wcalls, "errors": werrors}
            window["rate"] = wcalls / span if span > 0 else 0.0
            total_fine = sum(fine)
            if total_fine:
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
                    window[name] = _percentile(fine, total_fine, q, wmax)
                window["max"] = wmax
            entry["window"] = window
            out.append(entry)
        out.sort(key=lambda e: (-e["window"]["calls"], -e["calls"], e["method"]))
        return {
            "window_seconds": WINDOW_SLOTS * WINDOW_SLOT,
            "since": self.since,
            "runtime_split": self.split,
            "methods": out,
        }

    def histograms(
        self,
    ) -> List[Tuple[str, Dict[int, int], List[int], float, List[int], float, List[int], float]]:
        """Copies per method: (name, codes, hist, sum, runtime hist, sum, overhead hist,
        sum); histograms are non-cumulative counts per `LATENCY_BUCKETS` bound + Inf."""
        return [
            (
                m.name,
                dict(m.codes),
                list(m.hist),
                m.sum,
                list(m.rt_hist),
                m.rt_sum,
                list(m.ov_hist),
                m.ov_sum,
            )
            for m in list(self._by_name.values())
        ]


# --- Prometheus ------------------------------------------------------------------------


def _cumulative(counts: Sequence[int], bounds: Sequence[str]) -> List[Tuple[str, float]]:
    """Prometheus buckets from non-cumulative counts; `bounds` as exposition text."""
    out = []
    acc = 0
    for bound, n in zip(bounds, counts):
        acc += n
        out.append((bound, float(acc)))
    acc += counts[len(bounds)]
    out.append(("+Inf", float(acc)))
    return out


def split_key(key: str) -> Tuple[str, str, str]:
    """``namespace/pod:container`` -> (namespace, pod, container)."""
    namespace, _, rest = key.partition("/")
    pod, _, name = rest.partition(":")
    return namespace, pod, name


class Metrics:
    """The Prometheus registry of one service; see the module docstring for the names.

    `stats` is the service's `CallStats`. `service` (optional) is read at scrape time for
    the gauges: any object with the attributes ``hooks`` (``status()`` -> the hooks'
    snapshot with ``pools`` and ``containers``), ``dump`` (``stats()``), ``relay``
    (``runtime_reachable()``, ``connections()``), ``config`` (``policy_name``) and
    ``started`` (wall seconds); each may be None or missing.

    Thread-safe: `decision`, `state_write` and `resync` may be called from any thread.
    """

    def __init__(self, stats: CallStats, service: Any = None, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: PLC0415

        self.stats = stats
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self._decisions = Counter(
            "cri_resmgr_policy_decisions",
            "Policy decisions by policy, operation (allocate, release, update, restore, "
            "reconfigure) and outcome (ok, failed; passed = the failed ones forwarded "
            "unmodified by on-error=pass, also counted as failed).",
            ["policy", "operation", "outcome"],
            registry=self.registry,
        )
        self._state_writes = Histogram(
            "cri_resmgr_state_write_duration_seconds",
            "Time to write the state file (serialize, write, fsync, rename).",
            buckets=STATE_WRITE_BUCKETS,
            registry=self.registry,
        )
        self._resync = Gauge(
            "cri_resmgr_resync_duration_seconds",
            "Duration of the last resync of the state with the runtime (at start-up).",
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    # -- fed by hooks and service

    def decision(self, policy: str, operation: str, outcome: str = "ok") -> None:
        """Count one policy call: `operation` allocate/release/update/restore/reconfigure,
        `outcome` ok, failed, or passed: of the failed ones, those whose request went
        to the runtime unmodified (on-error=pass); a passed decision also counts failed."""
        self._decisions.labels(policy, operation, outcome).inc()

    def state_write(self, seconds: float) -> None:
        """One state file write took `seconds`."""
        self._state_writes.observe(seconds)

    def resync(self, seconds: float) -> None:
        """The resync with the runtime took `seconds`."""
        self._resync.set(seconds)

    # -- output

    def render(self, accept: str = "") -> Tuple[bytes, str]:
        """(exposition bytes, content type) for an HTTP ``Accept`` header; blocking."""
        from prometheus_client import exposition  # noqa: PLC0415

        encoder, content_type = exposition.choose_encoder(accept)
        return encoder(self.registry), content_type

    def service_snapshot(self) -> Dict[str, Any]:
        """What the gauges need from the service (blocking: takes the hooks lock)."""
        svc = self.service
        out: Dict[str, Any] = {}
        if svc is None:
            return out
        hooks = getattr(svc, "hooks", None)
        if hooks is not None:
            try:
                out["policy"] = hooks.status()
            except Exception:  # noqa: BLE001 - a scrape must always answer
                log.exception("metrics: the hooks' status failed")
        dump = getattr(svc, "dump", None)
        if dump is not None and hasattr(dump, "stats"):
            out["dump"] = dump.stats()
        rel = getattr(svc, "relay", None)
        if rel is not None:
            out["runtime_reachable"] = bool(rel.runtime_reachable())
            out["connections"] = rel.connections()
        config = getattr(svc, "config", None)
        if config is not None:
            out["policy_name"] = config.policy_name
        started = getattr(svc, "started", None)
        if started is not None:
            out["started"] = started
        return out


class _Collector:
    """Renders `CallStats` and the service snapshot at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> List[Any]:
        return []  # unchecked: names are fixed and distinct from the registered ones

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        calls = CounterMetricFamily(
            "cri_resmgr_calls",
            "Finished CRI calls through the relay, by method and gRPC status code.",
            labels=["method", "code"],
        )
        total = HistogramMetricFamily(
            "cri_resmgr_call_duration_seconds",
            "Call duration as the relay sees it: request headers in to reply trailers out.",
            labels=["method"],
        )
        runtime = HistogramMetricFamily(
            "cri_resmgr_runtime_duration_seconds",
            "Time spent in the runtime: request forwarded to the first reply frame "
            "(calls whose timing the relay reports).",
            labels=["method"],
        )
        overhead = HistogramMetricFamily(
            "cri_resmgr_relay_overhead_seconds",
            "Time the relay added to a call: call duration minus time in the runtime.",
            labels=["method"],
        )
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415

        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS]
        for name, codes, hist, hsum, rt, rt_sum, ov, ov_sum in self.metrics.stats.histograms():
            for code, n in sorted(codes.items()):
                calls.add_metric([name, code_name(code)], n)
            total.add_metric([name], _cumulative(hist, bounds), hsum)
            if any(rt):
                runtime.add_metric([name], _cumulative(rt, bounds), rt_sum)
                overhead.add_metric([name], _cumulative(ov, bounds), ov_sum)
        yield calls
        yield total
        yield runtime
        yield overhead
        yield from self._service_families(GaugeMetricFamily, CounterMetricFamily)

    def _service_families(self, gauge: Any, counter: Any) -> Iterable[Any]:
        snap = self.metrics.service_snapshot()
        policy_name = snap.get("policy_name", "")
        info = gauge(
            "cri_resmgr_info",
            "cri-resmgr version and active policy (always 1).",
            labels=["version", "policy"],
        )
        info.add_metric([__version__, policy_name], 1)
        yield info
        if "started" in snap:
            yield gauge(
                "cri_resmgr_start_time_seconds",
                "When the service started (seconds since the epoch).",
                value=snap["started"],
            )
        if "runtime_reachable" in snap:
            yield gauge(
                "cri_resmgr_runtime_reachable",
                "1 when the last connection attempt to the runtime succeeded, else 0.",
                value=1 if snap["runtime_reachable"] else 0,
            )
            yield gauge(
                "cri_resmgr_relay_connections",
                "Client connections (kubelet, crictl, ...) open on the relay socket.",
                value=snap["connections"],
            )
        dump = snap.get("dump")
        if dump is not None:
            yield gauge(
                "cri_resmgr_dump_queue_depth",
                "Calls waiting in the dump queue for the writer.",
                value=dump.get("queued", 0),
            )
            yield counter(
                "cri_resmgr_dump_dropped",
                "Calls not dumped because the dump queue was full.",
                value=dump.get("dropped", 0),
            )
            yield counter(
                "cri_resmgr_dump_written",
                "Calls written to the dump.",
                value=dump.get("written", 0),
            )
            yield counter(
                "cri_resmgr_dump_write_failures",
                "Dump records that could not be written (I/O errors).",
                value=dump.get("failed", 0),
            )
        status = snap.get("policy")
        if status is None:
            return
        pools = gauge(
            "cri_resmgr_pool_cpus", "CPUs in each pool of the active policy.", labels=["pool"]
        )
        from cri_resmgr.resources.cpuset import CPUSet  # noqa: PLC0415

        for pool, cpus in sorted(status.get("pools", {}).items()):
            pools.add_metric([pool], len(CPUSet.parse(cpus)))
        yield pools
        exclusive = gauge(
            "cri_resmgr_container_exclusive_cpus",
            "CPUs a container owns exclusively (containers owning none are not listed).",
            labels=["namespace", "pod", "container"],
        )
        classes: Dict[str, int] = {}
        for c in status.get("containers", []):
            placement = c.get("placement") or {}
            cls = placement.get("class", "unplaced") if placement else "unplaced"
            classes[cls] = classes.get(cls, 0) + 1
            owned = len(CPUSet.parse(placement.get("exclusive") or "")) if placement else 0
            if owned:
                exclusive.add_metric(list(split_key(c.get("container", ""))), owned)
        yield exclusive
        per_class = gauge(
            "cri_resmgr_containers",
            "Containers known to the policy, by CPU class.",
            labels=["cpu_class"],
        )
        for cls, n in sorted(classes.items()):
            per_class.add_metric([cls], n)
        yield per_class
        state = status.get("state") or {}
        if state.get("last_save_seconds") is not None:
            yield gauge(
                "cri_resmgr_state_last_write_duration_seconds",
                "Duration of the last state file write.",
                value=state["last_save_seconds"],
            )


# --- the endpoint ------------------------------------------------------------------------


def parse_listen(listen: str) -> Tuple[str, Any]:
    """``[metrics] listen`` -> ("unix", path) or ("tcp", (host, port)); host without
    brackets, "" = every address. ValueError for anything else."""
    if listen.startswith("unix:"):
        return "unix", listen[len("unix:") :]
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics listen address {listen!r}: expected HOST:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "tcp", (host, int(port))


class MetricsServer:
    """``GET /metrics`` (also ``/``) on `listen` (see `parse_listen`), on the event loop.

    A unix socket gets mode `unix_mode` (0660: root and its group). The exposition is
    rendered in the loop's default executor so a scrape never stalls the relay.
    """

    def __init__(self, listen: str, metrics: Metrics, unix_mode: int = 0o660) -> None:
        self.listen = listen
        self.metrics = metrics
        self.unix_mode = unix_mode
        self._server: Optional[asyncio.base_events.Server] = None
        self._path: Optional[str] = None
        self.scrapes = 0

    async def start(self) -> None:
        kind, where = parse_listen(self.listen)
        if kind == "unix":
            self._path = where
            self._server = await control.start_unix_server(
                self._connection, where, self.unix_mode, key="[metrics] listen"
            )
        else:
            host, port = where
            self._server = await control.start_tcp_server(self._connection, host, port)
        log.info("metrics served on %s", self.address())

    def address(self) -> str:
        """Where it listens: ``unix:PATH`` or ``HOST:PORT`` with the real port."""
        if self._path is not None:
            return "unix:" + self._path
        if self._server is not None and self._server.sockets:
            host, port = self._server.sockets[0].getsockname()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.listen

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._path is not None:
            sockets.release(self._path)
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await control.serve_connection(reader, writer, http=self._http)

    async def _http(self, req: control.HttpRequest) -> control.HttpResponse:
        if req.path not in ("/", "/metrics"):
            return control.HttpResponse(
                404, "text/plain; charset=utf-8", b"metrics are at /metrics\n"
            )
        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(
            None, self.metrics.render, req.headers.get("accept", "")
        )
        self.scrapes += 1
        return control.HttpResponse(200, content_type, body)


def families_text(metrics: Metrics) -> str:
    """The exposition text (for tests and debugging)."""
    body, _ = metrics.render()
    return body.decode()
