"""The CRI call dump: which calls are logged (rules), how (records), and the writer.

Ownership: resolving a method's dump level from the `[dump] rules`, turning finished
calls (`relay.CallRecord`) into text records, and writing them to the dump file (or
the `cri_resmgr.dump` logger) from a writer thread fed by a bounded queue.

Levels. `off` writes nothing; `count` only counts calls and errors per method (see
`Dump.write_summary`); `name` writes one header line per request and per reply;
`full` adds the decoded message under each header, as YAML indented by 4 spaces.
A method's level comes from its short name (`CreateContainer`): an exact-name rule
wins (the last one, if several), otherwise the last regular expression that matches
the whole name; no match means `off`.

The call path. `Dump.observe` runs on the relay's event loop for every call whose
method is not `off`. It is O(1) and makes no system call: a cached level look-up,
then either a counter update (`count`) or an append to a deque. When the deque holds
`queue_size` calls or `queue_bytes` bytes of messages, the call is dropped and
counted instead, and the writer later writes a `!!` line saying how many were lost.
Decoding, formatting and writing happen only in the writer thread, which polls the
deque (10-200 ms) and writes in batches. When the writer shares the interpreter lock
with a relay's event loop (``paced``), it works in slices of about 0.2 ms and pauses
between them while calls keep arriving; otherwise a loop thread waiting for the lock
could wait Python's whole switch interval (5 ms) per call. The service does not use
this class directly but `dumpproc.ProcessDump`, which runs the writer in a process
of its own (the lock is then not shared at all).

The file is opened with O_APPEND|O_CREAT and mode 0600 (CRI messages carry container
environment values, which may be secrets); a pre-existing file with a looser mode is
chmod-ed to 0600 with a warning. `reopen()` (SIGHUP, logrotate) closes and reopens
the path. Fields marked `debug_redact` in the schema (registry credentials) are
never written. The record format is documented in docs/dump.md.

Times: `CallRecord` monotonic seconds for latency, its `wall` (`time.time()`) for
the timestamps, written in UTC with milliseconds.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Pattern, Sequence, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cri_resmgr import errors, http2, relay
from cri_resmgr.config import DumpRule
from cri_resmgr.cri import methods as cri_methods

log = logging.getLogger(__name__)

OFF = "off"
NAME = "name"
FULL = "full"
COUNT = "count"
LEVELS = (OFF, NAME, FULL, COUNT)
_LEVEL_ALIASES = {"short": NAME}

#: Records (calls) the queue holds before new ones are dropped.
DEFAULT_QUEUE_SIZE = 10000
#: Message bytes the queued records may hold before new ones are dropped.
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
#: Containers and pod sandboxes whose `namespace/pod[:container]` the dump remembers.
DEFAULT_NAMES_SIZE = 8192
#: Output bytes collected before a write in the middle of a batch.
_WRITE_CHUNK = 256 * 1024
#: Seconds the writer sleeps between looks at the queue: the shortest, after records
#: arrived, doubling while none arrive up to the longest. `observe()` never wakes the
#: writer (that would cost a system call on the event loop); control requests do.
_POLL_MIN = 0.01
_POLL_MAX = 0.2
#: While the relay is busy (calls finished since the writer last looked), the writer
#: holds the GIL for at most about `_SLICE` seconds and then sleeps `_PAUSE` seconds,
#: so the event loop never waits for the GIL longer than a slice (instead of Python's
#: 5 ms switch interval) and the writer takes at most ~30% of the interpreter.
_SLICE = 0.0002
_PAUSE = 0.0005
#: Seconds between two warnings in the log about dropped records.
_DROP_WARN_INTERVAL = 60.0
#: Characters of a container or sandbox ID shown when its name is unknown.
_SHORT_ID = 12

# gRPC status code names, by value (as Go's codes.Code.String()).
_CODE_NAMES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)

# Kubelet's labels on containers (and on sandboxes, for the pod).
_LABEL_NAMESPACE = "io.kubernetes.pod.namespace"
_LABEL_POD = "io.kubernetes.pod.name"
_LABEL_CONTAINER = "io.kubernetes.container.name"


class DumpError(errors.Error):
    """The dump cannot be set up (bad rule, unusable dump file)."""


def code_name(code: int) -> str:
    """The gRPC status code name of `code` (`5` -> `NotFound`), `Code<n>` if unknown."""
    if 0 <= code < len(_CODE_NAMES):
        return _CODE_NAMES[code]
    return f"Code{code}"


def format_time(wall: float) -> str:
    """`wall` (seconds since the epoch) as UTC with milliseconds: 2026-11-28T07:42:16.911Z."""
    sec, ms = divmod(int(wall * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}Z"


def format_latency(seconds: float) -> str:
    """A call's latency: `0.4ms`, `101.3ms`, `2.315s`."""
    if seconds < 1.0:
        return f"{seconds * 1000.0:.1f}ms"
    return f"{seconds:.3f}s"


# --- rules ----------------------------------------------------------------------


