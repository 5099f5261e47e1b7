"""`make demo`: the main job on a self-contained default, printed step by step.

Starts a throwaway containerd with private paths (harness.containerd), puts the real
`cri-resmgr` service in front of it with the static policy (CPU 0 reserved) and the
CRI dump on, then does what kubelet does for two pods: a Guaranteed pod with one
whole CPU and a BestEffort pod. It prints what the relay decided, what the kernel
applied (the containers' real cpuset cgroups), and the dump, then cleans up.

Environment: DEMO_POLICY (default static), DEMO_KEEP=1 keeps the work directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import grpc

from cri_resmgr.cri import api_pb2
from harness import cri_objects as co
from harness.cgroups import cpuset_of
from harness.containerd import Containerd
from harness.relay import RelayProcess


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(label: str, value: object) -> None:
    print(f"   {label:<28} {value}", flush=True)


def run_pod(ch: grpc.Channel, name: str, requests: dict, limits: dict) -> tuple:
    qos = co.qos_class(requests, limits)
    pod = co.pod_sandbox_config(name, namespace="demo", qos=qos)
    pod_id = co.run_pod(ch, pod)
    ctr = co.container_config(
        "main", pod, command=["sleep", "3600"], requests=requests, limits=limits
    )
    cid = co.create_and_start(ch, pod_id, pod, ctr)
    cg = cpuset_of(co.container_pid(ch, cid))
    show(f"demo/{name}:main ({qos})", f"cpuset.cpus={cg.cpus} cpuset.mems={cg.mems}")
    return pod_id, cid


def main() -> int:
    if os.geteuid() != 0:
        print("make demo runs a real containerd and needs root", file=sys.stderr)
        return 1
    policy = os.environ.get("DEMO_POLICY", "static")
    work = Path(tempfile.mkdtemp(prefix="crr-demo-", dir="/tmp"))
    dump_file = work / "cri.dump"
    flags = [
        f"-policy={policy}",
        "-reserved-cpus=0",
        "-dump='reset,full:.*'",
        f"-dump-file={dump_file}",
    ]
    try:
        say("starting a throwaway containerd (private root, state and socket)")
        with Containerd() as ctrd:
            show("containerd socket", ctrd.socket)
            say(f"starting cri-resmgr in front of it: {' '.join(flags)}")
            with RelayProcess(ctrd.socket, work, *flags) as relay:
                show("relay socket", relay.socket)
                with grpc.insecure_channel("unix:" + relay.socket) as ch:
                    v = co.call(ch, "Version", api_pb2.VersionRequest(version="v1"))
                    show("runtime (through relay)", f"{v.runtime_name} {v.runtime_version}")
                    say("running pods through the relay, as kubelet would")
                    exclusive = run_pod(
                        ch,
                        "exclusive",
                        {"cpu": 1000, "memory": 64 << 20},
                        {"cpu": 1000, "memory": 64 << 20},
                    )
                    shared = run_pod(ch, "shared", {}, {})
                    say("removing the Guaranteed pod: the shared pod gets its CPU back")
                    co.remove_pod(ch, exclusive[0])
                    cg = cpuset_of(co.container_pid(ch, shared[1]))
                    show("demo/shared:main", f"cpuset.cpus={cg.cpus}")
                    co.remove_pod(ch, shared[0])
                say("what the relay logged")
                print(textwrap.indent(relay.log_tail(20), "   "))
            say(f"the CRI dump ({dump_file}): one header line per record, YAML under each")
            print(textwrap.indent(_headers(dump_file), "   "))
        say("done: containerd and the relay are stopped, nothing is left running")
        return 0
    finally:
        if os.environ.get("DEMO_KEEP") == "1":
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _headers(path: Path, limit: int = 24) -> str:
    """The record header lines of the dump (records are a header + indented YAML)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    headers = [line for line in text.splitlines() if line and not line[0].isspace()]
    more = f"\n... {len(headers) - limit} more records" if len(headers) > limit else ""
    return "\n".join(headers[:limit]) + more or "(empty dump)"


if __name__ == "__main__":
    sys.exit(main())
