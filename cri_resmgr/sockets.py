"""Unix sockets the service listens on: addresses, stale files, atomic appearance.

Ownership: how a listening unix socket comes to exist (the relay socket kubelet uses,
the control socket `cri-resmgr status` uses, a metrics socket). A socket appears under
its name only when it is set up and accepting: it is bound under a temporary name in
the same directory, given its mode (and owner) before `listen()`, served, and then
renamed into place. A stale socket file (nobody answers) is replaced; a live one is
refused, so a second instance cannot steal a running one's socket; anything that is
not a socket is never touched. At stop, `release` removes only the socket file this
process put in place (same inode), never what stands there since.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Awaitable, Callable, Dict, Optional, Tuple, TypeVar

from cri_resmgr import errors

log = logging.getLogger(__name__)

T = TypeVar("T")


class SocketError(errors.Error):
    """A socket cannot be listened on where we were told to (the message says why)."""


class SocketInUse(SocketError):
    """Another live server listens where we were told to listen (or it is not a socket)."""


#: Longest path a unix socket can be bound to (sun_path is 108 bytes with the NUL).
MAX_PATH = 107
#: Length of the temporary name a socket is bound to before it is renamed into place.
_TMP_NAME_LEN = 7  # ".", the pid in base 36 padded to 5 digits (pid_max is 2**22), "~"

#: path -> (st_dev, st_ino) of the socket files `listen` put in place in this process
_placed: Dict[str, Tuple[int, int]] = {}


def socket_path(address: str) -> str:
    """A socket path from ``PATH``, ``unix://PATH`` or ``unix:PATH``."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("unix:"):
        return address[len("unix:") :]
    return address


def _tmp_name(path: str) -> str:
    """The temporary name `listen` binds to: unique per process, always as long."""
    digits, pid = "", os.getpid()
    while pid:
        pid, d = divmod(pid, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
    name = "." + digits.rjust(_TMP_NAME_LEN - 2, "0") + "~"
    return os.path.join(os.path.dirname(path) or ".", name)


def check_path(address: str, key: str = "") -> None:
    """Raise `SocketError` when `address` cannot be listened on whatever runs there:
    too long a path (with the temporary name `listen` uses in its directory), a
    directory or another file that is not a socket in its place. A live or stale
    socket is `listen`'s business. `key` names the setting, for the message."""
    path = socket_path(address)
    where = f" (set by {key})" if key else ""
    longest = max(len(os.fsencode(path)), len(os.fsencode(_tmp_name(path))))
    if longest > MAX_PATH:
        raise SocketError(
            f"unix socket path {path}{where} is too long: {longest} bytes with the "
            f"temporary name used while setting it up; at most {MAX_PATH} are allowed"
        )
    if not os.path.basename(path):
        raise SocketError(f"unix socket path {path!r}{where} names a directory, not a socket")
    try:
        st = os.lstat(path)
    except OSError:
        return  # missing (fine), or unreachable: listen() says why
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(
            f"{path}{where} exists and is not a socket; refusing to replace it (is the path right?)"
        )


def remove(path: str) -> None:
    """Unlink `path`; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def release(path: str) -> None:
    """Remove the socket `listen` put at `path` in this process, and nothing else: not
    a file or another server's socket that stands there since (a warning says so)."""
    placed = _placed.pop(socket_path(path), None)
    if placed is None:
        return
    path = socket_path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == placed:
        remove(path)
    else:
        log.warning("not removing %s: it is no longer the socket this process created", path)


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
    check_path(path, key)
    directory = os.path.dirname(path) or "."
    tmp = _tmp_name(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create {directory} for {path}{where}: {exc.strerror}") from None
    check_stale(path, hint)
    _remove_stale_tmp(tmp, where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False  # only then is the file at `tmp` ours to remove
    try:
        sock.bind(tmp)
        bound = True
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
        st = os.lstat(path)
        _placed[path] = (st.st_dev, st.st_ino)
    except OSError as exc:
        sock.close()
        if bound:
            remove(tmp)
        raise SocketError(f"cannot listen on {path}{where}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        if bound:
            remove(tmp)
        raise
    return served


def _remove_stale_tmp(tmp: str, where: str) -> None:
    """A socket left at our temporary name (a process of our pid that died) goes;
    anything else there is not ours to remove."""
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketError(f"cannot check {tmp}{where}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"{tmp}{where} exists and is not a socket; remove it by hand")
    remove(tmp)