class Rules:
    """Compiled dump rules; `level(name)` is the level of one short method name."""

    def __init__(self, rules: Sequence[DumpRule]) -> None:
        self.rules: Tuple[DumpRule, ...] = tuple(rules)
        self._exact: Dict[str, str] = {}
        regexps: List[Tuple[Pattern[str], str]] = []
        for rule in self.rules:
            level = _LEVEL_ALIASES.get(rule.level, rule.level)
            if level not in LEVELS:
                raise DumpError(
                    f"dump rule {rule.level}:{rule.pattern}: unknown level {rule.level!r} "
                    f"(allowed: {', '.join(LEVELS)}, short)"
                )
            if rule.is_exact:
                self._exact[rule.pattern] = level  # a later exact rule replaces an earlier
            else:
                try:
                    regexps.append((re.compile(rule.pattern), level))
                except (re.error, OverflowError, RecursionError) as exc:  # a{999999999999}
                    raise DumpError(
                        f"dump rule {rule.level}:{rule.pattern}: bad regular expression: {exc}"
                    ) from None
        regexps.reverse()  # the last matching one wins
        self._regexps = tuple(regexps)

    def level(self, name: str) -> str:
        """The level of short method name `name` (`CreateContainer`)."""
        level = self._exact.get(name)
        if level is not None:
            return level
        for regexp, level in self._regexps:
            if regexp.fullmatch(name):
                return level
        return OFF

    @property
    def counts_any(self) -> bool:
        """True when some rule has level `count`."""
        return COUNT in self._exact.values() or any(lv == COUNT for _, lv in self._regexps)


# --- YAML rendering of messages ---------------------------------------------------

# A plain (unquoted) YAML scalar: printable ASCII words without indicators, joined by
# single spaces or colons; anything else is written as a JSON string, which is a valid
# YAML double-quoted scalar.
_WORD = r"[A-Za-z0-9_./+@%=~^,()$-]"
_PLAIN_RE = re.compile(rf"[A-Za-z/_]{_WORD}*(?:[ :]{_WORD}+)*\Z")
# Strings starting with a digit stay plain only when alphanumeric and not a number.
_PLAIN_DIGIT_RE = re.compile(r"[0-9][0-9A-Za-z]*[A-Za-z][0-9A-Za-z]*\Z")
_NUMBERISH_RE = re.compile(r"0[xXoObB]|[0-9]+[eE][0-9]+\Z")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})

_INDENT = "    "  # messages under a header line


def yaml_str(s: str) -> str:
    """`s` as a YAML scalar: plain when unambiguous, else double-quoted (JSON escapes)."""
    if _PLAIN_RE.match(s):
        if s.lower() not in _YAML_WORDS:
            return s
    elif _PLAIN_DIGIT_RE.match(s) and not _NUMBERISH_RE.match(s):
        return s
    return json.dumps(s, ensure_ascii=not s.isprintable())


def _yaml_bytes(b: bytes) -> str:
    try:
        return yaml_str(b.decode("utf-8"))
    except UnicodeDecodeError:
        return "!!binary " + base64.b64encode(b).decode("ascii")


def _yaml_float(value: float) -> str:
    if value != value:  # noqa: PLR0124 - NaN
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


def _yaml_bool(value: bool) -> str:
    return "true" if value else "false"


_FT = FieldDescriptor


def _is_repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6; `label` is deprecated there
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return fd.label == _FT.LABEL_REPEATED


_SCALAR = 0
_MESSAGE = 1
_SCALARS = 2
_MESSAGES = 3
_MAP = 4
_MAP_OF_MESSAGES = 5
_REDACTED = 6
#: Strings of at most this many characters have their YAML form cached.
_CACHED_STR_LEN = 128
_STR_CACHE_SIZE = 4096
#: Rendered messages are remembered by their bytes: messages up to this size, ...
_RENDER_CACHE_ITEM = 256 * 1024
#: ... and up to this many bytes (wire bytes plus text) in all.
_RENDER_CACHE_BYTES = 8 * 1024 * 1024


