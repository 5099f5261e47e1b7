"""The dump, formatted and written by a child process.

Ownership: moving the dump's expensive part (decoding CRI messages, rendering YAML,
writing the file) out of the service's process. In the service a writer *thread* would
share the interpreter lock with the relay's event loop: a full dump of large replies
(ListContainers of a busy node) then slowed every CRI call. `ProcessDump` is a
`dump.Dump` whose writer thread only ships what `observe()` queued, in order, as
pickles over a pipe to `python -m cri_resmgr.dumpproc`. That child (niced, so the relay
and the runtime come first) runs an ordinary threaded `Dump` that formats and writes;
it reports its counters back over another pipe.

Nothing changes for the caller: the same API, the same bounded queue in the service
(calls are dropped and counted, never waited for), the same records and file.

Counting. The service counts its own drops (queue full) and the calls lost with a
child that died (sent to it but never reported written); the child counts what it
wrote, failed to write and dropped itself. `stats()` adds the two; the service's drops
are also sent to the child, for its `!! dropped` lines only.

The child's life. If it dies, the writer starts a new one at once; if that one dies
too within `_BACKOFF_MAX` seconds, the next start waits, 0.5 s doubling up to
`_BACKOFF_MAX`, and calls are counted as dropped meanwhile (one error in the log per
outage). The child runs in a session of its own and ignores the signals meant for the
service (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2): the service decides when it ends,
by closing the pipe. When the service dies instead, the child writes what it got and
exits quietly (status 0, one warning).

Wire format, each way: a header (`>II`: pickle bytes, out-of-band buffers; then `>I`
per buffer: its bytes), the pickle (protocol 5), the buffers. Message bytes of at
least `_OUT_OF_BAND` bytes travel as out-of-band buffers: written from the record's own
bytes, not copied into the pickle, and `write` releases the interpreter lock while the
pipe takes them.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

from cri_resmgr import dump, logs, relay
from cri_resmgr.config import DumpRule

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">II")  # pickle bytes, out-of-band buffers
_LEN = struct.Struct(">I")  # bytes of one out-of-band buffer
_PROTOCOL = 5  # out-of-band buffers
#: Calls shipped in one message at most ...
_BATCH = 256
#: ... and message bytes (requests and replies): a batch stops growing at this size.
_BATCH_BYTES = 1024 * 1024
#: A request or reply of at least this many bytes is written from the record itself.
_OUT_OF_BAND = 64 * 1024
#: Seconds between two looks of the child's reporter thread at its counters.
_REPORT = 0.5
#: niceness of the child: the relay and the runtime come first.
_NICE = 19
#: Seconds before starting a child after one that died young: the shortest wait
#: (doubling with each further death) and the longest. A child that lived this
#: long at least is replaced at once.
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
#: Seconds a flush waits for the child's acknowledgement.
_FLUSH_WAIT = 30.0
#: Signals meant for the service (a terminal's Ctrl-C, `systemctl kill`, logrotate's
#: HUP): by default each would end the child, and the service would start another.
_IGNORED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
_COUNTERS = ("written", "failed", "dropped")


def _send(stream: IO[bytes], obj: Any) -> None:
    """Write `obj` as one message: header, pickle, out-of-band buffers (not joined)."""
    buffers: List[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=_PROTOCOL, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    stream.write(_HEAD.pack(len(data), len(views)) + b"".join(_LEN.pack(v.nbytes) for v in views))
    stream.write(data)
    for view in views:
        stream.write(view)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError
    return data


def _recv(stream: IO[bytes]) -> Any:
    """One message of `_send`; EOFError when the stream ends (also within a message)."""
    size, count = _HEAD.unpack(_read_exact(stream, _HEAD.size))
    lengths = struct.unpack(f">{count}I", _read_exact(stream, _LEN.size * count))
    data = _read_exact(stream, size)
    buffers = [_read_exact(stream, n) for n in lengths]
    return pickle.loads(data, buffers=buffers)  # noqa: S301 - our own child/parent, own pipe


def _payload(data: Optional[bytes]) -> Union[None, bytes, pickle.PickleBuffer]:
    if data is not None and len(data) >= _OUT_OF_BAND:
        return pickle.PickleBuffer(data)  # out of band: not copied into the pickle
    return data


def _record_tuple(record: relay.CallRecord) -> Tuple[Any, ...]:
    return (
        record.method,
        record.start,
        record.end,
        record.wall,
        record.code,
        record.details,
        _payload(record.request),
        _payload(record.reply),
        record.hooked,
        record.runtime,
    )


def _service_log_level() -> int:
    """The level of this process's dump loggers (the child logs under their names)."""
    return min(logging.getLogger(name).getEffectiveLevel() for name in (dump.log.name, log.name))


