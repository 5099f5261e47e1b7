"""A throwaway real containerd with private paths, for end-to-end tests and the demo.

Owns one `containerd` daemon per `Containerd` object and everything it leaves on the
host: a private directory (config, log, root, state, runc root, CNI config, temp) under
`base_dir()`, shim processes, mounts under that directory, and, with `network=True`, a
CNI bridge, its `iptables` FORWARD rules and the `net.ipv4.ip_forward` value.

Facts this relies on (see /work/shared/containerd-notes.md): the CRI plugin must run
with `restrict_oom_score_adj = true` on these machines; the sandbox image is imported
locally under the exact `sandbox_image` name so RunPodSandbox never pulls. Every
registry is redirected (`registry.config_path`, `_default/hosts.toml`) to an in-process
`harness.registry.Registry` serving the harness images (or to a closed port), so pulls
never leave the machine.

Teardown (`stop()`) never leaves processes, mounts or rules behind: it removes all pods
through CRI while the daemon still answers, stops the daemon by pid, force-deletes any
container left in its runc root, kills its shims by pid (`containerd-shim-* -address
SOCKET`), lazily unmounts everything under its directory (from /proc/self/mountinfo),
removes cgroup directories that appeared under the watched cgroup roots while it ran,
undoes the network changes and deletes the directory. `cleanup_stale()` (called by
every `start()`) does the same for directories whose owner process is gone, so a
killed test run does not break the next one.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import grpc

from harness import images as _images
from harness import wire
from harness.registry import Registry

log = logging.getLogger(__name__)

CRI_NAMESPACE = _images.CRI_NAMESPACE
SANDBOX_IMAGE = _images.PAUSE_REF
CNI_BIN_DIR = "/usr/lib/cni"
CNI_CACHE_RESULTS = "/var/lib/cni/results"
DEFAULT_CGROUP_ROOTS = ("k8s.io", "kubepods")
"""Top-level cgroup directories whose new sub-directories a stopped instance removes."""

_OWNER = "owner.json"
_CGROUPS = "cgroups.json"
_MNT_DETACH = 2
MAX_SOCKET_PATH = 104  # containerd refuses longer unix socket paths (for its .ttrpc one)
_live: set[Containerd] = set()


class HarnessError(RuntimeError):
    """The harness could not start, import images or clean up; the message says why."""


def base_dir() -> Path:
    """Where instance directories live: `$CRI_RESMGR_HARNESS_RUN` or /tmp/cri-resmgr-harness."""
    return Path(os.environ.get("CRI_RESMGR_HARNESS_RUN") or "/tmp/cri-resmgr-harness")


def missing_dependencies() -> list[str]:
    """Executables the harness needs that are not installed (empty when all are there)."""
    need = ["containerd", "ctr", "runc", "containerd-shim-runc-v2", "gcc"]
    missing = [name for name in need if shutil.which(name) is None]
    if not os.path.exists(_images.BUSYBOX_BINARY):
        missing.append(_images.BUSYBOX_BINARY)
    if not os.path.exists(os.path.join(CNI_BIN_DIR, "bridge")):
        missing.append(os.path.join(CNI_BIN_DIR, "bridge"))
    return missing


# --- /proc helpers --------------------------------------------------------------------


def _proc_starttime(pid: int) -> Optional[int]:
    """Start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def _alive(pid: int) -> bool:
    return _proc_starttime(pid) is not None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pids(match: Callable[[list[str]], bool]) -> list[int]:
    """Live processes whose argv satisfies `match`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        argv = _cmdline(pid)
        if argv and match(argv) and _alive(pid):
            out.append(pid)
    return out


def _daemon_matcher(config: Path) -> Callable[[list[str]], bool]:
    def match(argv: list[str]) -> bool:
        return os.path.basename(argv[0]) == "containerd" and str(config) in argv

    return match


def _shim_matcher(socket: str) -> Callable[[list[str]], bool]:
    def match(argv: list[str]) -> bool:
        if not os.path.basename(argv[0]).startswith("containerd-shim"):
            return False
        for i, arg in enumerate(argv[:-1]):
            if arg in ("-address", "--address") and argv[i + 1] in (socket, "unix://" + socket):
                return True
        return False

    return match


def _kill_and_wait(pids: Iterable[int], sig: int, timeout: float) -> list[int]:
    """Send `sig` to each pid, wait up to `timeout` s; the pids still alive."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _unescape_mount(path: str) -> str:
    """Undo the octal escapes (\\040 etc.) of /proc/self/mountinfo."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit() and len(path[i + 1 : i + 4]) == 3:
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, in mount order (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(directory)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mount(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                out.append(point)
    return out


def _umount_all(directory: Path) -> list[str]:
    """Lazily unmount everything below `directory`; the mount points that stayed."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(5):
        points = mounts_under(directory)
        if not points:
            return []
        for point in reversed(points):
            if libc.umount2(point.encode(), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    log.warning("umount %s: %s", point, os.strerror(err))
    return mounts_under(directory)


def _cgroup_mounts() -> list[str]:
    """Mount points of all cgroup (v1 and v2) hierarchies."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] in ("cgroup", "cgroup2"):
                out.append(_unescape_mount(fields[4]))
    return out


def _cgroup_dirs(roots: Sequence[str]) -> list[str]:
    """Every directory below the watched roots in every hierarchy (absolute paths)."""
    out = []
    for mount in _cgroup_mounts():
        for root in roots:
            top = os.path.join(mount, root.strip("/"))
            for dirpath, _dirs, _files in os.walk(top):
                out.append(dirpath)
    return out


def _remove_new_cgroups(before: Iterable[str], roots: Sequence[str]) -> None:
    """rmdir (deepest first) the empty cgroup dirs that did not exist in `before`.

    Directories still in use (by another instance, or anyone) fail with EBUSY/ENOTEMPTY
    and stay: only what nobody uses any more is removed.
    """
    known = set(before)
    for path in sorted(set(_cgroup_dirs(roots)) - known, key=lambda p: -p.count("/")):
        try:
            os.rmdir(path)
        except OSError as e:
            log.debug("cgroup %s stays: %s", path, e.strerror)


# --- network --------------------------------------------------------------------------


def _iptables(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["iptables", "-w", "5", *args], check=False, capture_output=True, text=True
    )
    if check and res.returncode != 0:
        raise HarnessError(f"iptables {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _forward_rules(subnet: str, tag: str) -> list[list[str]]:
    """FORWARD rules keeping pod traffic inside `subnet` (for `-I`/`-D FORWARD`)."""
    comment = ["-m", "comment", "--comment", tag]
    return [
        ["-s", subnet, "!", "-d", subnet, *comment, "-j", "DROP"],
        ["-d", subnet, "!", "-s", subnet, *comment, "-j", "DROP"],
    ]


def _used_subnets() -> set[str]:
    res = subprocess.run(["ip", "-4", "-o", "addr"], check=False, capture_output=True, text=True)
    return {line.split()[3].rsplit(".", 1)[0] for line in res.stdout.splitlines() if "inet" in line}


def _remove_tagged_rules(tag: str) -> None:
    res = _iptables(["-S", "FORWARD"], check=False)
    for line in res.stdout.splitlines():
        if tag in line and line.startswith("-A FORWARD "):
            # Our tags contain no spaces, so splitting the rule is exact.
            _iptables(["-D", "FORWARD", *line.split()[2:]], check=False)


def _teardown_network(net: dict[str, Any]) -> None:
    tag = net.get("tag", "")
    for rule in net.get("rules", []):
        _iptables(["-D", "FORWARD", *rule], check=False)
    if tag:
        _remove_tagged_rules(tag)
    bridge = net.get("bridge")
    if bridge and os.path.exists(f"/sys/class/net/{bridge}"):
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
    name = net.get("name")
    if name and os.path.isdir(CNI_CACHE_RESULTS):
        for entry in os.listdir(CNI_CACHE_RESULTS):
            if entry.startswith(name + "-"):
                try:
                    os.unlink(os.path.join(CNI_CACHE_RESULTS, entry))
                except OSError:
                    pass
    before = net.get("ip_forward")
    if before is not None:
        try:
            path = Path("/proc/sys/net/ipv4/ip_forward")
            if path.read_text().strip() != str(before):
                path.write_text(f"{before}\n")
        except OSError as e:
            log.warning("cannot restore net.ipv4.ip_forward=%s: %s", before, e)


# --- teardown of one instance directory (live or stale) ----------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _teardown_dir(directory: Path, remove: bool = True) -> list[str]:
    """Stop everything that belongs to the instance in `directory`; problems left over."""
    problems: list[str] = []
    config = directory / "config.toml"
    socket = str(directory / "containerd.sock")
    runc_root = directory / "runc"
    owner = _read_json(directory / _OWNER)

    left = _kill_and_wait(_pids(_daemon_matcher(config)), signal.SIGTERM, 10.0)
    left = _kill_and_wait(left, signal.SIGKILL, 5.0)
    problems += [f"containerd pid {p} survived SIGKILL" for p in left]

    # Shim sockets live outside our directory (/run/containerd/s/<hash>); remember them.
    shim_sockets = set()
    task_root = directory / "state" / "io.containerd.runtime.v2.task"
    if task_root.is_dir():
        for addr in task_root.glob("*/*/address"):
            try:
                value = addr.read_text().strip()
            except OSError:
                continue
            if value.startswith("unix://"):
                shim_sockets.add(value[len("unix://") :])

    # CNI result cache entries (/var/lib/cni/results/<network>-<sandbox id>-<ifname>).
    sandboxes = directory / "state" / "io.containerd.grpc.v1.cri" / "sandboxes"
    if sandboxes.is_dir() and os.path.isdir(CNI_CACHE_RESULTS):
        ids = {p.name for p in sandboxes.iterdir()}
        for entry in os.listdir(CNI_CACHE_RESULTS):
            parts = entry.rsplit("-", 2)
            if len(parts) == 3 and parts[1] in ids:
                try:
                    os.unlink(os.path.join(CNI_CACHE_RESULTS, entry))
                except OSError:
                    pass

    # Containers: runc delete --force kills their processes and removes their cgroups.
    if runc_root.is_dir():
        for ns_root in sorted(p for p in runc_root.iterdir() if p.is_dir()):
            for cdir in sorted(p for p in ns_root.iterdir() if p.is_dir()):
                res = subprocess.run(
                    ["runc", "--root", str(ns_root), "delete", "--force", cdir.name],
                    check=False,
                    capture_output=True,
                    text=True,
                )
                if res.returncode != 0 and cdir.exists():
                    problems.append(f"runc delete {cdir.name}: {res.stderr.strip()}")

    shims = _pids(_shim_matcher(socket))
    left = _kill_and_wait(shims, signal.SIGKILL, 5.0)
    problems += [f"shim pid {p} survived SIGKILL" for p in left]
    for sock in shim_sockets:
        try:
            os.unlink(sock)
        except OSError:
            pass

    stayed = _umount_all(directory)
    problems += [f"still mounted: {p}" for p in stayed]

    net = owner.get("network")
    if net:
        _teardown_network(net)

    cg = _read_json(directory / _CGROUPS)
    if cg:
        _remove_new_cgroups(cg.get("dirs", []), cg.get("roots", []))

    if remove and not stayed:
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            problems.append(f"cannot remove {directory}")
    return problems


def cleanup_stale(base: Optional[Path] = None) -> list[Path]:
    """Tear down instance directories under `base` whose owner process is gone."""
    base = base or base_dir()
    if not base.is_dir():
        return []
    cleaned = []
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            owner = _read_json(d / _OWNER)
            pid, start = owner.get("pid"), owner.get("starttime")
            if pid is not None and _proc_starttime(int(pid)) == start:
                continue
            if pid is None and time.time() - d.stat().st_mtime < 60:
                continue  # being created right now
            log.warning("cleaning up stale harness containerd in %s", d)
            for problem in _teardown_dir(d):
                log.warning("stale %s: %s", d, problem)
            cleaned.append(d)
    return cleaned


# --- config ---------------------------------------------------------------------------


def _q(value: str) -> str:
    """A TOML basic string."""
    return json.dumps(value)


def render_config(directory: Path, log_level: str = "info") -> str:
    """The containerd config (version 2) for an instance living in `directory`."""
    d = directory
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
# Written by harness/containerd.py; private paths under {d}.
version = 2
root = {_q(str(d / "root"))}
state = {_q(str(d / "state"))}
temp = {_q(str(d / "tmp"))}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
required_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {_q(str(d / "containerd.sock"))}
  max_recv_message_size = 16777216
  max_send_message_size = 16777216

[debug]
  level = {_q(log_level)}

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {_q(str(d / "opt"))}

  [{cri}]
    sandbox_image = {_q(SANDBOX_IMAGE)}
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    systemd_cgroup = false

    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [{cri}.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = {_q(str(d / "runc"))}

    [{cri}.cni]
      bin_dir = {_q(CNI_BIN_DIR)}
      conf_dir = {_q(str(d / "cni" / "net.d"))}
      max_conf_num = 1

    [{cri}.registry]
      config_path = {_q(str(d / "certs.d"))}
"""


def render_conflist(name: str, bridge: str, subnet: str, ipam_dir: Path) -> str:
    """A CNI bridge + host-local conflist for `subnet` (containerd adds loopback)."""
    conf = {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


# --- the daemon -----------------------------------------------------------------------


class Containerd:
    """A private containerd daemon; use as a context manager or `start()`/`stop()`.

    Attributes (valid after construction): `dir`, `config_path`, `log_path`, `root`,
    `state`, `runc_root`, `socket` (path), `address` (`unix://` + socket), `network`,
    `subnet`/`bridge` (with network), `images` (the `harness.images.Image`s imported).
    """

    def __init__(
        self,
        *,
        images: Optional[Sequence[_images.Image]] = None,
        network: bool = False,
        registry: bool = True,
        base: Optional[Path] = None,
        cgroup_roots: Sequence[str] = DEFAULT_CGROUP_ROOTS,
        start_timeout: float = 30.0,
        log_level: Optional[str] = None,
        binary: str = "containerd",
    ) -> None:
        self._base = Path(base) if base else base_dir()
        self._images_arg = images
        self.images: list[_images.Image] = []
        self.network = network
        self.serve_registry = registry
        self.registry: Optional[Registry] = None
        self.cgroup_roots = tuple(cgroup_roots)
        self.start_timeout = start_timeout
        self.log_level = log_level or os.environ.get("CRI_RESMGR_HARNESS_LOG_LEVEL", "info")
        self.binary = binary
        self.dir = Path()
        self.subnet: Optional[str] = None
        self.bridge: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._channel: Optional[grpc.Channel] = None
        self._log_file: Any = None
        self._started = False
        self._imported = False
        self.timings: dict[str, float] = {}

    # paths
    @property
    def config_path(self) -> Path:
        return self.dir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "containerd.log"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def runc_root(self) -> Path:
        return self.dir / "runc"

    @property
    def pod_log_root(self) -> Path:
        """A private stand-in for kubelet's /var/log/pods (removed with the instance)."""
        return self.dir / "pods"

    @property
    def socket(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def address(self) -> str:
        return "unix://" + self.socket

    @property
    def pid(self) -> Optional[int]:
        """Pid of the running daemon, None when it is not running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # lifecycle
    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Containerd:
        """Create the private directory, start the daemon, import the images."""
        if self._started:
            raise HarnessError("this Containerd was already started")
        missing = missing_dependencies()
        if missing:
            raise HarnessError(
                f"missing {', '.join(missing)}; run `make deps` "
                "(scripts/ensure-deps.sh e2e) as root"
            )
        t0 = time.monotonic()
        images = self._images_arg
        if images is None:
            images = _images.default_images()
        self.images = list(images)
        self.timings["build_images"] = time.monotonic() - t0

        self._base.mkdir(parents=True, exist_ok=True)
        cleanup_stale(self._base)
        sock_len = len(str(self._base)) + len(f"/ctrd-{os.getpid()}-12345678/containerd.sock.ttrpc")
        if sock_len > MAX_SOCKET_PATH:
            raise HarnessError(
                f"base directory {self._base} is too long for containerd's sockets "
                f"({sock_len} > {MAX_SOCKET_PATH} bytes); use a shorter one"
            )
        self.dir = Path(tempfile.mkdtemp(prefix=f"ctrd-{os.getpid()}-", dir=self._base))
        self._started = True
        _live.add(self)
        try:
            self._write_owner()
            for sub in (
                "root",
                "state",
                "runc",
                "tmp",
                "opt",
                "pods",
                "cni/net.d",
                "cni/ipam",
                "certs.d",
            ):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            if self.serve_registry:
                self.registry = Registry(self.images).start()
            self._write_hosts(self.registry.url if self.registry else "http://127.0.0.1:9")
            self._snapshot_cgroups()
            self.config_path.write_text(render_config(self.dir, self.log_level))
            if self.network:
                self._setup_network()
            t1 = time.monotonic()
            self.start_daemon()
            self.timings["daemon_start"] = time.monotonic() - t1
            t2 = time.monotonic()
            _images.import_images(self.socket, self.images)
            self._imported = True
            self.wait_images([i.ref for i in self.images])
            self.timings["image_import"] = time.monotonic() - t2
        except BaseException:
            try:
                self.stop()
            except HarnessError as e:
                log.warning("cleaning up after a failed start: %s", e)
            raise
        log.info(
            "containerd pid %s at %s ready in %.2fs", self.pid, self.socket, time.monotonic() - t0
        )
        return self

    def _write_owner(self, **extra: Any) -> None:
        owner = _read_json(self.dir / _OWNER)
        owner.update(
            {
                "pid": os.getpid(),
                "starttime": _proc_starttime(os.getpid()),
                "socket": self.socket,
                **extra,
            }
        )
        tmp = self.dir / (_OWNER + ".tmp")
        tmp.write_text(json.dumps(owner))
        os.replace(tmp, self.dir / _OWNER)

    def _snapshot_cgroups(self) -> None:
        data = {"roots": list(self.cgroup_roots), "dirs": _cgroup_dirs(self.cgroup_roots)}
        (self.dir / _CGROUPS).write_text(json.dumps(data))

    def _write_hosts(self, url: str) -> None:
        """Send every registry to `url` (our local registry, or a closed port): pulls
        of the harness images work offline, all others fail fast, none goes online."""
        default = self.dir / "certs.d" / "_default"
        default.mkdir(parents=True, exist_ok=True)
        (default / "hosts.toml").write_text(
            f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        )

    def _setup_network(self) -> None:
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()
        used = _used_subnets()
        n = int(digest[:4], 16) % 250 + 1
        for _ in range(250):
            if f"10.213.{n}" not in used:
                break
            n = n % 250 + 1
        else:
            raise HarnessError("no free 10.213.N.0/24 subnet for the pod network")
        self.subnet = f"10.213.{n}.0/24"
        self.bridge = f"crh{digest[:8]}"
        name = f"crh-{digest[:12]}"
        tag = f"cri-resmgr-harness:{self.dir.name}"
        forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        rules = _forward_rules(self.subnet, tag)
        net = {
            "name": name,
            "bridge": self.bridge,
            "subnet": self.subnet,
            "tag": tag,
            "ip_forward": forward,
            "rules": rules,
        }
        # Record first, then change the host: a crash in between is still cleaned up.
        self._write_owner(network=net)
        for rule in rules:
            _iptables(["-I", "FORWARD", *rule])
        (self.dir / "cni" / "net.d" / "10-harness.conflist").write_text(
            render_conflist(name, self.bridge, self.subnet, self.dir / "cni" / "ipam")
        )

    def start_daemon(self) -> None:
        """Start the daemon on the existing paths and wait until CRI `Version` answers."""
        if self.running:
            raise HarnessError(f"containerd already running as pid {self.pid}")
        self._close_channel()
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [self.binary, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        (self.dir / "containerd.pid").write_text(f"{self._proc.pid}\n")
        self.wait_ready()
        if self._imported:
            self.wait_images([i.ref for i in self.images])

    def wait_ready(self, timeout: Optional[float] = None) -> dict[str, str]:
        """Poll until CRI `Version` answers; the VersionResponse as a dict."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise HarnessError(
                    f"containerd exited with {code} during start-up; log {self.log_path}:\n"
                    + self.log_tail()
                )
            if os.path.exists(self.socket):
                ch = wire.connect(self.address)
                try:
                    return wire.version(ch, timeout=1.0)
                except grpc.RpcError as e:
                    last = e
                finally:
                    ch.close()
            time.sleep(0.02)
        raise HarnessError(
            f"containerd did not answer CRI Version within {timeout or self.start_timeout}s "
            f"({last}); log {self.log_path}:\n" + self.log_tail()
        )

    def wait_images(self, refs: Sequence[str], timeout: float = 15.0) -> None:
        """Poll CRI `ListImages` until every ref is listed (the CRI image cache synced)."""
        deadline = time.monotonic() + timeout
        missing = set(refs)
        while True:
            tags = {t for img in self.list_images() for t in img["repo_tags"]}
            missing = set(refs) - tags
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"images {sorted(missing)} not listed by CRI after import; "
                    f"log {self.log_path}:\n" + self.log_tail()
                )
            time.sleep(0.02)

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop only the daemon (shims and containers keep running), by pid."""
        self._close_channel()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("containerd pid %s ignored signal %s; killing it", proc.pid, sig)
                proc.kill()
                proc.wait(5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon and start it again on the same paths; containers survive."""
        t0 = time.monotonic()
        self.stop_daemon(sig)
        self.start_daemon()
        self.timings["restart"] = time.monotonic() - t0

    def remove_all_pods(self, timeout: float = 30.0) -> list[str]:
        """Stop and remove every pod sandbox through CRI; the problems met."""
        problems = []
        ch = self.channel()
        try:
            pods = wire.list_pod_sandboxes(ch, timeout=5.0)
        except grpc.RpcError as e:
            return [f"ListPodSandbox: {e}"]
        for pod in pods:
            for fn in (wire.stop_pod_sandbox, wire.remove_pod_sandbox):
                try:
                    fn(ch, pod["id"], timeout=timeout)
                except grpc.RpcError as e:
                    problems.append(f"{fn.__name__} {pod['id']}: {e}")
        return problems

    def stop(self) -> None:
        """Tear everything down (idempotent); raises HarnessError if something stayed."""
        if not self._started:
            return
        self._started = False
        _live.discard(self)
        if self.running:
            # Through CRI first: it releases netns, IPs and cgroups the way kubelet would.
            for problem in self.remove_all_pods():
                log.warning("teardown of %s: %s", self.dir, problem)
        self.stop_daemon()
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        leftovers = _teardown_dir(self.dir)
        if leftovers:
            raise HarnessError(f"teardown of {self.dir} left: {'; '.join(leftovers)}")

    # CRI access
    def channel(self) -> grpc.Channel:
        """A gRPC channel to the daemon (recreated after a restart)."""
        if self._channel is None:
            self._channel = wire.connect(self.address)
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def cri_client(self) -> Any:
        """A new `cri_resmgr.cri.client.CriClient` for this daemon (caller closes it).

        Its channel reconnects quickly after `restart()` (100 ms..1 s backoff).
        """
        from cri_resmgr.cri.client import CHANNEL_OPTIONS, CriClient  # noqa: PLC0415

        options = dict(CHANNEL_OPTIONS)
        options.update(dict(wire.channel_options()))
        return CriClient(self.address, options=list(options.items()))

    def version(self) -> dict[str, str]:
        return wire.version(self.channel())

    def list_images(self) -> list[dict]:
        return wire.list_images(self.channel())

    # inspection
    def shim_pids(self) -> list[int]:
        """Pids of the shims serving this daemon."""
        return _pids(_shim_matcher(self.socket))

    def mounts(self) -> list[str]:
        """Mount points below this instance's directory."""
        return mounts_under(self.dir) if self.dir != Path() else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@atexit.register
def _stop_live() -> None:
    for c in list(_live):
        try:
            c.stop()
        except Exception as e:  # noqa: BLE001 - best effort at interpreter exit
            log.warning("stopping harness containerd at exit: %s", e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m harness.containerd [--network] [--cleanup]`: run one until Ctrl-C."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m harness.containerd", description=main.__doc__)
    parser.add_argument("--network", action="store_true", help="CNI bridge pod network")
    parser.add_argument(
        "--cleanup", action="store_true", help="only tear down stale instances and exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cleanup:
        for d in cleanup_stale():
            print(f"cleaned {d}")
        return 0

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with Containerd(network=args.network) as ctrd:
        print(f"containerd pid {ctrd.pid}: {ctrd.address}  (log {ctrd.log_path})", flush=True)
        print(f"  crictl --runtime-endpoint {ctrd.address} ps -a", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