class YamlWriter:
    """Renders protobuf messages as block YAML (field names as in the .proto).

    Fields left at their default are omitted (proto3), enums are written by name,
    map entries sorted by key, bytes as text when they are UTF-8 (else `!!binary`),
    and fields marked `debug_redact` as `"(redacted)"`. `yaml.safe_load` of the
    output gives back the message's data. Not thread-safe (one per writer).
    """

    def __init__(self, tick: Optional[Callable[[], None]] = None) -> None:
        # field descriptor -> (kind, render of its scalars or map values)
        self._plans: Dict[FieldDescriptor, Tuple[int, Callable[[Any], str]]] = {}
        self._strs: Dict[str, str] = {}
        self._tick = tick  # called once per (sub)message: lets the writer pause

    def lines(self, message: Message, indent: str = "") -> List[str]:
        """The YAML lines of `message`, each starting with `indent`; `{}` when empty."""
        out: List[str] = []
        self._fields(message, indent, out)
        if not out:
            out.append(indent + "{}")
        return out

    def str(self, s: str) -> str:
        """`yaml_str(s)`, remembered for short strings (names, labels, paths repeat)."""
        text = self._strs.get(s)
        if text is None:
            text = yaml_str(s)
            if len(s) <= _CACHED_STR_LEN:
                if len(self._strs) >= _STR_CACHE_SIZE:
                    self._strs.clear()
                self._strs[s] = text
        return text

    def _render(self, fd: FieldDescriptor) -> Callable[[Any], str]:
        t = fd.type
        if t == _FT.TYPE_STRING:
            return self.str
        if t == _FT.TYPE_BOOL:
            return _yaml_bool
        if t == _FT.TYPE_ENUM:
            names = {v.number: v.name for v in fd.enum_type.values}
            return lambda v: names.get(v) or str(v)
        if t == _FT.TYPE_BYTES:
            return _yaml_bytes
        if t in (_FT.TYPE_DOUBLE, _FT.TYPE_FLOAT):
            return _yaml_float
        return str

    def _plan(self, fd: FieldDescriptor) -> Tuple[int, Callable[[Any], str]]:
        mt = fd.message_type
        render: Callable[[Any], str] = str
        if fd.GetOptions().debug_redact:
            kind = _REDACTED
        elif mt is not None and mt.GetOptions().map_entry:
            vfd = mt.fields_by_name["value"]
            kind = _MAP_OF_MESSAGES if vfd.message_type is not None else _MAP
            if kind == _MAP:
                render = self._render(vfd)
        elif _is_repeated(fd):
            kind = _MESSAGES if mt is not None else _SCALARS
        else:
            kind = _MESSAGE if mt is not None else _SCALAR
        if kind in (_SCALAR, _SCALARS):
            render = self._render(fd)
        plan = self._plans[fd] = (kind, render)
        return plan

    def _key(self, k: Any) -> str:
        return (
            self.str(k)
            if isinstance(k, str)
            else _yaml_bool(k)
            if k is True or k is False
            else str(k)
        )

    def _fields(self, message: Message, indent: str, out: List[str]) -> None:
        if self._tick is not None:
            self._tick()
        plans = self._plans
        for fd, value in message.ListFields():
            kind, render = plans.get(fd) or self._plan(fd)
            if kind == _SCALAR:
                out.append(f"{indent}{fd.name}: {render(value)}")
            elif kind == _MESSAGE:
                self._message(f"{indent}{fd.name}:", value, indent + "  ", out)
            elif kind == _SCALARS:
                out.append(f"{indent}{fd.name}:")
                dash = indent + "  - "
                out.extend([dash + render(item) for item in value])
            elif kind == _MESSAGES:
                out.append(f"{indent}{fd.name}:")
                dash = indent + "  - "
                sub = indent + "    "
                cut = len(sub)
                for item in value:
                    n = len(out)
                    self._fields(item, sub, out)
                    if len(out) == n:
                        out.append(dash + "{}")
                    else:
                        out[n] = dash + out[n][cut:]
            elif kind == _MAP:
                out.append(f"{indent}{fd.name}:")
                sub = indent + "  "
                for k in sorted(value):
                    out.append(f"{sub}{self._key(k)}: {render(value[k])}")
            elif kind == _MAP_OF_MESSAGES:
                out.append(f"{indent}{fd.name}:")
                sub = indent + "  "
                for k in sorted(value):
                    self._message(f"{sub}{self._key(k)}:", value[k], sub + "  ", out)
            else:
                out.append(f'{indent}{fd.name}: "(redacted)"')

    def _message(self, head: str, message: Message, indent: str, out: List[str]) -> None:
        n = len(out)
        out.append(head)
        self._fields(message, indent, out)
        if len(out) == n + 1:
            out[n] = head + " {}"


# --- records -----------------------------------------------------------------------


class _Method:
    """What the dump knows about one method path (cached per rule set)."""

    __slots__ = ("info", "level", "name", "qualifier", "want")

    def __init__(self, path: str, rules: Rules) -> None:
        self.info = cri_methods.METHODS.get(path)
        self.name = cri_methods.short_name(path)
        self.level = rules.level(self.name)
        self.qualifier = _qualifier_kind(self.info)
        if self.level == OFF:
            self.want = relay.WANT_NONE
        elif self.level == COUNT:
            self.want = relay.WANT_STATUS
        elif self.level == FULL or self.qualifier is not None:
            self.want = relay.WANT_MESSAGES
        else:
            self.want = relay.WANT_STATUS

    @classmethod
    def fixed(cls, path: str, level: str) -> _Method:
        """The entry of `path` at a given level (the writer process gets levels, not rules)."""
        return cls(path, Rules((DumpRule(level, cri_methods.short_name(path), True),)))


_SPECIAL_QUALIFIERS = frozenset(
    {"RunPodSandbox", "RestorePod", "CreateContainer", "PullImage", "ImageStatus", "RemoveImage"}
)


