"""Run the real `cri-resmgr` service as a child process in front of a harness containerd.

`RelayProcess(runtime_socket, workdir, *flags)` starts `python -m cri_resmgr.cli` with
private paths (relay socket, state dir, config dir, lock file under `workdir`), waits
until the relay socket accepts connections (which the service allows only once calls
can succeed), and stops it with SIGTERM (`stop`) or SIGKILL (`kill`). Its stderr goes to
`workdir/relay.log`. Used by the end-to-end tests, the demo and the benchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


class RelayError(RuntimeError):
    """The relay process did not come up (or go down) as expected."""


class RelayProcess:
    """A `cri-resmgr` service process with private paths."""

    def __init__(
        self,
        runtime_socket: str,
        workdir: Path,
        *flags: str,
        config_dir: Optional[Path] = None,
        env: Optional[dict] = None,
    ) -> None:
        self.runtime_socket = runtime_socket
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.workdir / "cri-resmgr.sock")
        self.state_dir = str(self.workdir / "state")
        self.config_dir = Path(config_dir) if config_dir else self.workdir / "conf.d"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "relay.log"
        self.flags = list(flags)
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)  # ours, if any, is not the child's systemd
        self.env.update(env or {})
        self.env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return "unix://" + self.socket

    def command(self) -> List[str]:
        return [
            sys.executable,
            "-m",
            "cri_resmgr.cli",
            f"-runtime-socket={self.runtime_socket}",
            f"-relay-socket={self.socket}",
            f"-relay-dir={self.state_dir}",
            f"-config-dir={self.config_dir}",
            *self.flags,
        ]

    def start(self, timeout: float = 30.0) -> RelayProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RelayError("relay already running")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=self.env, cwd=str(self.workdir)
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._accepts():  # not just "exists": a killed relay leaves its file
            if self.proc.poll() is not None:
                raise RelayError(f"relay exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RelayError(f"relay socket did not appear in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def _accepts(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def restart_after_kill(self, timeout: float = 60.0) -> RelayProcess:
        """SIGKILL (no shutdown code runs, the socket file stays) and start again;
        returns once the new process accepts calls (after its restore and resync)."""
        self.kill()
        return self.start(timeout)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RelayError(
                    f"relay ignored SIGTERM for {timeout}s:\n{self.log_tail()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (the socket file stays behind)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            try:
                self.stop()
            except RelayError:
                pass


def run_flags(*pairs: Sequence[str]) -> List[str]:
    """`run_flags(("policy", "static"))` -> ["-policy=static"] (Go-style, as users write)."""
    return [f"-{name}={value}" for name, value in pairs]
