"""End-to-end: the service process under a supervisor: readiness, signals, daemon mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc

from harness import cri_objects as co


def _wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sd_notify_ready_reloading_stopping(relay_factory, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        relay = relay_factory(start=False)
        relay.env["NOTIFY_SOCKET"] = path
        relay.start()
        assert sock.recv(4096) == b"READY=1"
        assert os.path.exists(relay.socket)  # ready means the socket serves
        relay.signal(signal.SIGHUP)
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096) == b"READY=1"
        relay.signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert relay.proc.wait(30) == 0
    finally:
        sock.close()


def test_sigusr1_toggles_debug_logging(relay_factory, tmp_path: Path) -> None:
    """Debug on and off again, in the service and in the dump's writer process."""
    relay = relay_factory("-dump=reset,full:.*", f"-dump-file={tmp_path / 'cri.dump'}")
    relay.signal(signal.SIGUSR1)
    _wait_for(lambda: "debug logging for all modules on" in relay.log_text())
    _wait_for(lambda: "dump writer process: log level DEBUG" in relay.log_text())
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        co.call(ch, "Version")
    relay.signal(signal.SIGUSR1)
    _wait_for(lambda: "debug logging for all modules off" in relay.log_text())


def test_sigusr2_writes_count_summary(relay_factory, tmp_path: Path) -> None:
    dump = tmp_path / "cri.dump"
    relay = relay_factory("-dump=reset,count:.*", f"-dump-file={dump}")
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        for _ in range(3):
            co.call(ch, "Version")
    relay.signal(signal.SIGUSR2)
    _wait_for(lambda: dump.exists() and "Version: 3 calls" in dump.read_text(), what="summary")


def test_reload_reports_keys_that_need_a_restart(relay_factory, tmp_path: Path) -> None:
    relay = relay_factory(f"-dump-file={tmp_path / 'cri.dump'}", start=False)
    (relay.config_dir / "10.conf").write_text("[log]\nlevel = info\n")
    relay.start()
    (relay.config_dir / "10.conf").write_text("[log]\nlevel = debug\n[runtime]\nrunner = crio\n")
    relay.signal(signal.SIGHUP)
    _wait_for(lambda: "reload: 1 live changes applied, 1 need a restart" in relay.log_text())
    # the new level reaches the dump's writer process too
    _wait_for(lambda: "dump writer process: log level DEBUG" in relay.log_text())
    assert "[runtime] runner changed" in relay.log_text()
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"  # still the old runtime