def _qualifier_kind(info: Optional[cri_methods.MethodInfo]) -> Optional[str]:
    """Where the qualifier of a method's calls comes from; None: it has none."""
    if info is None:
        return None
    if info.name in _SPECIAL_QUALIFIERS:
        return info.name
    fields = info.request.DESCRIPTOR.fields_by_name
    if "container_id" in fields:
        return "container"
    if "pod_sandbox_id" in fields:
        return "sandbox"
    return None


def _pod_name(meta: Any) -> str:
    """`namespace/name` of a PodSandboxMetadata ("" when it has no name)."""
    if not meta.name:
        return ""
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def _labels_pod(labels: Any) -> str:
    pod = labels.get(_LABEL_POD, "")
    if not pod:
        return ""
    ns = labels.get(_LABEL_NAMESPACE, "")
    return f"{ns}/{pod}" if ns else pod


class Names:
    """Bounded (least recently used out) memory of container and sandbox qualifiers.

    A container's qualifier is `namespace/pod:container`, a sandbox's `namespace/pod`;
    learned from the calls the dump decodes (RunPodSandbox, CreateContainer, list and
    status replies). Used by the writer thread only.
    """

    def __init__(self, size: int = DEFAULT_NAMES_SIZE) -> None:
        self.size = size
        self._containers: OrderedDict[str, str] = OrderedDict()
        self._sandboxes: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _get(table: OrderedDict[str, str], key: str) -> Optional[str]:
        value = table.get(key)
        if value is not None:
            table.move_to_end(key)
        return value

    def _put(self, table: OrderedDict[str, str], key: str, value: str) -> None:
        if not key or not value:
            return
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.size:
            table.popitem(last=False)

    def container(self, cid: str) -> Optional[str]:
        return self._get(self._containers, cid)

    def sandbox(self, sid: str) -> Optional[str]:
        return self._get(self._sandboxes, sid)

    def add_container(self, cid: str, qualifier: str) -> None:
        self._put(self._containers, cid, qualifier)

    def add_sandbox(self, sid: str, qualifier: str) -> None:
        self._put(self._sandboxes, sid, qualifier)

    def forget_container(self, cid: str) -> None:
        self._containers.pop(cid, None)

    def forget_sandbox(self, sid: str) -> None:
        self._sandboxes.pop(sid, None)

    def learn(self, message: Message) -> None:
        """Remember the containers and sandboxes a list or status reply describes."""
        name = message.DESCRIPTOR.name
        if name in ("ListContainersResponse", "StreamContainersResponse"):
            for c in message.containers:
                self._learn_container(c.id, c.labels, c.metadata.name)
        elif name == "ContainerStatusResponse":
            s = message.status
            self._learn_container(s.id, s.labels, s.metadata.name)
        elif name in ("ListPodSandboxResponse", "StreamPodSandboxesResponse"):
            for item in message.items:
                self.add_sandbox(item.id, _pod_name(item.metadata))
        elif name == "PodSandboxStatusResponse":
            self.add_sandbox(message.status.id, _pod_name(message.status.metadata))

    def _learn_container(self, cid: str, labels: Any, name: str) -> None:
        container = labels.get(_LABEL_CONTAINER, "") or name
        pod = _labels_pod(labels)
        self.add_container(cid, f"{pod}:{container}" if pod else container)


class _Decoded:
    """The messages of one side of a call (and their bytes), or why there are none."""

    __slots__ = ("messages", "note", "raw")

    def __init__(self, messages: List[Message], note: str = "", raw: Sequence[bytes] = ()) -> None:
        self.messages = messages
        self.note = note
        self.raw = raw


def _decode(payload: Optional[bytes], cls: Optional[type[Message]]) -> _Decoded:
    if payload is None:
        return _Decoded([])
    if cls is None:
        return _Decoded([], f"({len(payload)} bytes of an unknown method, not decoded)")
    messages: List[Message] = []
    raw: List[bytes] = []
    try:
        for compressed, data in http2.grpc_messages(payload):
            if compressed:
                return _Decoded(messages, f"(compressed message of {len(data)} bytes)", raw)
            messages.append(cls.FromString(data))
            raw.append(data)
    except Exception as exc:  # noqa: BLE001 - whatever is on the wire, the dump goes on
        return _Decoded(messages, f"(undecodable: {exc})", raw)
    return _Decoded(messages, "", raw)


