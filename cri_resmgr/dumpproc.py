"""The dump, formatted and written by a child process.

Ownership: moving the dump's expensive part (decoding CRI messages, rendering YAML,
writing the file) out of the service's process. In the service a writer *thread* would
share the interpreter lock with the relay's event loop: a full dump of large replies
(ListContainers of a busy node) then slowed every CRI call. `ProcessDump` is a
`dump.Dump` whose writer thread only ships what `observe()` queued, in order, as
length-prefixed pickles over a pipe to `python -m cri_resmgr.dumpproc`. That child
(niced, so the relay and the runtime come first) runs an ordinary threaded `Dump` that
formats and writes; it reports its counters back over another pipe.

Nothing changes for the caller: the same API, the same bounded queue in the service
(calls are dropped and counted, never waited for), the same records and file. If the
child dies, the writer starts a new one and counts the calls it lost as dropped.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any, Dict, List, Optional, Tuple

from cri_resmgr import dump, relay
from cri_resmgr.config import DumpRule

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
#: Calls shipped in one message at most.
_BATCH = 256
#: Seconds between the child's counter reports while it has work.
_REPORT = 0.5
#: niceness of the child: the relay and the runtime come first.
_NICE = 19


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _recv(stream: IO[bytes]) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    data = stream.read(_LEN.unpack(head)[0])
    return pickle.loads(data)  # noqa: S301 - our own child/parent, over our own pipe


def _record_tuple(record: relay.CallRecord) -> Tuple[Any, ...]:
    return (
        record.method,
        record.start,
        record.end,
        record.wall,
        record.code,
        record.details,
        record.request,
        record.reply,
        record.hooked,
        record.runtime,
    )


class ProcessDump(dump.Dump):
    """A `dump.Dump` whose records are formatted and written by a child process."""

    def __init__(self, rules: Any, path: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(rules, path, **kwargs)
        self._child: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._child_stats: Dict[str, int] = {"written": 0, "failed": 0, "dropped": 0}
        self._base_stats: Dict[str, int] = dict(self._child_stats)  # of children gone
        self._acks: Dict[int, threading.Event] = {}
        self._lost = 0  # calls lost with a child that died
        self._ack_lock = threading.Lock()

    # -- lifecycle (the writer thread of dump.Dump is the sender here)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.path is not None:
            os.close(dump.open_dump_file(self.path))  # the error, if any, is raised here
        self._spawn()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cri-dump-send", daemon=True)
        self._thread.start()

    def set_path(self, path: Optional[str]) -> bool:
        path = path or None
        if path is not None and path != self.path:
            try:
                os.close(dump.open_dump_file(path))
            except dump.DumpError as exc:
                dump.log.error("%s; the dump keeps going to %s", exc, self.path or "the log")
                return False
        if path == self.path:
            if path is not None:
                self.reopen()
            return True
        self.path = path
        self._post(dump._Control("swap", path))
        return True

    def set_rules(self, rules: Any) -> None:
        super().set_rules(rules)
        self._post(dump._Control("rules", tuple(rules)))

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        child = self._child
        if child is not None:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("dump writer process did not finish within %.1fs; killed", timeout)
                child.kill()
                child.wait()
        if self._reader is not None:
            self._reader.join(timeout)

    def stats(self) -> Dict[str, int]:
        child, base = self._child_stats, self._base_stats
        return {
            "queued": self._enqueued - self._dequeued,
            "written": base["written"] + child["written"],
            "dropped": self._dropped + self._lost + base["dropped"] + child["dropped"],
            "failed": base["failed"] + child["failed"],
        }

    # -- the child

    def _spawn(self) -> None:
        for key, value in self._child_stats.items():  # what the previous child did
            self._base_stats[key] += value
        self._child_stats = {key: 0 for key in self._child_stats}
        rules = tuple(self.rules)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "cri_resmgr.dumpproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._child.stdin is not None
        _send(
            self._child.stdin,
            ("init", rules, self.path, logging.getLogger("cri_resmgr").getEffectiveLevel()),
        )
        self._reader = threading.Thread(
            target=self._read, args=(self._child,), name="cri-dump-recv", daemon=True
        )
        self._reader.start()

    def _read(self, child: subprocess.Popen) -> None:
        """Counters and flush acknowledgements from the child."""
        assert child.stdout is not None
        while True:
            try:
                kind, *args = _recv(child.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                return
            if kind == "stats":
                if child is self._child:  # not a late word from a child replaced since
                    self._child_stats = args[0]
            elif kind == "ack":
                with self._ack_lock:
                    event = self._acks.pop(args[0], None)
                if event is not None:
                    event.set()

    def _ship(self, message: Any, calls: int = 0) -> bool:
        """Send one message; on a dead child start another. False if it was lost."""
        for attempt in (1, 2):
            child = self._child
            try:
                assert child is not None and child.stdin is not None
                _send(child.stdin, message)
                return True
            except (BrokenPipeError, OSError, AssertionError):
                if self._closed and message[0] == "stop":
                    return False
                log.error(
                    "dump writer process exited (%s); starting a new one",
                    child.poll() if child is not None else "none",
                )
                self._spawn()
                if attempt == 2:
                    break
        self._lost += calls
        return False

    # -- the writer thread: ship instead of format

    def _drain(self) -> bool:
        items = self._items
        batch: List[Tuple[Any, ...]] = []
        while items:
            item = items.popleft()
            if isinstance(item, dump._Control):
                self._flush_batch(batch)
                batch = []
                if self._control(item):
                    return True
                continue
            entry, record = item
            self._dequeued += 1
            self._dequeued_bytes += (len(record.request) if record.request is not None else 0) + (
                len(record.reply) if record.reply is not None else 0
            )
            batch.append((entry.level, _record_tuple(record)))
            if len(batch) >= _BATCH:
                self._flush_batch(batch)
                batch = []
        self._flush_batch(batch)
        if self._dropped != self._drops_written:
            n = self._dropped - self._drops_written
            self._drops_written = self._dropped
            self._ship(("dropped", n))
        return False

    def _flush_batch(self, batch: List[Tuple[Any, ...]]) -> None:
        if batch:
            self._ship(("records", batch), len(batch))

    def _control(self, control: dump._Control) -> bool:
        try:
            op = control.op
            if op == "flush":
                event = threading.Event()
                token = id(event)
                with self._ack_lock:
                    self._acks[token] = event
                if self._ship(("flush", token)):
                    event.wait(30)
            elif op == "summary":
                self._ship(("summary", self._summary_counts(), self.stats(), self._since))
            elif op == "stop":
                summary = (
                    (self._summary_counts(), self.stats(), self._since) if control.arg else None
                )
                self._ship(("stop", summary))
                child = self._child
                if child is not None and child.stdin is not None:
                    child.stdin.close()
                return True
            else:  # reopen, swap, rules
                self._ship((op, control.arg))
            return False
        finally:
            control.done.set()

    def _summary_counts(self) -> List[Tuple[str, List[Any]]]:
        return [(name, [c[0], c[1], dict(c[2])]) for name, c in list(self._counts.items())]


# --- the child process -----------------------------------------------------------------


class _Child:
    """The child's side: a threaded `dump.Dump` fed from stdin."""

    def __init__(self, rules: Tuple[DumpRule, ...], path: Optional[str]) -> None:
        self.dump = dump.Dump(rules, path, paced=False)
        self.dump.start()
        self.entries: Dict[Tuple[str, str], dump._Method] = {}
        self.out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
        self.reported = 0.0

    def entry(self, path: str, level: str) -> dump._Method:
        key = (path, level)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = dump._Method.fixed(path, level)
        return entry

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.reported >= _REPORT:
            self.reported = now
            stats = self.dump.stats()
            _send(self.out, ("stats", {k: stats[k] for k in ("written", "failed", "dropped")}))

    def handle(self, message: Tuple[Any, ...]) -> bool:
        """One message from the parent; False at the end."""
        kind = message[0]
        d = self.dump
        if kind == "records":
            for level, fields in message[1]:
                d.enqueue(self.entry(fields[0], level), relay.CallRecord(*fields))
        elif kind == "rules":
            d.set_rules(message[1])
        elif kind == "swap":
            d.set_path(message[1])
        elif kind == "reopen":
            d.reopen()
        elif kind == "dropped":
            d.add_dropped(message[1])
        elif kind == "summary":
            d.write_summary_of(*message[1:])
        elif kind == "flush":
            d.flush(30)
            self.report(force=True)
            _send(self.out, ("ack", message[1]))
        elif kind == "stop":
            if message[1] is not None:
                d.write_summary_of(*message[1])
            d.stop(summary=False)  # the service's counts came with the message
            self.report(force=True)
            return False
        self.report()
        return True


def main() -> int:
    """`python -m cri_resmgr.dumpproc`: the dump's writer process (started by the service)."""
    try:
        os.nice(_NICE)
    except OSError:
        pass
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
    try:
        kind, rules, path, level = _recv(stdin)
    except EOFError:
        return 0
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("cri_resmgr").setLevel(level or logging.INFO)
    child = _Child(rules, path)
    while True:
        try:
            message = _recv(stdin)
        except EOFError:
            child.dump.stop()
            return 0
        if not child.handle(message):
            return 0


if __name__ == "__main__":
    sys.exit(main())
