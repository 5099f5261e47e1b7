"""Unix sockets the service listens on: addresses, stale files, atomic appearance.

Ownership: how a listening unix socket comes to exist (the relay socket kubelet uses,
the control socket `cri-resmgr status` uses, a metrics socket). A socket appears under
its name only when it is set up and accepting: it is bound under a temporary name in
the same directory, given its mode (and owner) before `listen()`, served, and then
renamed into place. A stale socket file (nobody answers) is replaced; a live one is
refused, so a second instance cannot steal a running one's socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Awaitable, Callable, Optional, TypeVar

from cri_resmgr import errors

log = logging.getLogger(__name__)

T = TypeVar("T")


class SocketError(errors.Error):
    """A socket cannot be listened on where we were told to (the message says why)."""


class SocketInUse(SocketError):
    """Another live server listens where we were told to listen (or it is not a socket)."""


#: Longest path a unix socket can be bound to (sun_path is 108 bytes with the NUL).
MAX_PATH = 107


def socket_path(address: str) -> str:
    """A socket path from ``PATH``, ``unix://PATH`` or ``unix:PATH``."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("unix:"):
        return address[len("unix:") :]
    return address


def remove(path: str) -> None:
    """Unlink `path`; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_stale(path: str, hint: str = "") -> None:
    """Remove a socket nobody answers on; raise `SocketInUse` if a live server owns it.

    `hint` is appended to the "another server is listening" message (what to do).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale socket %s", path)
            remove(path)
            return
        raise SocketInUse(f"cannot check socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise SocketInUse(f"another server is listening on {path}" + (f"; {hint}" if hint else ""))


async def listen(
    address: str,
    mode: int,
    serve: Callable[[socket.socket], Awaitable[T]],
    *,
    owner_of: Optional[str] = None,
    backlog: int = 1024,
    hint: str = "",
    key: str = "",
) -> T:
    """Listen on unix socket `address` with permission bits `mode`; returns `serve(sock)`.

    `serve` gets the bound, listening socket and starts serving it (e.g.
    ``loop.create_unix_server(..., sock=sock)``); only then is the socket renamed into
    place. `owner_of`: copy that file's owner and group (the runtime socket's, so the
    same group of users can reach both); failing to is logged, not fatal. `key` names
    the setting the path comes from (``[relay] socket``), for error messages.
    """
    path = socket_path(address)
    where = f" (set by {key})" if key else ""
    directory = os.path.dirname(path) or "."
    # The temporary name is short and fixed-size, so the limit is the final path's.
    tmp = os.path.join(directory, f".{os.getpid()}-{abs(hash(path)) % 100000}.sock")
    longest = max(len(os.fsencode(path)), len(os.fsencode(tmp)))
    if longest > MAX_PATH:
        raise SocketError(
            f"unix socket path {path}{where} is too long: {longest} bytes with the "
            f"temporary name used while setting it up; at most {MAX_PATH} are allowed"
        )
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create {directory} for {path}{where}: {exc.strerror}") from None
    check_stale(path, hint)
    remove(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, mode)  # before listen(): never connectable with a wider mode
        if owner_of:
            try:
                st = os.stat(owner_of)
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError as exc:
                log.warning("cannot copy the owner of %s to %s: %s", owner_of, path, exc)
        sock.listen(backlog)
        served = await serve(sock)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        remove(tmp)
        raise SocketError(f"cannot listen on {path}{where}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        remove(tmp)
        raise
    return served