class _Writer:
    """One child process and what the service knows of it."""

    __slots__ = ("gone", "proc", "reader", "shipped", "started", "stats")

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.reader: Optional[threading.Thread] = None
        self.started = time.monotonic()
        self.stats: Dict[str, int] = dict.fromkeys(_COUNTERS, 0)  # as last reported
        self.shipped = 0  # calls sent to it (the sending thread)
        self.gone = False  # its output ended: it exited (set by the reader)

    def unaccounted(self) -> int:
        """Calls sent to it that it has not reported written, failed or dropped."""
        stats = self.stats
        return max(0, self.shipped - sum(stats[k] for k in _COUNTERS))


class ProcessDump(dump.Dump):
    """A `dump.Dump` whose records are formatted and written by a child process."""

    def __init__(
        self, rules: Sequence[DumpRule], path: Optional[str] = None, **kwargs: Any
    ) -> None:
        super().__init__(rules, path, **kwargs)
        self._writer: Optional[_Writer] = None
        self._base: Dict[str, int] = dict.fromkeys(_COUNTERS, 0)  # of children gone
        self._lost = 0  # calls lost with children that died or could not be started
        self._stats_lock = threading.Lock()  # _writer, _base, _lost as one for stats()
        self._acks: Dict[int, threading.Event] = {}
        self._ack_lock = threading.Lock()
        self._log_level: Optional[int] = None  # set_log_level(); None: the loggers' level
        self._failures = 0  # children that died young in a row (the sending thread)
        self._retry_at = 0.0  # monotonic: no new child before

    # -- lifecycle (the writer thread of dump.Dump is the sender here)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.path is not None:
            os.close(dump.open_dump_file(self.path))  # the error, if any, is raised here
        self._closed = False
        self._revive()  # a failure is logged; the sender tries again (back-off)
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

    def set_rules(self, rules: Sequence[DumpRule]) -> None:
        super().set_rules(rules)
        self._post(dump._Control("rules", tuple(rules)))

    def set_log_level(self, level: Optional[int] = None) -> None:
        """The writer process logs at `level` from now on (None: the level this process's
        dump loggers have now). Call it after the service's log levels changed (SIGUSR1,
        reload); the writer process is told in order with the queued records."""
        if level is None:
            level = _service_log_level()
        self._log_level = level
        self._post(dump._Control("level", level))

    def stop(self, timeout: float = 10.0, summary: Optional[bool] = None) -> None:
        super().stop(timeout, summary)  # the sender sent "stop" and closed the pipe
        w = self._writer
        if w is not None:
            self._reap(w, timeout)

    def stats(self) -> Dict[str, int]:
        service, child = self._counters()
        return {
            "queued": self._enqueued - self._dequeued,
            "written": service["written"] + child["written"],
            "dropped": service["dropped"] + child["dropped"],
            "failed": service["failed"] + child["failed"],
        }

    def _counters(self) -> Tuple[Dict[str, int], Dict[str, int]]:
        """(the service's part of the counters, the current child's as it last reported).

        The service's part: its drops, the calls lost with children, and what the
        children before the current one did.
        """
        with self._stats_lock:
            w = self._writer
            service = dict(self._base)
            lost = self._lost
            child = dict(w.stats) if w is not None else dict.fromkeys(_COUNTERS, 0)
            if w is not None and w.gone:
                lost += w.unaccounted()
        service["dropped"] += self._dropped + lost
        return service, child

    # -- the child

    def _popen(self) -> subprocess.Popen:
        """Start `python -m cri_resmgr.dumpproc`, in a session of its own (a terminal's
        signals for the service's process group do not reach it)."""
        return subprocess.Popen(
            [sys.executable, "-m", "cri_resmgr.dumpproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
        )

    def _spawn(self) -> _Writer:
        """Start a child and make it the current one; raises what starting it raised."""
        proc = self._popen()
        w = _Writer(proc)
        try:
            assert proc.stdin is not None
            level = self._log_level if self._log_level is not None else _service_log_level()
            _send(proc.stdin, ("init", tuple(self.rules), self.path, level))
            w.reader = threading.Thread(
                target=self._read, args=(w,), name="cri-dump-recv", daemon=True
            )
            w.reader.start()
        except BaseException:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            raise
        old = self._writer
        if old is not None:  # one stopped before (start after stop)
            self._fold(old)
        with self._stats_lock:
            self._writer = w
        return w

    def _revive(self) -> Optional[_Writer]:
        """Start a new child unless the dump is stopping or the back-off lasts."""
        if self._closed or time.monotonic() < self._retry_at:
            return None
        try:
            return self._spawn()
        except Exception as exc:  # noqa: BLE001 - EMFILE, ENOMEM, a child dead at once...
            self._child_failed(f"could not be started ({exc})", 0.0)
            return None

    def _current(self) -> Optional[_Writer]:
        """The child to send to: the current one while it runs, else a new one (or None)."""
        w = self._writer
        if w is not None and w.gone:
            self._retire(w)
            w = None
        return w if w is not None else self._revive()

    def _reap(self, w: _Writer, timeout: float) -> Optional[int]:
        """Wait for `w` to end (killed after `timeout`), collect its last reports;
        its exit status."""
        proc = w.proc
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("dump writer process did not finish within %.1fs; killed", timeout)
            proc.kill()
            code = proc.wait()
        if w.reader is not None:
            w.reader.join(max(timeout, 1.0))  # its output ended with it
        if proc.stdout is not None and (w.reader is None or not w.reader.is_alive()):
            proc.stdout.close()
        return code

    def _retire(self, w: _Writer) -> None:
        """`w` exited or its pipe broke: add up what it did and lost, plan the next one."""
        if w.proc.stdin is not None:
            try:
                w.proc.stdin.close()
            except OSError:
                pass  # a broken pipe: what was buffered for it is lost either way
        code = self._reap(w, 2.0)
        self._fold(w)
        self._child_failed(f"exited (status {code})", time.monotonic() - w.started)

    def _fold(self, w: _Writer) -> None:
        """Move what the child `w` did and lost into the service's counters."""
        with self._stats_lock:
            for key in _COUNTERS:
                self._base[key] += w.stats[key]
            self._lost += w.unaccounted()
            if self._writer is w:
                self._writer = None

    def _child_failed(self, what: str, lived: float) -> None:
        """A child `what` after `lived` seconds: log once per outage, set the back-off."""
        now = time.monotonic()
        if self._closed:
            log.warning("dump writer process %s while the dump stopped; calls were lost", what)
            return
        if self._failures == 0 or lived >= _BACKOFF_MAX:  # a new outage
            self._failures = 1
            self._retry_at = now
            log.error(
                "dump writer process %s; starting a new one (calls are counted as dropped "
                "until one runs)",
                what,
            )
            return
        self._failures += 1
        wait = min(_BACKOFF_MIN * 2 ** (self._failures - 2), _BACKOFF_MAX)
        self._retry_at = now + wait
        log.debug("dump writer process %s again; the next in %.1fs", what, wait)

    def _read(self, w: _Writer) -> None:
        """Counters and flush acknowledgements from the child `w`, until it ends."""
        assert w.proc.stdout is not None
        try:
            while True:
                try:
                    kind, *args = _recv(w.proc.stdout)
                except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                    return
                if kind == "stats":
                    w.stats = args[0]
                elif kind == "ack":
                    with self._ack_lock:
                        event = self._acks.pop(args[0], None)
                    if event is not None:
                        event.set()
        finally:
            w.gone = True
            with self._ack_lock:  # no acknowledgement is coming any more
                events = list(self._acks.values())
                self._acks.clear()
            for event in events:
                event.set()

    def _ship(self, message: Tuple[Any, ...], calls: int = 0) -> bool:
        """Send one message (carrying `calls` calls); on a dead child try a new one.

        False when it could not be sent: the calls are counted as lost (dropped).
        """
        for _attempt in (1, 2):
            w = self._current()
            if w is None:
                break
            try:
                assert w.proc.stdin is not None
                _send(w.proc.stdin, message)
            except (OSError, ValueError):  # a broken pipe, or the pipe was closed
                self._retire(w)
                continue
            w.shipped += calls
            return True
        self._lost += calls
        return False

    # -- the writer thread: ship instead of format

    def _drain(self) -> bool:
        items = self._items
        batch: List[Tuple[Any, ...]] = []
        size = 0
        while items:
            item = items.popleft()
            if isinstance(item, dump._Control):
                self._flush_batch(batch)
                batch, size = [], 0
                if self._control(item):
                    return True
                continue
            entry, record = item
            n = (len(record.request) if record.request is not None else 0) + (
                len(record.reply) if record.reply is not None else 0
            )
            self._dequeued += 1
            self._dequeued_bytes += n
            batch.append((entry.level, _record_tuple(record)))
            size += n
            if len(batch) >= _BATCH or size >= _BATCH_BYTES:
                self._flush_batch(batch)
                batch, size = [], 0
        self._flush_batch(batch)
        self._ship_drops()
        return False

    def _flush_batch(self, batch: List[Tuple[Any, ...]]) -> None:
        if batch:
            self._ship(("records", batch), len(batch))

    def _ship_drops(self) -> None:
        """Tell the child about calls dropped or lost here, for its `!! dropped` line."""
        total = self._dropped + self._lost
        if total != self._drops_written:
            n = total - self._drops_written
            self._drops_written = total
            self._ship(("dropped", n))

    def _control(self, control: dump._Control) -> bool:
        try:
            op = control.op
            if op == "flush":
                event = threading.Event()
                token = id(event)
                with self._ack_lock:
                    self._acks[token] = event
                if self._ship(("flush", token)):
                    event.wait(_FLUSH_WAIT)
                with self._ack_lock:
                    self._acks.pop(token, None)
            elif op == "summary":
                self._current()  # the counters of a child gone are the service's
                self._ship(("summary", self._summary_counts(), self._counters()[0], self._since))
            elif op == "stop":
                self._ship_drops()
                summary = None
                if control.arg:
                    self._current()
                    summary = (self._summary_counts(), self._counters()[0], self._since)
                self._ship(("stop", summary))
                w = self._writer
                if w is not None and w.proc.stdin is not None:
                    try:
                        w.proc.stdin.close()
                    except OSError:
                        pass
                return True
            else:  # reopen, swap, rules, level
                self._ship((op, control.arg))
            return False
        finally:
            control.done.set()

    def _summary_counts(self) -> List[Tuple[str, List[Any]]]:
        return [(name, [c[0], c[1], dict(c[2])]) for name, c in list(self._counts.items())]


# --- the child process -----------------------------------------------------------------


class _ServiceGone(Exception):
    """The service's end of a pipe closed: it exited (or was killed)."""


class _Child:
    """The child's side: a threaded `dump.Dump` fed from stdin."""

    def __init__(self, rules: Tuple[DumpRule, ...], path: Optional[str]) -> None:
        self.dump = dump.Dump(rules, path, paced=False)
        self.dump.start()
        self.entries: Dict[Tuple[str, str], dump._Method] = {}
        self.out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)  # writes all
        self.sent: Dict[str, int] = {}  # the counters last reported
        self._send_lock = threading.Lock()  # the main loop and the reporter send
        self._report_lock = threading.Lock()  # counters read and sent in order
        # Counters change after the message that caused them (the writer thread writes
        # later): the reporter sends them when no message comes to carry them.
        self._stopped = threading.Event()
        self._reporter_thread = threading.Thread(
            target=self._reporter, name="cri-dump-report", daemon=True
        )
        self._reporter_thread.start()

    def entry(self, path: str, level: str) -> dump._Method:
        key = (path, level)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = dump._Method.fixed(path, level)
        return entry

    def send(self, message: Tuple[Any, ...]) -> None:
        """A message to the service; raises _ServiceGone when its pipe is broken."""
        try:
            with self._send_lock:
                _send(self.out, message)
        except OSError as exc:
            null = os.open(os.devnull, os.O_WRONLY)  # what stays buffered goes nowhere,
            os.dup2(null, self.out.fileno())  # quietly, when the stream is closed
            os.close(null)
            raise _ServiceGone(f"the service went away ({exc.strerror or exc})") from None

    def report(self, force: bool = False) -> None:
        """Send the counters: always when ``force``, else only when they changed (the
        reporter thread asks every `_REPORT` seconds)."""
        with self._report_lock:
            stats = self.dump.stats()
            counters = {k: stats[k] for k in _COUNTERS}
            if force or counters != self.sent:
                self.sent = counters
                self.send(("stats", counters))

    def _reporter(self) -> None:
        """Every `_REPORT` seconds, the counters that changed, until `close()`."""
        while not self._stopped.wait(_REPORT):
            try:
                self.report()
            except _ServiceGone:
                return

    def close(self) -> None:
        """Stop the reporter (before the process exits: it writes to stdout)."""
        self._stopped.set()
        self._reporter_thread.join()

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
        elif kind == "level":
            logging.getLogger("cri_resmgr").setLevel(message[1])
            log.debug("dump writer process: log level %s", logging.getLevelName(message[1]))
        elif kind == "summary":
            d.write_summary_of(*message[1:])
        elif kind == "flush":
            d.flush(_FLUSH_WAIT)
            self.report(force=True)
            self.send(("ack", message[1]))
        elif kind == "stop":
            if message[1] is not None:
                d.write_summary_of(*message[1])
            d.stop(summary=False)  # the service's counts came with the message
            self.report(force=True)
            return False
        return True  # the counters go out with the reporter thread (`_reporter`)


def _next(stdin: IO[bytes]) -> Tuple[Any, ...]:
    try:
        return _recv(stdin)  # type: ignore[no-any-return]
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        raise _ServiceGone("the service went away (its pipe ended)") from None


def main() -> int:
    """`python -m cri_resmgr.dumpproc`: the dump's writer process (started by the service).

    Exits 0, quietly, when the service stops it and when the service is gone.
    """
    for name in _IGNORED_SIGNALS:  # the service decides when this process ends
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        os.nice(_NICE)
    except OSError:
        pass
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
    try:
        kind, rules, path, level = _next(stdin)
    except _ServiceGone:
        return 0
    logs.Logging()  # the service's format: timestamps unless stderr is the journal
    logging.getLogger("cri_resmgr").setLevel(level or logging.INFO)
    child = _Child(rules, path)
    try:
        while child.handle(_next(stdin)):
            pass
    except _ServiceGone as exc:
        log.warning("dump writer process: %s; writing what it sent, then exiting", exc)
        child.dump.stop(summary=False)
    finally:
        child.close()
    return 0


if __name__ == "__main__":
    log = logging.getLogger("cri_resmgr.dumpproc")  # not "__main__": the service's levels
    sys.exit(main())
