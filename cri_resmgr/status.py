"""``cri-resmgr status``: what the running service is doing, and the status document.

Ownership: the status document (its JSON shape, `FORMAT`), gathering it inside the
service (`Source`, whose handlers the service gives to `control.ControlServer`), and
the ``status`` sub-command: it finds the control socket through the same configuration
and flags as the service (``-config-dir``, ``-relay-socket``, ...), asks for the
document and prints it for people (a header, the CPU map of `cpumap`, the busiest
methods), as JSON (``--json``) or as an SVG picture (``--svg FILE``).

The document (all times in seconds, wall times since the epoch, CPU sets in list
syntax, memory in bytes, CPU amounts in milli-CPUs)::

    format, version, pid, state (starting | running | stopping), started, now, uptime
    relay:    socket, control_socket, connections
    runtime:  socket, image_socket, reachable, version
    config:   dir, files, pending_restart [{section, key, old, new}],
              settings {section: {key: {value, source}}}
    policy:   name, options, reserved, on_error, creating, state {path, last_save, ...}
    pods:     [{id, name, namespace, uid, qos}]
    containers: [{id, name (namespace/pod:container), namespace, pod, container, pod_id,
                  qos, cpu_request, cpu_limit, memory_limit, cpus, mems, class, pool,
                  exclusive, cpu_shares, stopped, update_pending}]
    pools:    {name: {cpus, size}}
    topology: cpumap.Layout.to_json() (socket > die > node > core > thread)
    calls:    metrics.CallStats.snapshot() (per method: calls, errors, codes, window
              calls/errors/rate and p50/p90/p99/max over the last 5 minutes)
    dump:     {queued, written, dropped, failed} or null;  metrics: {listen} or null

Exit status of the command: 0 answered; 1 the service is not running or did not
answer (one line on stderr says which); 2 bad flags or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO

from cri_resmgr import config as cfg
from cri_resmgr import control, cpumap, metrics
from cri_resmgr.errors import ConfigError
from cri_resmgr.version import __version__

__all__ = ["FORMAT", "Source", "config_json", "main", "render"]

log = logging.getLogger(__name__)

FORMAT = 1  # version of the document's shape; bumped on incompatible changes
POLICY_TIMEOUT = 10.0  # seconds to wait for the hooks' snapshot (their lock)
PROG = "cri-resmgr status"


# --- gathering (inside the service) ----------------------------------------------------


def config_json(config: cfg.Config) -> Dict[str, Any]:
    """Files, directory and every key's effective value (as text) and source."""
    settings: Dict[str, Dict[str, Dict[str, str]]] = {}
    types: Dict[str, Dict[str, Any]] = {}
    for (section, key), setting in config.settings.items():
        if section not in types:
            types[section] = {k.name: k.type for k in cfg.keys_of(section)}
        ktype = types[section].get(key)
        try:
            text = ktype.format(setting.value) if ktype is not None else str(setting.value)
        except Exception:  # noqa: BLE001 - show something rather than nothing
            text = str(setting.value)
        settings.setdefault(section, {})[key] = {"value": text, "source": setting.source}
    return {"dir": config.config_dir, "files": list(config.files), "settings": settings}


