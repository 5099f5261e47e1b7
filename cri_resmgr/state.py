"""Persisted pods, containers and CPU allocations: a versioned JSON file, written atomically.

Ownership: the state directory (``[relay] state-dir``, default ``/var/lib/cri-resmgr``,
mode 0700) and the file ``state.json`` in it (mode 0600), the in-memory copy of what it
holds, and what happens when it is missing, corrupt, of another version or of another
policy. It does not lock the directory against a second cri-resmgr (``service.py``
holds the lock file) and it does not talk to the runtime (``hooks.resync`` does).

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
schema below (`_POD`, `_CONTAINER`, `_RESOURCES`, `_PLACEMENT`, `_ENTRY`): the type (a
bool is true or false, an integer is no bool and no 1.0), the range of the protobuf
field a value is sent in (int64), the enumerations (QoS class, CPU class), text that
protobuf can encode, labels and annotations as maps of str -> str, and placement CPU
sets that `CPUSet.parse` reads. The warning names the file, the record's key, the
field, its value and what was expected. Everything that loads can therefore be sent
back to the runtime; nothing crashes later on a value the file held. A file of another
policy drops every placement (each container is placed again by the new policy, and a
warning says so) unless ``disable-policy-switch`` is set, in which case `StateError`
refuses to start. Problems with the directory itself (cannot create, cannot read), and
a regular file that cannot be read (EACCES, EIO), raise `StateError`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from cri_resmgr.errors import StateError
from cri_resmgr.podspec import QOS_CLASSES, LinuxResources
from cri_resmgr.policy.base import BESTEFFORT, CPU_CLASSES, SHARED, Container, Placement, Pod
from cri_resmgr.resources.cpuset import CPUSet

__all__ = ["DEFAULT_DIR", "STATE_FILE", "VERSION", "ContainerEntry", "State"]

log = logging.getLogger(__name__)

DEFAULT_DIR = "/var/lib/cri-resmgr"
STATE_FILE = "state.json"
VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass
class ContainerEntry:
    """One container as the state keeps it.

    `resources` are the CPU/memory fields kubelet last asked for (CreateContainer or
    UpdateContainerResources), re-sent with our cpusets when a placement changes.
    `placement` is None for containers the policy did not place (policy none,
    ``on-error = pass``) and after StopContainer released it (`stopped`).
    """

    container: Container
    resources: LinuxResources = LinuxResources()
    placement: Optional[Placement] = None
    stopped: bool = False

    def to_json(self) -> Dict[str, Any]:
        return {
            "container": _record_json(self.container),
            "resources": self.resources.to_json(),
            "placement": None if self.placement is None else self.placement.to_json(),
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, data: Any, key: str) -> ContainerEntry:
        """The entry filed under container id `key` in the file, every field checked
        (see the module docstring). A `ValueError` names the field, its value and what
        was expected."""
        return _container_entry(key, data)


def _record_json(record: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


# --- what a version 1 file may hold: every field of every record is checked on load

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
#: the largest milli-CPU amount `podspec.estimate` gives for int64 CFS fields (quota
#: 2^63-1 µs over a period of 1 µs): the pod and container records' CPU estimates
#: are 0..this, so every file cri-resmgr writes passes the check
MAX_MILLI_CPU = _INT64_MAX * 1000
#: the most bytes of ``state.json`` a start-up reads (128 MiB); a larger file is moved
#: aside. 10,000 containers in 1,000 pods with kubelet's annotations and a kubectl
#: last-applied-configuration take 15 MiB (each container carries its pod's annotations).
MAX_FILE_SIZE = 128 << 20
#: versions that name a moved-aside copy (``state.json.v<N>-...``); any other value
#: of ``version`` makes the file corrupt (a 300-digit name cannot be created)
_MAX_NAMED_VERSION = 10**9 - 1

_REQUIRED = object()  # default of a field that must be there

#: what a state file that is no regular file is, for the message
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class _Corrupt(ValueError):
    """The state file cannot be used; `suffix` names the moved-aside copy."""

    def __init__(self, reason: str, suffix: str = "corrupt") -> None:
        super().__init__(reason)
        self.suffix = suffix


class _Bad(Exception):
    """A JSON value that does not fit its field. `at` is the path below the field
    (``["key"]`` of a map) where `value` was found; empty: the field's value."""

    def __init__(self, expected: str, at: str = "", value: Any = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.at = at
        self.value = value


def _shorten(text: str, limit: int) -> str:
    """`text` shortened in the middle when longer than `limit`."""
    if len(text) > limit:
        return f"{text[: limit // 2]}...{text[-(limit // 2) :]}"
    return text


def _show(value: Any) -> str:
    """A JSON value as a message shows it: its JSON text (shortened) and its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number with a fraction or an exponent"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    elif isinstance(value, dict):
        kind = f"an object of {len(value)} field{'' if len(value) == 1 else 's'}"
    else:  # pragma: no cover - json.loads gives nothing else
        kind = type(value).__name__
    if isinstance(value, (list, dict)) and len(value) > 8:
        text = "[...]" if isinstance(value, list) else "{...}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        text = _shorten(str(value), 30)  # no 4000-digit numbers in the log
    else:
        try:
            text = json.dumps(value)  # ASCII: lone surrogates are shown escaped
        except (RecursionError, ValueError):
            text = "[...]" if isinstance(value, list) else "{...}"
    return f"{_shorten(text, 60)} ({kind})"


def _key(key: str) -> str:
    """A record key as a message names it: JSON-quoted, long ones shortened."""
    return _shorten(json.dumps(key), 90)


class _Check:
    """A field's check: `convert` takes the JSON value and gives the record's, or
    raises `_Bad`; `expected` says what fits, for the message."""

    def __init__(self, expected: str, convert: Callable[[Any], Any]) -> None:
        self.expected = expected
        self.convert = convert

    def __call__(self, value: Any) -> Any:
        return self.convert(value)


def _is_text(value: Any) -> bool:
    """A str that is valid Unicode: protobuf and the log must be able to encode it
    (JSON's ``\\ud800`` escapes decode to unpaired surrogates, which they cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TEXT_EXPECTED = "a string"
_SURROGATES = "text without unpaired \\ud800-\\udfff escapes (protobuf cannot send them)"


def _text_value(value: Any) -> str:
    if not _is_text(value):
        raise _Bad(_SURROGATES if isinstance(value, str) else _TEXT_EXPECTED)
    return value  # type: ignore[no-any-return]


_TEXT = _Check(_TEXT_EXPECTED, _text_value)


def _integer(low: int, high: int, what: str) -> _Check:
    expected = f"an integer in {low}..{high} ({what})"

    def convert(value: Any) -> int:
        # type() rather than isinstance(): true and false are no integers here
        if type(value) is not int or not low <= value <= high:
            raise _Bad(expected)
        return value

    return _Check(expected, convert)


def _int64(proto_field: str) -> _Check:
    return _integer(_INT64_MIN, _INT64_MAX, f"int64, as {proto_field}")


_MILLI = _integer(0, MAX_MILLI_CPU, "milli-CPUs")
_BYTES = _integer(0, _INT64_MAX, "bytes")


def _one_of(*allowed: str) -> _Check:
    expected = "one of " + ", ".join(json.dumps(a) for a in allowed)

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise _Bad(expected)
        return value

    return _Check(expected, convert)


def _boolean_value(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


_BOOLEAN = _Check("true or false", _boolean_value)

_CPUSET_EXPECTED = (
    'a CPU list in the kernel\'s syntax, e.g. "0-3,8" (ids 0..65535, ranges low-high, '
    'no spaces; "" is the empty set)'
)


def _cpuset_value(value: Any) -> CPUSet:
    if not isinstance(value, str):
        raise _Bad(_CPUSET_EXPECTED)
    try:
        return CPUSet.parse(value)
    except ValueError as exc:
        # CPUSet's message says what is wrong and what the syntax is
        raise _Bad(f"{_CPUSET_EXPECTED}; {str(exc).split('; expected ', 1)[0]}") from None


_CPUSET = _Check(_CPUSET_EXPECTED, _cpuset_value)


def _nullable(check: _Check) -> _Check:
    expected = f"null or {check.expected}"

    def convert(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Bad as bad:
            raise _Bad(f"null or {bad.expected}") from None

    return _Check(expected, convert)


def _labels_value(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _Bad(_LABELS.expected)
    for name, text in value.items():
        if not _is_text(name):  # JSON keys are strings: only surrogates are wrong
            raise _Bad(f"a name that is {_SURROGATES}", at=f"[{_key(name)}]", value=text)
        if not _is_text(text):
            expected = _SURROGATES if isinstance(text, str) else _TEXT_EXPECTED
            raise _Bad(expected, at=f"[{_key(name)}]", value=text)
    return dict(value)


#: labels and annotations: str -> str (kubelet's maps)
_LABELS = _Check("an object of strings (name -> text)", _labels_value)


def _object_value(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad("an object")
    return value


_OBJECT = _Check("an object", _object_value)


#: field -> (check, default); a missing field takes its default (_REQUIRED: an error)
_Schema = Mapping[str, Tuple[_Check, Any]]

_POD: _Schema = {
    "id": (_TEXT, _REQUIRED),
    "uid": (_TEXT, _REQUIRED),
    "name": (_TEXT, _REQUIRED),
    "namespace": (_TEXT, _REQUIRED),
    "qos": (_one_of(*QOS_CLASSES), BESTEFFORT),
    "cgroup_parent": (_TEXT, ""),
    "annotations": (_LABELS, {}),
    "labels": (_LABELS, {}),
    "cpu_request": (_MILLI, 0),
    "cpu_limit": (_MILLI, 0),
    "memory_limit": (_BYTES, 0),
    "overhead_cpu": (_MILLI, 0),
    "overhead_memory": (_BYTES, 0),
}
_CONTAINER: _Schema = {
    "id": (_TEXT, _REQUIRED),
    "pod_id": (_TEXT, _REQUIRED),
    "name": (_TEXT, _REQUIRED),
    "pod_name": (_TEXT, _REQUIRED),
    "namespace": (_TEXT, _REQUIRED),
    "qos": (_one_of(*QOS_CLASSES), BESTEFFORT),
    "cpu_request": (_MILLI, 0),
    "cpu_limit": (_MILLI, 0),
    "memory_limit": (_BYTES, 0),
    "annotations": (_LABELS, {}),
    "pod_annotations": (_LABELS, {}),
    # what the request asked for: kubelet's text, kept verbatim (not parsed)
    "cpuset_cpus": (_TEXT, ""),
    "cpuset_mems": (_TEXT, ""),
}
_RESOURCES: _Schema = {
    **{
        name: (_int64(f"LinuxContainerResources.{name}"), 0)
        for name in (
            "cpu_period",
            "cpu_quota",
            "cpu_shares",
            "memory_limit_in_bytes",
            "oom_score_adj",
        )
    },
    # kubelet's text, sent back verbatim to the runtime (not parsed)
    "cpuset_cpus": (_TEXT, ""),
    "cpuset_mems": (_TEXT, ""),
}
_PLACEMENT: _Schema = {
    "cpus": (_CPUSET, _REQUIRED),
    "mems": (_nullable(_CPUSET), None),
    "class": (_one_of(*CPU_CLASSES), SHARED),
    "pool": (_TEXT, ""),
    "cpu_shares": (_nullable(_int64("LinuxContainerResources.cpu_shares")), None),
    "exclusive": (_CPUSET, CPUSet()),
}
_ENTRY: _Schema = {
    "container": (_OBJECT, _REQUIRED),
    "resources": (_OBJECT, {}),
    "placement": (_nullable(_OBJECT), None),
    "stopped": (_BOOLEAN, False),
}


def _fields(where: str, data: Any, schema: _Schema) -> Dict[str, Any]:
    """The fields of `schema` read from the JSON object `data`, found at `where` in
    the file, each checked. A missing field takes its default; fields the schema does
    not have are ignored. `_Corrupt` names the field, its value and what fits."""
    if not isinstance(data, dict):
        raise _Corrupt(f"{where} is {_show(data)}; expected an object")
    out: Dict[str, Any] = {}
    for name, (check, default) in schema.items():
        if name not in data:
            if default is _REQUIRED:
                raise _Corrupt(f"{where} has no {name!r}; expected {check.expected}")
            out[name] = dict(default) if isinstance(default, dict) else default
            continue
        value = data[name]
        try:
            out[name] = check(value)
        except _Bad as bad:
            shown = bad.value if bad.at else value
            raise _Corrupt(
                f"{where}.{name}{bad.at} is {_show(shown)}; expected {bad.expected}"
            ) from None
    return out


def _filed_under(where: str, key: str, record_id: str) -> None:
    """A record's id is the key it is filed under (`State.put_pod`, `put_container`)."""
    if record_id != key:
        raise _Corrupt(
            f"{where}.id is {_show(record_id)}; expected {_key(key)}, the key it is filed under"
        )


def _pod(key: str, data: Any) -> Pod:
    where = f"pods[{_key(key)}]"
    values = _fields(where, data, _POD)
    _filed_under(where, key, values["id"])
    return Pod(**values)


def _container_entry(key: str, data: Any) -> ContainerEntry:
    where = f"containers[{_key(key)}]"
    entry = _fields(where, data, _ENTRY)
    container = _fields(f"{where}.container", entry["container"], _CONTAINER)
    _filed_under(f"{where}.container", key, container["id"])
    resources = _fields(f"{where}.resources", entry["resources"], _RESOURCES)
    placement = None
    if entry["placement"] is not None:
        p = _fields(f"{where}.placement", entry["placement"], _PLACEMENT)
        placement = Placement(
            cpus=p["cpus"],
            mems=p["mems"],
            cpu_class=p["class"],
            pool=p["pool"],
            cpu_shares=p["cpu_shares"],
            exclusive=p["exclusive"],
        )
    return ContainerEntry(
        container=Container(**container),
        resources=LinuxResources(**resources),
        placement=placement,
        stopped=entry["stopped"],
    )


def _records(name: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """The top-level object `name` (``pods`` or ``containers``) of the file."""
    if name not in data:
        raise _Corrupt(f"it has no {name!r}; expected an object of records")
    records = data[name]
    if not isinstance(records, dict):
        raise _Corrupt(f"{name} is {_show(records)}; expected an object of records")
    return records


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
        except _Corrupt as exc:
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
        """The file's bytes; None if there is none. `_Corrupt` for anything that is not
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
                raise _Corrupt(
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
            raise _Corrupt(
                f"it is larger than {MAX_FILE_SIZE} bytes, the most a start-up reads "
                "(docs/state.md)"
            )
        return b"".join(chunks)

    def _check_regular(self, st: os.stat_result) -> None:
        assert self.path is not None
        if stat.S_ISREG(st.st_mode):
            if st.st_size > MAX_FILE_SIZE:
                raise _Corrupt(
                    f"it is {st.st_size} bytes, larger than {MAX_FILE_SIZE} bytes, the most "
                    "a start-up reads (docs/state.md)"
                )
            return
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        link = f" (a symbolic link to {self._link_text()})" if os.path.islink(self.path) else ""
        raise _Corrupt(f"it is {kind}{link}, not a regular file")

    def _link_text(self) -> str:
        assert self.path is not None
        try:
            return repr(os.readlink(self.path))
        except OSError:
            return "?"

    def _parse(self, raw: bytes) -> Dict[str, Any]:
        """The checked contents of the file (`_Corrupt` says what does not fit); sets
        `pods` and `containers` only when all of it fits."""
        if not raw.strip():
            raise _Corrupt("it is empty")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Corrupt(f"it is not JSON ({exc})") from None
        except RecursionError:
            raise _Corrupt(
                "its arrays or objects nest too deeply for the JSON parser (a version 1 "
                "file nests objects 5 deep)"
            ) from None
        if not isinstance(data, dict):
            raise _Corrupt(
                f"it is {_show(data)}; expected an object of version, policy, pods and containers"
            )
        if "version" not in data:
            raise _Corrupt(f"it has no 'version'; expected the integer {VERSION}")
        version = data["version"]
        if type(version) is not int:  # not true, not 1.0
            raise _Corrupt(f"version is {_show(version)}; expected the integer {VERSION}")
        if version != VERSION:
            if not 0 <= version <= _MAX_NAMED_VERSION:
                raise _Corrupt(
                    f"version is {_show(version)}; expected the integer {VERSION} "
                    f"(a version of another cri-resmgr is 0..{_MAX_NAMED_VERSION})"
                )
            newer = " (written by a newer cri-resmgr)" if version > VERSION else ""
            raise _Corrupt(
                f"it is version {version}{newer}; this cri-resmgr reads version {VERSION}",
                suffix=f"v{version}",
            )
        if "policy" not in data:
            raise _Corrupt(f"it has no 'policy'; expected {_TEXT_EXPECTED}")
        for name, check in (("policy", _TEXT), ("saved", _TEXT)):
            if name in data:
                try:
                    check(data[name])
                except _Bad as bad:
                    raise _Corrupt(
                        f"{name} is {_show(data[name])}; expected {bad.expected}"
                    ) from None
        pods = {key: _pod(key, v) for key, v in _records("pods", data).items()}
        containers = {
            key: _container_entry(key, v) for key, v in _records("containers", data).items()
        }
        self.pods = pods
        self.containers = containers
        return data  # type: ignore[no-any-return]

    def _move_aside(self, problem: _Corrupt) -> None:
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
                pods[pid] = json.dumps(_record_json(pod), separators=(",", ":"))
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