class Formatter:
    """Turns finished calls into dump records (text); keeps the `Names` it learns."""

    def __init__(
        self, names_size: int = DEFAULT_NAMES_SIZE, tick: Optional[Callable[[], None]] = None
    ) -> None:
        self.names = Names(names_size)
        self.yaml = YamlWriter(tick)
        # (message class, wire bytes) -> YAML text: kubelet repeats identical messages
        # (status polls, relists), and rendering is most of the writer's work
        self._rendered: Dict[Tuple[type, bytes], str] = {}
        self._rendered_size = 0
        self._sec = -1
        self._sec_text = ""

    def timestamp(self, wall: float) -> str:
        ms = int(wall * 1000)
        sec, ms = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._sec_text}.{ms:03d}Z"

    def format(self, method: _Method, record: relay.CallRecord) -> Tuple[str, str]:
        """The request and the reply record of a call at `method.level` (name or full)."""
        info = method.info
        full = method.level == FULL
        request = reply = _Decoded([])
        if info is not None and (full or method.qualifier is not None):
            request = _decode(record.request, info.request)
            reply = _decode(record.reply, info.response)
        elif full:
            request = _decode(record.request, None)
            reply = _decode(record.reply, None)
        qualifier = self._qualifier(method, record, request.messages, reply.messages)
        name = method.name + (" " + qualifier if qualifier else "")

        head = f"{self.timestamp(record.wall)}  => {name}"
        if record.hooked:
            head += " [hooked]"
        req_lines = [head]
        latency = record.end - record.start
        head = f"{self.timestamp(record.wall + latency)}  <= {name} ({format_latency(latency)})"
        if info is not None and info.server_streaming and record.reply is not None:
            head += f" {len(reply.messages)} messages"
        if record.code:
            details = record.details.replace("\n", "\\n")
            head += f" ERROR {code_name(record.code)}: {details}"
        rep_lines = [head]
        if full:
            stream = info is not None and info.server_streaming
            self._body(request, False, req_lines)
            self._body(reply, stream, rep_lines)
        return "\n".join(req_lines), "\n".join(rep_lines)

    def _body(self, decoded: _Decoded, stream: bool, out: List[str]) -> None:
        for i, (message, data) in enumerate(zip(decoded.messages, decoded.raw)):
            if stream:
                out.append(f"{_INDENT}--- # message {i + 1}")
            out.append(self.render(message, data))
        if decoded.note:
            out.append(_INDENT + "# " + decoded.note)

    def render(self, message: Message, data: bytes) -> str:
        """The YAML of `message` (wire bytes `data`), indented by 4, remembered."""
        key = (type(message), data)
        text = self._rendered.get(key)
        if text is None:
            text = "\n".join(self.yaml.lines(message, _INDENT))
            if len(data) <= _RENDER_CACHE_ITEM:
                size = len(data) + len(text)
                if self._rendered_size + size > _RENDER_CACHE_BYTES:
                    self._rendered.clear()
                    self._rendered_size = 0
                self._rendered[key] = text
                self._rendered_size += size
        return text

    def _qualifier(
        self,
        method: _Method,
        record: relay.CallRecord,
        requests: List[Message],
        replies: List[Message],
    ) -> str:
        names = self.names
        for reply in replies:
            names.learn(reply)
        kind = method.qualifier
        if kind is None or not requests:
            return ""
        req = requests[0]
        ok = record.code == 0 and bool(replies)
        if kind == "container":
            cid = req.container_id
            qualifier = names.container(cid) or cid[:_SHORT_ID]
            if ok and method.name == "RemoveContainer":
                names.forget_container(cid)
            return qualifier
        if kind == "sandbox":
            sid = req.pod_sandbox_id
            qualifier = names.sandbox(sid) or sid[:_SHORT_ID]
            if ok and method.name == "RemovePodSandbox":
                names.forget_sandbox(sid)
            return qualifier
        if kind == "CreateContainer":
            pod = _pod_name(req.sandbox_config.metadata) or names.sandbox(req.pod_sandbox_id)
            container = req.config.metadata.name
            qualifier = f"{pod}:{container}" if pod else container
            names.add_sandbox(req.pod_sandbox_id, pod or "")
            if ok:
                names.add_container(replies[0].container_id, qualifier)
            return qualifier
        if kind in ("RunPodSandbox", "RestorePod"):
            qualifier = _pod_name(req.config.metadata)
            if ok:
                names.add_sandbox(replies[0].pod_sandbox_id, qualifier)
            return qualifier
        # PullImage, ImageStatus, RemoveImage
        return req.image.image

    def summary(
        self,
        now: float,
        since: float,
        counts: Sequence[Tuple[str, List[Any]]],
        stats: Dict[str, int],
    ) -> str:
        """The `==` record: per-method call and error counts, and the dump's own."""
        lines = [f"{self.timestamp(now)}  == counts since {self.timestamp(since)}"]
        if not counts:
            lines.append(f"{_INDENT}no calls counted")
        for name, (calls, errs, by_code) in sorted(counts):
            line = f"{_INDENT}{name}: {calls} calls, {errs} errors"
            if by_code:
                line += (
                    " ("
                    + ", ".join(f"{code_name(c)} {n}" for c, n in sorted(dict(by_code).items()))
                    + ")"
                )
            lines.append(line)
        lines.append(
            f"{_INDENT}dump: {stats['written']} calls written, "
            f"{stats['dropped']} dropped (queue full), {stats['failed']} failed to write"
        )
        return "\n".join(lines)


# --- the dump ----------------------------------------------------------------------