def containers_json(policy_status: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The hooks' container entries, flattened: placement fields at the top level."""
    out = []
    for c in policy_status.get("containers", []):
        key = c.get("container", "")
        namespace, pod, name = metrics.split_key(key)
        placement = c.get("placement") or {}
        out.append(
            {
                "id": c.get("id", ""),
                "name": key,
                "namespace": namespace,
                "pod": pod,
                "container": name,
                "pod_id": c.get("pod_id", ""),
                "qos": c.get("qos", ""),
                "cpu_request": c.get("cpu_request", 0),
                "cpu_limit": c.get("cpu_limit", 0),
                "memory_limit": c.get("memory_limit", 0),
                "cpus": placement.get("cpus"),
                "mems": placement.get("mems"),
                "class": placement.get("class"),
                "pool": placement.get("pool"),
                "exclusive": placement.get("exclusive"),
                "cpu_shares": placement.get("cpu_shares"),
                "stopped": bool(c.get("stopped", False)),
                "update_pending": bool(c.get("update_pending", False)),
            }
        )
    return out


def pods_json(policy_status: Mapping[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for p in policy_status.get("pods", []):
        namespace, _, name = p.get("pod", "").partition("/")
        out.append(
            {
                "id": p.get("id", ""),
                "name": name,
                "namespace": namespace,
                "uid": p.get("uid", ""),
                "qos": p.get("qos", ""),
                "cgroup_parent": p.get("cgroup_parent", ""),
            }
        )
    return out


def pools_json(pools: Mapping[str, str]) -> Dict[str, Dict[str, Any]]:
    from cri_resmgr.resources.cpuset import CPUSet  # noqa: PLC0415

    return {name: {"cpus": cpus, "size": len(CPUSet.parse(cpus))} for name, cpus in pools.items()}


class Source:
    """The service's side: `handlers()` for `control.ControlServer`.

    `service` is read when a request comes (it changes on reload): ``config``,
    ``started`` (wall), ``relay``, ``hooks``, ``topology``, ``dump``, ``call_stats``,
    ``metrics_server`` (``address()``), ``pending_restart``, ``stopping``
    (asyncio.Event) and optionally ``runtime_version``; any may be None or missing.
    The topology is loaded here (once, in a worker thread) when the service has none
    (policy none).
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self._layout: Optional[Dict[str, Any]] = None
        self._layout_error: Optional[str] = None

    def handlers(self) -> Dict[str, control.Handler]:
        return {"status": self.status, "ping": self.ping}

    async def ping(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    async def _topology(self, loop: asyncio.AbstractEventLoop) -> Optional[Dict[str, Any]]:
        topology = getattr(self.service, "topology", None)
        if topology is not None:
            if self._layout is None or self._layout_error is not None:
                self._layout = cpumap.Layout.from_topology(topology).to_json()
                self._layout_error = None
            return self._layout
        if self._layout is None and self._layout_error is None:
            config = self.service.config
            try:
                from cri_resmgr.resources import topology as topo  # noqa: PLC0415

                loaded = await loop.run_in_executor(
                    None, topo.load, config.get("host", "sysfs-root")
                )
                self._layout = cpumap.Layout.from_topology(loaded).to_json()
            except Exception as exc:  # noqa: BLE001 - status answers without a map
                self._layout_error = str(exc)
        return self._layout

    async def status(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The whole document (see the module docstring)."""
        loop = asyncio.get_running_loop()
        svc = self.service
        config: cfg.Config = svc.config
        now = time.time()
        started = getattr(svc, "started", now)
        rel = getattr(svc, "relay", None)
        hooks = getattr(svc, "hooks", None)
        stopping = getattr(svc, "stopping", None)
        if stopping is not None and stopping.is_set():
            state = "stopping"
        elif rel is None:
            state = "starting"
        else:
            state = "running"

        policy: Dict[str, Any] = {
            "name": config.policy_name,
            "options": _plain(config.policy_options(config.policy_name)),
        }
        policy_status: Dict[str, Any] = {}
        if hooks is not None:
            try:
                policy_status = await asyncio.wait_for(
                    loop.run_in_executor(None, hooks.status), POLICY_TIMEOUT
                )
            except asyncio.TimeoutError:
                policy["error"] = f"the policy did not answer within {POLICY_TIMEOUT:g}s (busy)"
            except Exception as exc:  # noqa: BLE001 - status must always answer
                log.exception("status: the hooks' snapshot failed")
                policy["error"] = f"{type(exc).__name__}: {exc}"
        for key in ("reserved", "on_error", "creating", "state"):
            if key in policy_status:
                policy[key] = policy_status[key]

        dump = getattr(svc, "dump", None)
        stats = getattr(svc, "call_stats", None)
        metrics_server = getattr(svc, "metrics_server", None)
        topology = await self._topology(loop)
        doc: Dict[str, Any] = {
            "format": FORMAT,
            "version": __version__,
            "pid": os.getpid(),
            "state": state,
            "started": started,
            "now": now,
            "uptime": max(0.0, now - started),
            "relay": {
                "socket": config.get("relay", "socket"),
                "control_socket": config.get("relay", "control-socket"),
                "connections": rel.connections() if rel is not None else 0,
            },
            "runtime": {
                "socket": config.get("runtime", "runtime-socket"),
                "image_socket": config.get("runtime", "image-socket"),
                "reachable": bool(rel.runtime_reachable()) if rel is not None else None,
                "version": getattr(svc, "runtime_version", None),
            },
            "config": {
                **config_json(config),
                "pending_restart": [
                    {"section": c.section, "key": c.key, "old": str(c.old), "new": str(c.new)}
                    for c in getattr(svc, "pending_restart", []) or []
                ],
            },
            "policy": policy,
            "pods": pods_json(policy_status),
            "containers": containers_json(policy_status),
            "pools": pools_json(policy_status.get("pools", {})),
            "topology": topology,
            "calls": await loop.run_in_executor(None, stats.snapshot)
            if stats is not None
            else None,  # a few ms with many methods: not on the relay's loop
            "dump": dump.stats() if dump is not None and hasattr(dump, "stats") else None,
            "metrics": {"listen": metrics_server.address()} if metrics_server is not None else None,
        }
        if self._layout_error is not None:
            doc["topology_error"] = self._layout_error
        return doc


def _plain(value: Any) -> Any:
    """Configuration values as JSON: mappings and sequences kept, the rest as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --- rendering ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """``42s``, ``5m07s``, ``2h03m``, ``3d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _latency(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _header(doc: Mapping[str, Any]) -> List[str]:
    lines = [
        f"cri-resmgr {doc.get('version', '?')} (pid {doc.get('pid', '?')}): "
        f"{doc.get('state', '?')}, up {_duration(doc.get('uptime', 0))}"
    ]
    rel = doc.get("relay") or {}
    conns = rel.get("connections", 0)
    lines.append(
        f"  relay     {rel.get('socket', '?')}, {conns} client connection"
        + ("" if conns == 1 else "s")
    )
    rt = doc.get("runtime") or {}
    reach = rt.get("reachable")
    state = {True: "reachable", False: "NOT REACHABLE", None: "not connected yet"}[reach]
    version = f" ({rt['version']})" if rt.get("version") else ""
    lines.append(f"  runtime   {rt.get('socket', '?')}: {state}{version}")
    policy = doc.get("policy") or {}
    containers = [c for c in doc.get("containers", []) if not c.get("stopped")]
    classes: Dict[str, int] = {}
    for c in containers:
        cls = c.get("class") or "unplaced"
        classes[cls] = classes.get(cls, 0) + 1
    parts = [policy.get("name", "?")]
    if policy.get("reserved"):
        parts.append(f"reserved CPUs {policy['reserved']}")
    if policy.get("on_error"):
        parts.append(f"on-error {policy['on_error']}")
    summary = ", ".join(f"{n} {cls}" for cls, n in sorted(classes.items()))
    line = f"  policy    {'; '.join(parts)}; {len(doc.get('pods', []))} pods, "
    line += f"{len(containers)} containers" + (f" ({summary})" if summary else "")
    lines.append(line)
    if policy.get("error"):
        lines.append(f"  policy    error: {policy['error']}")
    pools = doc.get("pools") or {}
    if pools:
        lines.append(
            "  pools     "
            + ", ".join(f"{name} {p['cpus'] or '-'} ({p['size']})" for name, p in pools.items())
        )
    conf = doc.get("config") or {}
    files = conf.get("files", [])
    text = f"  config    {conf.get('dir') or '(none)'}: "
    text += ", ".join(os.path.basename(f) for f in files) if files else "no files"
    pending = conf.get("pending_restart") or []
    if pending:
        text += "; restart needed for " + ", ".join(f"[{c['section']}] {c['key']}" for c in pending)
    lines.append(text)
    metrics = doc.get("metrics")
    lines.append(f"  metrics   {metrics['listen'] if metrics else 'off'}")
    dump = doc.get("dump")
    if dump:
        lines.append(
            f"  dump      {dump.get('written', 0)} written, {dump.get('queued', 0)} queued, "
            f"{dump.get('dropped', 0)} dropped, {dump.get('failed', 0)} failed"
        )
    st = (policy.get("state") or {}) if isinstance(policy.get("state"), Mapping) else {}
    if st.get("path"):
        saved = ""
        if st.get("last_save") is not None:
            ago = max(0.0, doc.get("now", time.time()) - st["last_save"])
            saved = f", saved {_duration(ago)} ago"
            if st.get("last_save_seconds") is not None:
                saved += f" in {_latency(st['last_save_seconds'])}"
        lines.append(f"  state     {st['path']}{saved}")
    return lines


def _methods(doc: Mapping[str, Any], top: int) -> List[str]:
    calls = doc.get("calls") or {}
    methods = calls.get("methods") or []
    if not methods:
        return ["no calls yet"]
    minutes = calls.get("window_seconds", 300) / 60
    lines = [
        f"busiest methods (last {minutes:g} min)",
        f"  {'method':<28}{'calls':>8}{'errors':>8}{'rate/s':>9}{'p50':>9}{'p90':>9}"
        f"{'p99':>9}{'max':>9}{'total':>9}",
    ]
    for m in methods[:top]:
        w = m.get("window") or {}
        lines.append(
            f"  {m['method']:<28}{w.get('calls', 0):>8}{w.get('errors', 0):>8}"
            f"{w.get('rate', 0.0):>9.2f}{_latency(w.get('p50')):>9}{_latency(w.get('p90')):>9}"
            f"{_latency(w.get('p99')):>9}{_latency(w.get('max')):>9}{m.get('calls', 0):>9}"
        )
    return lines


def render(doc: Mapping[str, Any], width: int = 100, top: int = 8) -> str:
    """The document for people: header, CPU map with legend, busiest methods."""
    lines = _header(doc)
    lines.append("")
    if doc.get("topology"):
        layout, ownership = cpumap.ownership_from_status(doc)
        lines.append(cpumap.render_text(layout, ownership, width).rstrip("\n"))
    else:
        lines.append(f"no CPU map: {doc.get('topology_error') or 'topology unknown'}")
    lines.append("")
    lines.extend(_methods(doc, top))
    return "\n".join(lines) + "\n"


def svg(doc: Mapping[str, Any]) -> str:
    """The CPU map of a status document as SVG."""
    layout, ownership = cpumap.ownership_from_status(doc)
    policy = (doc.get("policy") or {}).get("name", "?")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc.get("now", time.time())))
    title = f"cri-resmgr status: policy {policy}, {when}"
    return cpumap.render_svg(layout, ownership, title)


# --- the command ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Show what the running cri-resmgr is doing: runtime, policy, a map of which "
            "container owns which CPU, and the busiest CRI methods. The service is found "
            "through the same configuration and flags it runs with (-config-dir, "
            "-relay-socket; its other flags are accepted and only used to find it)."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument("--svg", metavar="FILE", help="write the CPU map as an SVG picture")
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        default=cfg.DEFAULT_CONFIG_DIR,
        type=cfg.unquote,
        help="the service's configuration directory (default %(default)s)",
    )
    parser.add_argument(
        "--control-socket",
        metavar="PATH",
        help="ask this control socket (default: [relay] control-socket of the configuration)",
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the answer"
    )
    parser.add_argument("--top", type=int, default=8, help="how many methods to list")
    parser.add_argument("--width", type=int, default=0, help="line width (default: terminal)")
    # The service's flags: its relay socket finds its control socket.
    cfg.add_config_flags(parser, show=("relay-socket",))
    return parser


def control_socket(args: argparse.Namespace, err: TextIO) -> str:
    """Where the service's control socket is, from the flags and the configuration."""
    if args.control_socket:
        return str(args.control_socket)
    overrides = cfg.flag_overrides(args)
    try:
        config = cfg.load(args.config_dir, overrides)
        return str(config.get("relay", "control-socket"))
    except ConfigError as exc:
        relay_socket = overrides.get(("relay", "socket")) or cfg.default_config().get(
            "relay", "socket"
        )
        path = cfg.default_control_socket(relay_socket)
        print(
            f"{PROG}: configuration has {len(exc.problems)} problem(s) "
            f"(cri-resmgr config check); trying {path}",
            file=err,
        )
        return path


def main(
    argv: Optional[Sequence[str]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    """The ``status`` sub-command; the exit status (see the module docstring)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    path = control_socket(args, err)
    try:
        doc = control.request(path, "status", timeout=args.timeout)
    except control.ControlError as exc:
        print(str(exc), file=err)
        return 1
    if not isinstance(doc, dict):
        print(f"{PROG}: unexpected answer from {path}", file=err)
        return 1
    if args.svg:
        try:
            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(svg(doc))
        except OSError as exc:
            print(f"{PROG}: cannot write {args.svg}: {exc.strerror}", file=err)
            return 2
    if args.json:
        out.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    elif not args.svg:
        width = args.width or shutil.get_terminal_size((100, 24)).columns
        out.write(render(doc, width=width, top=args.top))
    else:
        out.write(f"wrote {args.svg}\n")
    return 0