def test_daemon_mode_detaches_with_a_pid_file(relay_factory, runtime) -> None:
    relay = relay_factory(start=False)
    pid_file = relay.workdir / "cri-resmgr.pid"
    log_file = relay.workdir / "daemon.log"
    cmd = relay.command() + ["-daemon", f"-pid-file={pid_file}", f"-log-file={log_file}"]
    out = subprocess.run(cmd, env=relay.env, capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    _wait_for(lambda: pid_file.exists() and os.path.exists(relay.socket), what="daemon")
    pid = int(pid_file.read_text().split()[0])
    try:
        assert pid != os.getpid()
        with grpc.insecure_channel("unix:" + relay.socket) as ch:
            assert co.call(ch, "Version").runtime_name == "containerd"
        assert "ready" in log_file.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")
    assert not os.path.exists(relay.socket)
    assert not pid_file.exists()


def test_reload_switching_policy_keeps_the_running_one(relay_factory) -> None:
    """The policy name needs a restart; the new policy's (live) options must not be
    given to the running policy, and status must go on naming the running one."""
    from cri_resmgr import control  # noqa: PLC0415

    relay = relay_factory(start=False)
    conf = relay.config_dir / "10.conf"
    conf.write_text("[policy]\nname = static\nreserved-cpus = 0\n")
    relay.start()
    conf.write_text(
        "[policy]\nname = topology-aware\nreserved-cpus = 0\n"
        "[policy.topology-aware]\npin-memory = false\n"
        "[policy.static]\non-error = pass\n"
    )
    relay.signal(signal.SIGHUP)
    _wait_for(lambda: "reload: " in relay.log_text() and "need a restart" in relay.log_text())
    log = relay.log_text()
    assert "reload failed" not in log and "Traceback" not in log
    assert "[policy] name changed" in log
    doc = control.request(str(relay.workdir / "cri-resmgr-control.sock"), "status")
    assert doc["policy"]["name"] == "static"
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        assert co.call(ch, "Version").runtime_name == "containerd"


def test_second_daemon_is_refused_with_the_pid_file_named(relay_factory, tmp_path) -> None:
    relay = relay_factory(start=False)
    pid_file = tmp_path / "held.pid"
    # Someone holds the pid file lock (the lockfile package: a PID file plus a link).
    import lockfile.pidlockfile  # noqa: PLC0415

    holder = lockfile.pidlockfile.PIDLockFile(str(pid_file))
    holder.acquire()
    try:
        cmd = relay.command() + [
            "-daemon",
            f"-pid-file={pid_file}",
            f"-log-file={tmp_path / 'd.log'}",
        ]
        out = subprocess.run(
            cmd, env=relay.env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        holder.release()
    assert out.returncode == 1
    assert str(pid_file) in out.stderr and "[daemon] pid-file" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_configuration_the_machine_cannot_hold_fails_before_waiting_for_the_runtime(
    relay_factory, tmp_path: Path
) -> None:
    """No runtime yet (systemd starts us before containerd answers) and a reserved CPU
    this machine does not have: the error comes at once, naming the file and line, not
    after an endless wait for the runtime."""
    relay = relay_factory(runtime_socket=str(tmp_path / "no-runtime.sock"), start=False)
    conf = relay.config_dir / "10.conf"
    conf.write_text("[policy]\nname = static\nreserved-cpus = cpuset:4095\n")
    out = subprocess.run(
        relay.command(), env=relay.env, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 1, out.stderr
    assert f"{conf}:3" in out.stderr and "4095" in out.stderr
    assert "waiting for the runtime" not in out.stderr
    assert not os.path.exists(relay.socket)


def test_a_relay_socket_path_that_is_not_a_socket_is_left_alone(
    relay_factory, tmp_path: Path
) -> None:
    """-relay-socket naming a regular file or another server's live socket: a clear
    error at once, and the file or socket is still there afterwards, with no lock
    file made next to a regular file (/etc/passwd.lock blocks useradd)."""
    relay = relay_factory(start=False)
    precious = tmp_path / "passwd"
    precious.write_text("root:x:0:0\n")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "other.sock"))
    other.listen()
    try:
        for path, message in (
            (precious, "exists and is not a socket"),
            (tmp_path / "other.sock", "another server is listening"),
        ):
            cmd = relay.command() + [f"-relay-socket={path}"]
            out = subprocess.run(
                cmd, env=relay.env, capture_output=True, text=True, timeout=30, check=False
            )
            assert out.returncode == 1 and message in out.stderr, out.stderr
            assert "waiting for the runtime" not in out.stderr
        assert precious.read_text() == "root:x:0:0\n"
        assert not (tmp_path / "passwd.lock").exists()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(tmp_path / "other.sock"))  # still there, still answering
        probe.close()
    finally:
        other.close()


def test_an_unusable_state_directory_is_a_clear_error(relay_factory, tmp_path: Path) -> None:
    relay = relay_factory(start=False)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cmd = relay.command() + ["-policy=static", f"-relay-dir={blocker / 'state'}"]
    out = subprocess.run(
        cmd, env=relay.env, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 1, out.stderr
    assert f"cannot create lock {blocker}/state/lock (set by [relay] state-dir)" in out.stderr
    assert "a file stands where a directory belongs" in out.stderr
    assert "Traceback" not in out.stderr
