"""The composition root and lifecycle of the cri-resmgr service.

Ownership: building every collaborator from the validated `Config` and passing it in
(config -> state -> topology -> policy -> hooks -> dump -> relay), the start-up order
(one instance per socket, runtime answers, state restored and resynced, *then* the
relay socket appears), signals (SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1 debug
toggle, SIGUSR2 dump summary), systemd readiness (`sd_notify`), `-daemon`, and the
shutdown in reverse order.

Nothing here touches a CRI message; see relay.py and hooks.py for that.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from cri_resmgr import config as cfg
from cri_resmgr import logs, relay, sockets
from cri_resmgr.errors import ConfigError, Error
from cri_resmgr.version import __version__

log = logging.getLogger(__name__)

Overrides = Dict[Tuple[str, str], str]


class ServiceError(Error):
    """The service cannot start (another instance runs, a path is unusable, ...)."""


# --- systemd readiness -----------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's notify socket; False if none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False


# --- one instance per relay socket ----------------------------------------------


def _path_hint(exc: OSError) -> str:
    """What to do about an OSError on a path the configuration names."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "; a file stands where a directory belongs on that path"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "; choose a writable place"
    return ""


class InstanceLock:
    """An exclusive `flock` on a lock file that holds our pid for operators.

    Two guard a service: `<relay socket>.lock` (one instance per socket) and, with a
    policy, `<state-dir>/lock` (one instance per state: two would overwrite each
    other's state and re-place each other's containers)."""

    def __init__(self, path: str, what: str, key: str, dir_mode: int = 0o755) -> None:
        self.path = path
        self.what = what  # "serves SOCKET", "uses the state directory DIR"
        self.key = key  # the setting the path comes from, for messages
        self.dir_mode = dir_mode  # of the lock's directory when it is created
        self.fd: Optional[int] = None

    @classmethod
    def for_socket(cls, socket_path: str) -> InstanceLock:
        return cls(socket_path + ".lock", f"serves {socket_path}", "[relay] socket")

    @classmethod
    def for_state(cls, state_dir: str) -> InstanceLock:
        from cri_resmgr.state import DIR_MODE  # noqa: PLC0415

        return cls(
            os.path.join(state_dir, "lock"),
            f"uses the state directory {state_dir}",
            "[relay] state-dir",
            DIR_MODE,
        )

    def acquire(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=self.dir_mode, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ServiceError(
                f"cannot create lock {self.path} (set by {self.key}): "
                f"{exc.strerror or exc}{_path_hint(exc)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ServiceError(
                    f"another cri-resmgr (pid {holder}) already {self.what}; "
                    f"lock {self.path} is held"
                ) from None
            raise ServiceError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (harmless)
            self.fd = None


# --- the service -------------------------------------------------------------------


class Service:
    """One run of the service: `await run()` until a stop signal."""

    def __init__(self, config: cfg.Config, overrides: Overrides, logging_: logs.Logging) -> None:
        self.config = config
        self.overrides = overrides
        self.logging = logging_
        self.pending_restart: List[cfg.Change] = []
        self.runtime_version = ""  # "containerd 1.6.20" once the runtime answered
        self.started = time.time()
        self.relay: Optional[relay.Relay] = None
        self.dump: Any = None
        self.hooks: Any = None
        self.policy: Any = None
        self.topology: Any = None
        self.stopping: Optional[asyncio.Event] = None
        self.lock = InstanceLock.for_socket(config.get("relay", "socket"))
        self.state_lock: Optional[InstanceLock] = None  # with a policy: see _load_policy
        self._cancel_wait = threading.Event()
        self._reload_lock: Optional[asyncio.Lock] = None  # made on the loop (python 3.9)
        self._tasks: Set[asyncio.Task] = set()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        # status endpoint and metrics: see _start_endpoints
        self.call_stats: Any = None
        self.metrics: Any = None
        self.control: Any = None
        self.metrics_server: Any = None

    # -- start-up

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        # A relay socket path that can never work is refused before its lock file is
        # made next to it (-relay-socket /etc/passwd must not create /etc/passwd.lock).
        sockets.check_path(self.config.get("relay", "socket"), "[relay] socket (-relay-socket)")
        self.lock.acquire()
        try:
            # Another program's live socket there is an error now, not after the wait
            # for the runtime (listen() checks again when it binds).
            sockets.check_stale(
                self.config.get("relay", "socket"), "stop it or choose another -relay-socket"
            )
            self._install_signals()
            log.info(
                "cri-resmgr %s starting: policy %s, runtime %s",
                __version__,
                self.config.policy_name,
                self.config.get("runtime", "runtime-socket"),
            )
            try:
                started = await self._start()
            except BaseException:
                await self._shutdown()  # what did start (dump process, hooks) ends too
                raise
            if started:
                sd_notify("READY=1")
                log.info("ready: kubelet can use unix://%s", self.config.get("relay", "socket"))
                await self.stopping.wait()
            sd_notify("STOPPING=1")
            await self._shutdown()
            return 0
        finally:
            await self._stop_endpoints()
            if self.state_lock is not None:
                self.state_lock.release()
            self.lock.release()

    async def _start(self) -> bool:
        """Everything before the socket opens. False if a stop came first."""
        loop = asyncio.get_running_loop()
        runtime = self.config.get("runtime", "runtime-socket")
        await self._start_endpoints()  # status answers "starting" while we wait
        # A configuration this machine cannot hold is an error now, not after a wait
        # for a runtime that may never come.
        await loop.run_in_executor(None, self._load_policy)
        try:
            await loop.run_in_executor(None, self._wait_runtime, runtime)
        except _Cancelled:
            return False
        await loop.run_in_executor(None, self._build_hooks)
        if self.stopping is not None and self.stopping.is_set():
            return False  # stopped during restore/resync: never open the socket
        self.dump = self._build_dump()
        observers = [o for o in (self.dump, self.call_stats) if o is not None]
        hooks = self.hooks.table() if self.hooks is not None else {}
        self.relay = relay.Relay(
            runtime,
            self.config.get("runtime", "image-socket"),
            hooks=hooks,
            observers=observers,
        )
        await self.relay.start(self.config.get("relay", "socket"), mode=0o660, owner_of=runtime)
        return True

    def _wait_runtime(self, address: str) -> None:
        def sleep(seconds: float) -> None:
            if self._cancel_wait.wait(seconds):
                raise _Cancelled()

        self.runtime_version = relay.wait_for_runtime(address, sleep=sleep)

    def _load_policy(self) -> None:
        """Topology and policy, checked against this machine; the state directory's
        lock. Nothing here needs the runtime."""
        name = self.config.policy_name
        if name == "none":
            return
        from cri_resmgr.resources import topology  # noqa: PLC0415 - only with a policy

        self.topology = topology.load(self.config.get("host", "sysfs-root"))
        log.info("topology: %s", self.topology.summary())
        cls, reserved = self._check_policy(self.config)
        self.state_lock = InstanceLock.for_state(self.config.get("relay", "state-dir"))
        self.state_lock.acquire()
        self.policy = cls(self.topology, reserved, self.config.policy_options(name))

    def _build_hooks(self) -> None:
        """State and hooks; restore and resync before serving (the runtime answers)."""
        if self.policy is None:
            return
        from cri_resmgr import hooks, state  # noqa: PLC0415 - only with a policy
        from cri_resmgr.cri.client import CriClient  # noqa: PLC0415

        name = self.config.policy_name
        store = state.State.load(
            self.config.get("relay", "state-dir"),
            name,
            disable_policy_switch=self.config.get("policy", "disable-policy-switch"),
        )
        client = CriClient(self.config.get("runtime", "runtime-socket"))
        self.hooks = hooks.Hooks(self.policy, store, client, self.config, metrics=self.metrics)
        started = time.monotonic()
        self.hooks.resync()  # logs what it did
        if self.metrics is not None:
            self.metrics.resync(time.monotonic() - started)

    def _check_policy(self, config: cfg.Config) -> Tuple[Any, Any]:
        """The policy class and reserved CPUs of `config`, checked against this machine
        (`policy.checked`); raises ConfigError naming file, line and key."""
        from cri_resmgr import policy  # noqa: PLC0415

        return policy.checked(self.topology, config)

    def _build_dump(self) -> Any:
        from cri_resmgr import dumpproc  # noqa: PLC0415
        from cri_resmgr.dump import DumpError  # noqa: PLC0415

        # Formatting runs in a child process: a writer thread here would take the
        # interpreter lock from the relay (docs/performance.md).
        rules, path = self.config.dump_rules, self.config.get("dump", "file") or None
        d = dumpproc.ProcessDump(rules, path)
        try:
            d.start()
        except DumpError as exc:
            # A debugging aid must not keep the node's pods from starting: the relay
            # serves, the dump goes to the log, and a SIGHUP tries the file again.
            log.error("%s; the dump goes to the log until a reload can open it", exc)
            d = dumpproc.ProcessDump(rules, None)
            d.start()
        return d

    # -- signals

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handlers: Dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.stop,
            signal.SIGINT: self.stop,
            signal.SIGHUP: self._on_sighup,
            signal.SIGUSR1: self._toggle_debug,
            signal.SIGUSR2: self._dump_summary,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)

    def stop(self) -> None:
        if self.stopping is not None and not self.stopping.is_set():
            log.info("stop requested")
            self._cancel_wait.set()
            self.stopping.set()

    def _toggle_debug(self) -> None:
        on = self.logging.toggle_debug()
        if self.dump is not None:
            self.dump.set_log_level()  # the dump's writer process too
        log.warning("debug logging for all modules %s (SIGUSR1)", "on" if on else "off")

    def _dump_summary(self) -> None:
        if self.dump is not None:
            self.dump.write_summary()

    def _on_sighup(self) -> None:
        """Keep the task (its errors are logged) and run reloads one after the other."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        """SIGHUP: validate the whole new configuration, then apply what can change live.

        Keys that need a restart keep their running values (and are reported); an
        invalid configuration changes nothing. systemd hears READY=1 in every case.
        """
        assert self._reload_lock is not None
        async with self._reload_lock:
            sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                await self._reload()
            except Exception:  # noqa: BLE001 - a failed reload must not end the service
                log.exception("reload failed; the running configuration stays in force")
            finally:
                sd_notify("READY=1")

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, cfg.load, self.config.config_dir, self.overrides)
            if self.topology is not None:
                # The whole new configuration must fit this machine (e.g. balloon types),
                # even where it only takes effect at the next restart: say so now.
                await loop.run_in_executor(None, self._check_policy, new)
            effective, live, restart = cfg.after_reload(self.config, new)
        except ConfigError as exc:
            log.error("reload: configuration rejected, keeping the running one:\n%s", exc)
            if self.dump is not None:
                self.dump.reopen()
            return
        for change in restart:
            log.warning(
                "reload: [%s] %s changed (%s -> %s): needs a restart; keeping %s",
                change.section,
                change.key,
                change.old,
                change.new,
                change.old,
            )
        await self._apply_live(effective, live)
        self.pending_restart = list(restart)
        self.config = effective
        log.info("reload: %d live changes applied, %d need a restart", len(live), len(restart))

    async def _apply_live(self, new: cfg.Config, live: List[cfg.Change]) -> None:
        sections = {c.section for c in live}
        if "log" in sections:
            self.logging.configure(new.get("log", "level"), new.get("log", "debug"))
            if self.dump is not None:
                self.dump.set_log_level()
        if self.dump is not None:
            if "dump" in sections:
                self.dump.set_rules(new.dump_rules)
                self.dump.set_path(new.get("dump", "file") or None)  # reopens
                if self.relay is not None:
                    self.relay.set_observers(
                        [o for o in (self.dump, self.call_stats) if o is not None]
                    )
            else:
                # Every SIGHUP reopens the file (logrotate moved it away), and tries
                # again a configured file that could not be opened before.
                self.dump.set_path(new.get("dump", "file") or None)
        # `new` is the effective config: its policy name is the running policy's
        policy_section = f"policy.{new.policy_name}"
        if self.hooks is not None and policy_section in sections:
            options = new.policy_options(new.policy_name)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.hooks.reconfigure, options)

    # -- status endpoint and metrics (cri_resmgr.control, .status, .metrics; docs/status.md)

    async def _start_endpoints(self) -> None:
        """The control socket (always) and the metrics endpoint (``[metrics] listen``).

        Neither is worth failing the relay for: a problem is logged and the service runs
        without that endpoint. `call_stats` (a relay observer) exists either way;
        `metrics` (what hooks and the service feed: decision, state_write, resync) only
        with ``[metrics] listen``.
        """
        from cri_resmgr import control, metrics, status  # noqa: PLC0415

        self.call_stats = metrics.CallStats()  # for `cri-resmgr status`, always
        listen = self.config.get("metrics", "listen")
        # The Prometheus side (and what hooks feed it) only when it is served.
        self.metrics = metrics.Metrics(self.call_stats, service=self) if listen else None
        server = control.ControlServer(
            self.config.get("relay", "control-socket"), status.Source(self).handlers()
        )
        try:
            await server.start()
            self.control = server
        except (Error, OSError) as exc:
            log.error("no status endpoint (cri-resmgr status will not work): %s", exc)
        if listen and self.metrics is not None:
            exporter = metrics.MetricsServer(listen, self.metrics)
            try:
                await exporter.start()
                self.metrics_server = exporter
            except (Error, OSError, ValueError) as exc:
                log.error("no metrics endpoint on %s: %s", listen, exc)

    async def _stop_endpoints(self) -> None:
        for server in (self.metrics_server, self.control):
            if server is not None:
                await server.stop()
        self.metrics_server = self.control = None

    # -- shutdown

    async def _shutdown(self) -> None:
        """Reverse order of start: relay (in-flight calls get the grace period), then
        hooks (final state save), then the dump; blocking parts off the event loop."""
        grace = float(self.config.get("relay", "grace-period"))
        # systemd's TimeoutStopSec may be shorter than a long grace period
        sd_notify(f"EXTEND_TIMEOUT_USEC={int((grace + 30) * 1e6)}")
        loop = asyncio.get_running_loop()
        if self.relay is not None:
            await self.relay.stop(grace)
        if self.hooks is not None:
            await loop.run_in_executor(None, self.hooks.close)
        if self.dump is not None:
            await loop.run_in_executor(None, self.dump.stop)
        log.info("stopped")


class _Cancelled(Exception):
    """A stop signal arrived while the service was still starting."""


def _daemonize(config: cfg.Config) -> Any:
    """Detach (python-daemon): before any thread or gRPC object exists."""
    import daemon  # noqa: PLC0415 - only for -daemon
    import daemon.pidfile  # noqa: PLC0415

    log_file = config.get("daemon", "log-file")
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stream = os.fdopen(fd, "a", buffering=1)
    pid_file = config.get("daemon", "pid-file")
    os.makedirs(os.path.dirname(pid_file), exist_ok=True)
    _check_pid_file(pid_file)  # before detaching: the caller still gets the error
    context = daemon.DaemonContext(
        pidfile=daemon.pidfile.TimeoutPIDLockFile(pid_file, acquire_timeout=1),
        stdout=stream,
        stderr=stream,
        files_preserve=[stream],
        umask=0o022,
        detach_process=True,
    )
    try:
        context.open()
    except Exception as exc:  # lockfile.LockTimeout, AlreadyLocked, OSError
        raise ServiceError(
            f"cannot take the pid file {pid_file} ([daemon] pid-file, -pid-file): "
            f"{type(exc).__name__}: {exc}; is another cri-resmgr -daemon running?"
        ) from None
    return context


def _check_pid_file(path: str) -> None:
    """Refuse when `path` names a live process; remove it when that process is gone."""
    import lockfile.pidlockfile  # noqa: PLC0415 - only for -daemon

    pid = lockfile.pidlockfile.read_pid_from_pidfile(path)
    if pid is None:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.warning("removing stale pid file %s (process %d is gone)", path, pid)
        lockfile.pidlockfile.remove_existing_pidfile(path)
        return
    except PermissionError:
        pass  # alive, someone else's
    raise ServiceError(
        f"pid file {path} ([daemon] pid-file, -pid-file) names process {pid}, which is "
        "running: is another cri-resmgr -daemon running? stop it or choose another pid file"
    )


def run(config: cfg.Config, overrides: Overrides, daemon: bool = False) -> int:
    """Run the service until stopped; the exit status for the process."""
    try:
        context = _daemonize(config) if daemon else None
    except Error as exc:
        print(f"cri-resmgr: {exc}", file=sys.stderr)
        return 1
    logging_ = logs.Logging()
    logging_.configure(config.get("log", "level"), config.get("log", "debug"))
    try:
        return asyncio.run(Service(config, overrides, logging_).run())
    except Error as exc:
        log.error("%s", exc)
        return 1
    finally:
        if context is not None:
            context.close()