class _Pacer:
    """Keeps each hold of the GIL by the writer short while the relay is busy."""

    __slots__ = ("busy", "pauses", "slice_end")

    def __init__(self, busy: Callable[[], bool]) -> None:
        self.busy = busy
        self.pauses = 0
        self.slice_end = 0.0

    def start(self) -> None:
        self.slice_end = time.perf_counter() + _SLICE

    def tick(self) -> None:
        if time.perf_counter() < self.slice_end:
            return
        if self.busy():
            time.sleep(_PAUSE)
            self.pauses += 1
        self.slice_end = time.perf_counter() + _SLICE


class _Control:
    """A request to the writer thread, ordered with the records queued before it."""

    __slots__ = ("arg", "done", "op")

    def __init__(self, op: str, arg: Any = None) -> None:
        self.op = op
        self.arg = arg
        self.done = threading.Event()


def _not_a_file(mode: int) -> str:
    """Why a file of `mode` cannot take the dump ("" when it can: a regular file or a
    character device such as /dev/null)."""
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode):
        return ""
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"it is {kind}; the dump is written to a regular file (or a device such as /dev/null)"


def open_dump_file(path: str) -> int:
    """Open `path` for appending, created with mode 0600; tighten a looser mode.

    Returns the file descriptor. Raises DumpError naming the path on failure. A FIFO
    is refused without waiting for a reader (opening one would block the service).
    """
    try:
        why = _not_a_file(os.stat(path).st_mode)
    except OSError:
        why = ""  # missing (created below) or unreachable (the open says why)
    if why:
        raise DumpError(f"dump file {path}: {why}")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise DumpError(f"dump file {path}: cannot open for appending: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        why = _not_a_file(st.st_mode)  # replaced since the check above
        if why:
            os.close(fd)
            raise DumpError(f"dump file {path}: {why}")
        os.set_blocking(fd, True)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            log.warning(
                "dump file %s had mode %04o; changing it to 0600 (the dump holds "
                "container environments)",
                path,
                stat.S_IMODE(st.st_mode),
            )
            os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise DumpError(f"dump file {path}: cannot make it mode 0600: {exc.strerror}") from None
    return fd


class Dump(relay.Observer):
    """The dump: a relay observer with a writer thread.

    `rules` are the effective `DumpRule`s (`Config.dump_rules`); `path` the dump file,
    None or "" for the `cri_resmgr.dump` logger (one INFO log record per dump record).
    `queue_size` (records) and `queue_bytes` (message bytes) bound the queue between
    the relay and the writer.

    Lifecycle: `start()` opens the file (raises DumpError) and starts the writer;
    `stop()` writes what is queued, the count summary (when anything is counted) and
    closes. Live changes: `set_rules()` (then let the relay ask `wants()` again:
    `relay.set_observers(...)`), `set_path()`, `reopen()` (logrotate),
    `write_summary()` (SIGUSR2) and `set_log_level()` (for `dumpproc.ProcessDump`).
    All of these return at once and are safe to call from the event loop; the work
    happens in the writer, in order with queued records.
    """

    def __init__(
        self,
        rules: Sequence[DumpRule],
        path: Optional[str] = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        names_size: int = DEFAULT_NAMES_SIZE,
        *,
        paced: bool = True,
    ) -> None:
        compiled = Rules(rules)
        # (rules, per-path cache), replaced as one by set_rules()
        self._state: Tuple[Rules, Dict[str, _Method]] = (compiled, {})
        self.path: Optional[str] = path or None
        self.queue_size = max(1, queue_size)
        self.queue_bytes = max(1, queue_bytes)
        # records (appended by observe(), no lock, no wake-up) and control requests
        self._items: Deque[Union[Tuple[_Method, relay.CallRecord], _Control]] = deque()
        self._wake = threading.Event()  # set by control requests only
        # Each counter is written by one thread only: the observing thread (event loop)
        # or the writer.
        self._enqueued = 0
        self._enqueued_bytes = 0
        self._dequeued = 0
        self._dequeued_bytes = 0
        self._dropped = 0
        self._dropped_elsewhere = 0  # add_dropped(): in `!! dropped` lines, not in stats()
        self._written = 0  # writer
        self._failed = 0  # writer
        self._counts: Dict[str, List[Any]] = {}  # short name -> [calls, errors, {code: n}]
        self._since = time.time()
        # paced: share the GIL politely with a relay in the same process
        self._pacer = _Pacer(self._relay_busy if paced else (lambda: False))
        self._seen = 0  # writer: self._enqueued when it last looked
        self._formatter = Formatter(names_size, self._pacer.tick)
        self._fd: Optional[int] = None  # writer (and start/stop)
        self._out_path: Optional[str] = self.path  # writer: where _fd points, None = log
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._drops_written = 0  # writer
        self._drop_warned = 0.0  # writer
        self._write_failing = False  # writer

    # -- configuration

    @property
    def rules(self) -> Tuple[DumpRule, ...]:
        return self._state[0].rules

    def set_rules(self, rules: Sequence[DumpRule]) -> None:
        """Replace the rules; takes effect for calls observed from now on."""
        self._state = (Rules(rules), {})

    def set_path(self, path: Optional[str]) -> bool:
        """Write to `path` from now on (None or "": the log); the same path is reopened.

        The new file is opened here; when that fails the error is logged, the dump
        keeps its current destination and False is returned.
        """
        path = path or None
        if path == self.path:
            if path is not None:
                self.reopen()
            return True
        fd: Optional[int] = None
        if path is not None and self._thread is not None:
            try:
                fd = open_dump_file(path)
            except DumpError as exc:
                log.error("%s; the dump keeps going to %s", exc, self.path or "the log")
                return False
        self.path = path
        if self._thread is not None:
            self._post(_Control("swap", (path, fd)))
        else:
            self._out_path = path
        return True

    def reopen(self) -> None:
        """Close and reopen the dump file (after logrotate moved it)."""
        self._post(_Control("reopen"))

    def write_summary(self) -> None:
        """Write the per-method call and error counts (level `count`) to the dump."""
        self._post(_Control("summary"))

    def write_summary_of(
        self, counts: Sequence[Tuple[str, List[Any]]], stats: Dict[str, int], since: float
    ) -> None:
        """Write a summary of counts kept elsewhere (the service's, in the writer process).

        `stats` are the dump counters (`written`, `dropped`, `failed`) kept elsewhere;
        this dump's own, as they are when the summary is written, are added to them.
        """
        self._post(_Control("summary", (counts, stats, since)))

    def add_dropped(self, calls: int) -> None:
        """Note calls dropped before they reached this dump: its next `!! dropped` line
        counts them with its own drops, but `stats()` does not (whoever dropped them
        counts them)."""
        self._dropped_elsewhere += calls

    def set_log_level(self, level: Optional[int] = None) -> None:
        """Log at `level` (None: the loggers' own level). Nothing to do here: this dump
        logs in this process; `dumpproc.ProcessDump` passes the level on to its child."""

    # -- lifecycle

    def start(self) -> None:
        """Open the dump file and start the writer thread. Raises DumpError."""
        if self._thread is not None:
            return
        if self.path is not None:
            self._fd = open_dump_file(self.path)
        self._out_path = self.path
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cri-dump", daemon=True)
        self._thread.start()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        if self._thread is None:
            return False
        control = _Control("flush")
        self._post(control)
        return control.done.wait(timeout)

    def stop(self, timeout: float = 10.0, summary: Optional[bool] = None) -> None:
        """Write what is queued and the count summary (by default when anything is
        counted), close the file, end the writer."""
        thread = self._thread
        if thread is None or self._closed:
            return
        self._closed = True
        if summary is None:
            summary = self._state[0].counts_any or bool(self._counts)
        control = _Control("stop", summary)
        self._post(control)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("dump writer did not finish within %.1fs; records may be lost", timeout)
        self._thread = None

    # -- the observer side (event loop: O(1), never blocks)

    def _method(self, path: str) -> _Method:
        rules, cache = self._state
        entry = cache.get(path)
        if entry is None:
            entry = cache[path] = _Method(path, rules)
        return entry

    def level(self, method: str) -> str:
        """The level of method `method` (full path or short name) under the current rules."""
        if method.startswith("/"):
            return self._method(method).level
        return self._state[0].level(method)

    def wants(self, method: str) -> int:
        return self._method(method).want

    def observe(self, record: relay.CallRecord) -> None:
        rules, cache = self._state
        entry = cache.get(record.method)
        if entry is None:
            entry = cache[record.method] = _Method(record.method, rules)
        level = entry.level
        if level == OFF or self._closed:
            return
        self.enqueue(entry, record)

    def enqueue(self, entry: _Method, record: relay.CallRecord) -> None:
        """Count or queue a call at `entry.level` (not off); drop it when the queue is full."""
        level = entry.level
        if level == COUNT:
            counts = self._counts.get(entry.name)
            if counts is None:
                counts = self._counts[entry.name] = [0, 0, {}]
            counts[0] += 1
            if record.code:
                counts[1] += 1
                counts[2][record.code] = counts[2].get(record.code, 0) + 1
            return
        size = (len(record.request) if record.request is not None else 0) + (
            len(record.reply) if record.reply is not None else 0
        )
        pending = self._enqueued - self._dequeued
        if pending >= self.queue_size or (
            pending and self._enqueued_bytes - self._dequeued_bytes + size > self.queue_bytes
        ):
            self._dropped += 1
            return
        self._enqueued += 1
        self._enqueued_bytes += size
        self._items.append((entry, record))

    def stats(self) -> Dict[str, int]:
        """Calls `queued` (waiting), `written`, `dropped` (queue full), `failed` (I/O error)."""
        return {
            "queued": self._enqueued - self._dequeued,
            "written": self._written,
            "dropped": self._dropped,
            "failed": self._failed,
        }

    def counts(self) -> Dict[str, Tuple[int, int]]:
        """(calls, errors) per short method name of the methods at level `count`."""
        return {name: (c[0], c[1]) for name, c in list(self._counts.items())}

    # -- the writer thread

    def _post(self, control: _Control) -> None:
        self._items.append(control)
        self._wake.set()

    def _relay_busy(self) -> bool:
        """True when calls were observed since the writer last asked."""
        n = self._enqueued
        busy = n != self._seen
        self._seen = n
        return busy

    def _run(self) -> None:
        poll = _POLL_MIN
        while True:
            self._wake.wait(poll)
            self._wake.clear()
            if not self._items:
                poll = min(poll * 2, _POLL_MAX)
                continue
            poll = _POLL_MIN
            try:
                if self._drain():
                    return
            except Exception:  # noqa: BLE001 - keep dumping; a record is lost, not the dump
                log.exception("dump writer failed; going on")

    def _drain(self) -> bool:
        """Write everything queued, in order; True when a stop request was among it."""
        items = self._items
        pacer = self._pacer
        self._seen = self._enqueued
        pacer.start()
        out: List[str] = []
        calls = size = 0
        while items:
            item = items.popleft()
            if isinstance(item, _Control):
                self._emit(out, calls)
                out, calls, size = [], 0, 0
                if self._control(item):
                    return True
                continue
            entry, record = item
            texts = self._format(entry, record)
            self._dequeued_bytes += (len(record.request) if record.request is not None else 0) + (
                len(record.reply) if record.reply is not None else 0
            )
            self._dequeued += 1
            out.extend(texts)
            calls += 1
            size += sum(len(t) for t in texts)
            if size >= _WRITE_CHUNK or time.perf_counter() >= pacer.slice_end:
                self._emit(out, calls)  # a write (GIL released) before a possible pause
                out, calls, size = [], 0, 0
                pacer.tick()
        self._emit(out, calls)
        self._report_drops()
        return False

    def _format(self, entry: _Method, record: relay.CallRecord) -> Tuple[str, ...]:
        try:
            return self._formatter.format(entry, record)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the dump
            log.debug("dump: cannot format a %s record", entry.name, exc_info=True)
            ts = self._formatter.timestamp(record.wall)
            return (f"{ts}  <= {entry.name} (record not formatted: {exc!r})",)

    def _report_drops(self) -> None:
        dropped = self._dropped + self._dropped_elsewhere
        if dropped == self._drops_written:
            return
        n = dropped - self._drops_written
        self._drops_written = dropped
        now = time.time()
        self._emit([f"{self._formatter.timestamp(now)}  !! dropped {n} calls (queue full)"])
        if self._out_path is not None and now - self._drop_warned >= _DROP_WARN_INTERVAL:
            self._drop_warned = now
            log.warning("dump: dropped %d calls, the writer cannot keep up (queue full)", n)

    def _control(self, control: _Control) -> bool:
        """Carry out a control request; True when the writer is to end."""
        try:
            if control.op == "reopen":
                self._reopen()
            elif control.op == "swap":
                self._close()
                self._out_path, self._fd = control.arg
            elif control.op == "summary":
                if control.arg is None:
                    self._emit([self._summary()])
                else:
                    counts, elsewhere, since = control.arg
                    own = self.stats()
                    stats = {
                        k: elsewhere.get(k, 0) + own[k] for k in ("written", "dropped", "failed")
                    }
                    self._emit([self._formatter.summary(time.time(), since, counts, stats)])
            elif control.op == "stop":
                self._report_drops()
                if control.arg:
                    self._emit([self._summary()])
                self._close()
                return True
            elif control.op == "flush":
                self._report_drops()
            return False
        finally:
            control.done.set()

    def _summary(self) -> str:
        return self._formatter.summary(
            time.time(), self._since, list(self._counts.items()), self.stats()
        )

    def _reopen(self) -> None:
        if self._out_path is None:
            return
        try:
            fd = open_dump_file(self._out_path)
        except DumpError as exc:
            log.error("%s; still writing to the file opened before", exc)
            return
        self._close()
        self._fd = fd
        self._write_failing = False

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                log.warning("dump file %s: close: %s", self._out_path, exc.strerror)
            self._fd = None

    def _emit(self, texts: List[str], calls: int = 0) -> None:
        """Write records (texts of one or more lines) of `calls` calls to the file or log."""
        if not texts:
            return
        fd = self._fd
        if fd is None:
            if self._out_path is None:
                for text in texts:
                    log.info("%s", text)
                self._written += calls
            else:
                self._failed += calls  # no file (the path could not be opened)
            return
        data = ("\n".join(texts) + "\n").encode("utf-8", "backslashreplace")
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            self._failed += calls
            if not self._write_failing:
                self._write_failing = True
                log.warning(
                    "dump file %s: write: %s; records are lost", self._out_path, exc.strerror
                )
            return
        self._write_failing = False
        self._written += calls
