"""Persisted pods, containers and CPU allocations: a versioned JSON file, written atomically.

Ownership: the state directory (``[relay] state-dir``, default ``/var/lib/cri-resmgr``,
mode 0700) and the file ``state.json`` in it (mode 0600), the in-memory copy of what it
holds, and what happens when it is missing, corrupt, of another version or of another
policy. The file's format and its checks are ``state_format.py``'s. It does not lock the
directory against a second cri-resmgr (``service.py`` holds ``<state-dir>/lock``) and
it does not talk to the runtime (``hooks.resync`` does).

File format (version 1)::

    {"version": 1, "policy": "static", "saved": "2024-05-01T12:00:00Z",
     "pods": {"<sandbox id>": {Pod fields}},
     "containers": {"<container id>": {"container": {Container fields},
                                       "resources": {LinuxResources fields that are set},
                                       "placement": {Placement.to_json()} or null,
                                       "stopped": false}}}

Containers are keyed by the runtime's container id, which is also the key the policy
knows them by; in-flight provisional keys are never persisted.

Writes: `State.save()` serializes a snapshot under the state's lock, then writes it to
a temporary file in the same directory, fsyncs it, renames it over ``state.json`` and
fsyncs the directory, so a crash leaves either the old or the new file, never a torn
one. Concurrent callers share writes (group commit): a caller whose change is already in
a file written by another thread returns without writing again.

Loading (`State.load`) never fails on the file's contents: a truncated or corrupt file,
or one of an unknown version, is renamed to ``state.json.corrupt-<UTC timestamp>`` (or
``.v<N>-<timestamp>``) with a warning and an empty state is used; ``hooks.resync`` then
rebuilds it from the runtime. Corrupt is also: anything but a regular file in its place
(checked with stat before it is opened, O_NONBLOCK, and with fstat after: a FIFO would
block the start, ``/dev/zero`` would never end), a file over `MAX_FILE_SIZE`, JSON
nested too deeply for the parser, and any field of any record that does not fit the
format (`state_format.decode`, which says what is checked). The warning names the
file, the record's key, the field, its value and what was expected. Everything that
loads can therefore be sent back to the runtime; nothing crashes later on a value the
file held. A file of another policy drops every placement (each container is placed
again by the new policy, and a warning says so) unless ``disable-policy-switch`` is
set, in which case `StateError` refuses to start. Problems with the directory itself
(cannot create, cannot read), and a regular file that cannot be read (EACCES, EIO),
raise `StateError`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from cri_resmgr import state_format
from cri_resmgr.errors import StateError
from cri_resmgr.policy.base import Placement, Pod
from cri_resmgr.state_format import VERSION, ContainerEntry, Corrupt

__all__ = ["DEFAULT_DIR", "STATE_FILE", "VERSION", "ContainerEntry", "State"]

log = logging.getLogger(__name__)

DEFAULT_DIR = "/var/lib/cri-resmgr"
STATE_FILE = "state.json"
DIR_MODE = 0o700
FILE_MODE = 0o600

#: the most bytes of ``state.json`` a start-up reads (128 MiB); a larger file is moved
#: aside. 10,000 containers in 1,000 pods with kubelet's annotations and a kubectl
#: last-applied-configuration take 15 MiB (each container carries its pod's annotations).
MAX_FILE_SIZE = 128 << 20
#: what a state file that is no regular file is, for the message
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _utc_stamp(wall: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))


class State:
    """Pods and containers with their placements, kept in memory and in ``state.json``.

    Build it with `State.load(directory, policy, ...)`, or in two steps with
    `State(directory)` and `open(policy, ...)` (what `hooks.Hooks` does when it is
    given an unopened state), or as `State(None, policy)` for a state that is never
    written (as `simulate` may use). The dictionaries and entries are changed only
    through the methods below (they also keep the per-record JSON cache right); each
    takes the state's own lock, so `save()` from any thread sees a consistent
    snapshot. Callers that must keep the state in step with the policy (hooks) hold
    their own lock around both.
    """

    def __init__(
        self, directory: Optional[str], policy: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE) if directory else None
        self.policy = policy
        self.pods: Dict[str, Pod] = {}
        self.containers: Dict[str, ContainerEntry] = {}
        #: whether open() has read the directory (always true without a directory)
        self.opened = directory is None
        #: what open() found: "missing", "loaded", "moved-aside", "switched"
        self.origin = "missing"
        #: path the unusable file was moved to (origin "moved-aside")
        self.moved_to: Optional[str] = None
        #: policy of the loaded file when it differs from `policy` (origin "switched")
        self.switched_from: Optional[str] = None
        #: wall-clock seconds of the last successful write, and how long it took (s)
        self.last_save: Optional[float] = None
        self.last_save_seconds: Optional[float] = None
        self._clock = clock
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._generation = 0
        self._written = 0
        self._pending: Tuple[int, bytes] = (0, b"")
        self._dir_fd: Optional[int] = None
        self._too_large = False  # the last save was over MAX_FILE_SIZE (logged once)
        # serialized JSON of each record, dropped when a method changes the record
        self._pod_json: Dict[str, str] = {}
        self._container_json: Dict[str, str] = {}

    # -- loading

    @classmethod
    def load(
        cls,
        directory: str,
        policy: str,
        disable_policy_switch: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> State:
        """Read ``directory/state.json`` for `policy` (see the module docstring)."""
        return cls(directory, policy, clock).open(policy, disable_policy_switch)

    def open(self, policy: Optional[str] = None, disable_policy_switch: bool = False) -> State:
        """Prepare the directory and read the file for `policy` (default: the one given
        to the constructor); returns self. See the module docstring for what happens
        with missing, corrupt and foreign files."""
        if policy is not None:
            self.policy = policy
        if not self.policy:
            raise ValueError("State.open needs the name of the active policy")
        self.opened = True
        if self.directory is None:
            return self
        self._prepare_directory()
        try:
            raw = self._read()
            if raw is None:
                dangling = (
                    f" (a symbolic link to {self._link_text()}, which does not exist; the "
                    "first save replaces it)"
                    if os.path.islink(self.path or "")
                    else ""
                )
                log.info("no state file %s%s: starting with an empty state", self.path, dangling)
                return self
            data = self._parse(raw)
        except Corrupt as exc:
            self._move_aside(exc)
            return self
        old_policy = data["policy"]
        if old_policy != self.policy:
            if disable_policy_switch:
                self.pods, self.containers = {}, {}
                raise StateError(
                    f"state file {self.path} holds the placements of policy {old_policy!r} but "
                    f"the configured policy is {self.policy!r}, and disable-policy-switch "
                    f"refuses to switch; configure policy {old_policy!r} again, or remove "
                    f"{self.path} (or unset disable-policy-switch) to re-place every container"
                )
            dropped = sum(1 for e in self.containers.values() if e.placement is not None)
            for entry in self.containers.values():
                entry.placement = None
            self.origin = "switched"
            self.switched_from = old_policy
            log.warning(
                "policy switch: state file %s is of policy %r, the configured policy is %r; "
                "dropping %d placements, every container is placed again",
                self.path,
                old_policy,
                self.policy,
                dropped,
            )
        else:
            self.origin = "loaded"
            log.info(
                "state loaded from %s: %d pods, %d containers",
                self.path,
                len(self.pods),
                len(self.containers),
            )
        return self

    def _prepare_directory(self) -> None:
        assert self.directory is not None
        try:
            os.makedirs(self.directory, mode=DIR_MODE, exist_ok=True)
            mode = os.stat(self.directory).st_mode & 0o777
            if mode & 0o077:
                os.chmod(self.directory, DIR_MODE)
                log.info("state directory %s was mode %o; now %o", self.directory, mode, DIR_MODE)
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StateError(
                f"state directory {self.directory} cannot be used: {exc.strerror}; "
                "it must be a directory writable by cri-resmgr ([relay] state-dir)"
            ) from exc

    def _read(self) -> Optional[bytes]:
        """The file's bytes; None if there is none. `Corrupt` for anything that is not
        a regular file (a directory, a FIFO, a device, a socket, a symbolic link that
        cannot be followed) and for a file larger than `MAX_FILE_SIZE`: none of them is
        opened for reading, or read, beyond that (a FIFO would block, /dev/zero would
        never end, and opening some devices acts). `StateError` when a regular file
        cannot be read (permissions, I/O error)."""
        assert self.path is not None
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None  # also a dangling symbolic link: the next save replaces it
        except OSError as exc:
            if os.path.islink(path):  # a loop, a target name too long, ...
                raise Corrupt(
                    f"it is a symbolic link (to {self._link_text()}) that cannot be followed: "
                    f"{exc.strerror}; expected a regular file"
                ) from None
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from exc
        self._check_regular(st)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from exc
        try:
            self._check_regular(os.fstat(fd))  # it may have been replaced since stat()
            chunks = []
            left = MAX_FILE_SIZE + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if left <= 0:
            raise Corrupt(
                f"it is larger than {MAX_FILE_SIZE} bytes, the most a start-up reads "
                "(docs/state.md)"
            )
        return b"".join(chunks)

    def _check_regular(self, st: os.stat_result) -> None:
        assert self.path is not None
        if stat.S_ISREG(st.st_mode):
            if st.st_size > MAX_FILE_SIZE:
                raise Corrupt(
                    f"it is {st.st_size} bytes, larger than {MAX_FILE_SIZE} bytes, the most "
                    "a start-up reads (docs/state.md)"
                )
            return
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        link = f" (a symbolic link to {self._link_text()})" if os.path.islink(self.path) else ""
        raise Corrupt(f"it is {kind}{link}, not a regular file")

    def _link_text(self) -> str:
        assert self.path is not None
        try:
            return repr(os.readlink(self.path))
        except OSError:
            return "?"

    def _parse(self, raw: bytes) -> Dict[str, Any]:
        """The checked contents of the file (`state_format.decode`); sets `pods` and
        `containers` only when all of it fits."""
        doc = state_format.decode(raw)
        self.pods, self.containers = doc.pods, doc.containers
        return doc.data

    def _move_aside(self, problem: Corrupt) -> None:
        assert self.path is not None
        stamp = _utc_stamp(self._clock())
        target = f"{self.path}.{problem.suffix}-{stamp}"
        n = 1
        while os.path.lexists(target):
            n += 1
            target = f"{self.path}.{problem.suffix}-{stamp}.{n}"
        try:
            os.rename(self.path, target)
        except OSError as exc:
            raise StateError(
                f"state file {self.path} is unusable ({problem}) and cannot be moved aside: "
                f"{exc.strerror}"
            ) from exc
        self.pods, self.containers = {}, {}
        self.origin = "moved-aside"
        self.moved_to = target
        log.warning(
            "state file %s is unusable: %s; moved to %s, the state is rebuilt from the runtime",
            self.path,
            problem,
            target,
        )

    # -- changes

    def put_pod(self, pod: Pod) -> None:
        with self._lock:
            self.pods[pod.id] = pod
            self._pod_json.pop(pod.id, None)

    def drop_pod(self, pod_id: str) -> Dict[str, ContainerEntry]:
        """Forget a pod and its containers; the containers dropped, by id."""
        with self._lock:
            self.pods.pop(pod_id, None)
            gone = {cid: e for cid, e in self.containers.items() if e.container.pod_id == pod_id}
            for cid in gone:
                del self.containers[cid]
            return gone

    def put_container(self, entry: ContainerEntry) -> None:
        with self._lock:
            self.containers[entry.container.id] = entry
            self._container_json.pop(entry.container.id, None)

    def drop_container(self, container_id: str) -> Optional[ContainerEntry]:
        with self._lock:
            return self.containers.pop(container_id, None)

    def set_placement(self, container_id: str, placement: Optional[Placement]) -> bool:
        """Record a container's new placement; False if the container is unknown."""
        with self._lock:
            entry = self.containers.get(container_id)
            if entry is None:
                return False
            entry.placement = placement
            self._container_json.pop(container_id, None)
            return True

    def update(self, container_id: str, **changes: Any) -> bool:
        """Change fields of a container's entry (`resources`, `stopped`, `container`)."""
        with self._lock:
            entry = self.containers.get(container_id)
            if entry is None:
                return False
            for name, value in changes.items():
                setattr(entry, name, value)
            self._container_json.pop(container_id, None)
            return True

    def placements(self) -> Dict[str, Placement]:
        """Container id -> placement, for the containers that have one."""
        with self._lock:
            return {cid: e.placement for cid, e in self.containers.items() if e.placement}

    # -- writing

    def to_json(self) -> Dict[str, Any]:
        """The file's contents as a JSON object (a snapshot)."""
        with self._lock:
            return json.loads(self._serialize())  # type: ignore[no-any-return]

    def _serialize(self) -> str:
        """The file's text. Each record's JSON is cached until a method changes it, so a
        save costs one `json.dumps` per changed record plus a join (caller holds _lock)."""
        pods = self._pod_json
        for pid in [p for p in pods if p not in self.pods]:
            del pods[pid]
        for pid, pod in self.pods.items():
            if pid not in pods:
                pods[pid] = json.dumps(state_format.record_json(pod), separators=(",", ":"))
        conts = self._container_json
        for cid in [c for c in conts if c not in self.containers]:
            del conts[cid]
        for cid, entry in self.containers.items():
            if cid not in conts:
                conts[cid] = json.dumps(entry.to_json(), separators=(",", ":"))
        saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock()))
        head = json.dumps({"version": VERSION, "policy": self.policy, "saved": saved})
        return "".join(
            (
                head[:-1],
                ',"pods":{',
                ",".join(f"{json.dumps(k)}:{v}" for k, v in pods.items()),
                '},"containers":{',
                ",".join(f"{json.dumps(k)}:{v}" for k, v in conts.items()),
                "}}\n",
            )
        )

    def save(self) -> None:
        """Write the current state atomically; returns once it is on disk.

        Raises `StateError` when the file cannot be written (the in-memory state stays;
        the next save tries again). A state without a directory is not written.
        """
        if not self.opened:
            raise StateError(f"state {self.path} saved before open(): it would lose the file")
        with self._lock:
            self._generation += 1
            generation = self._generation
            data = self._serialize().encode()
            self._pending = (generation, data)
            if len(data) > MAX_FILE_SIZE and not self._too_large:
                log.error(
                    "state file %s is %d bytes, more than the %d bytes a start-up reads: "
                    "the next start moves it aside and rebuilds the state from the runtime",
                    self.path,
                    len(data),
                    MAX_FILE_SIZE,
                )
            self._too_large = len(data) > MAX_FILE_SIZE
        if self.path is None:
            return
        with self._write_lock:
            if self._written >= generation:
                return  # a newer snapshot, which includes ours, is on disk already
            latest, data = self._pending
            start = time.monotonic()
            self._write(data)
            self.last_save_seconds = time.monotonic() - start
            self.last_save = self._clock()
            self._written = latest

    def _write(self, data: bytes) -> None:
        assert self.path is not None and self.directory is not None
        tmp = os.path.join(self.directory, f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            if self._dir_fd is None:
                self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(self._dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StateError(f"cannot write state file {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Release the directory handle (the state stays usable in memory)."""
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
