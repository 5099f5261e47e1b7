"""OCI image-layout tarballs built locally with the stdlib, cached by input hash.

Owns the two images the harness imports into its private containerd:

* the pod sandbox ("pause") image: `harness/pause.c` built with `gcc -static -O2`, tagged
  exactly as the `sandbox_image` the harness configures (`PAUSE_REF`), so
  RunPodSandbox never pulls;
* a busybox image from Debian's static `/bin/busybox` (package busybox-static) with a
  symlink for every applet it lists, at `BUSYBOX_REF`, `Cmd ["sh"]` like upstream.

Tarballs are written once under `cache_dir()` (`$CRI_RESMGR_HARNESS_CACHE`, else
`$XDG_CACHE_HOME/cri-resmgr-harness`, else `~/.cache/cri-resmgr-harness`) in a file
named by the hash of everything that goes into them, and reused afterwards. Builds are
reproducible: fixed mtimes, owners and entry order. `import_images()` loads them with
`ctr images import` into the `k8s.io` namespace that the CRI plugin uses.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

log = logging.getLogger(__name__)

PAUSE_REF = "registry.k8s.io/pause:3.6"
"""Tag of the pause image; also written as `sandbox_image` into the containerd config."""
BUSYBOX_REF = "docker.io/library/busybox:latest"
BUSYBOX_BINARY = "/bin/busybox"
CRI_NAMESPACE = "k8s.io"

# Bump when the layout of the produced tarballs changes, to invalidate caches.
FORMAT_VERSION = "1"
# Fixed timestamp (seconds since the epoch) for tar members and image configs.
EPOCH = 1700000000
CREATED = "2023-11-14T22:13:20Z"  # == EPOCH

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_GOARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "i686": ("386", ""),
    "i386": ("386", ""),
}


class ImageBuildError(RuntimeError):
    """An image could not be built or imported; the message says which tool failed."""


@dataclasses.dataclass(frozen=True)
class Image:
    """One built image: the tag, the tarball and the digests CRI will report.

    `image_id` is the config digest (what CRI `ListImages`/`ImageStatus` return as `id`);
    `manifest_digest` is the digest of the manifest (the repo digest).
    """

    ref: str
    tarball: Path
    manifest_digest: str
    image_id: str


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tar member: a directory, regular file (data) or symlink (target)."""

    path: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


def oci_platform(machine: Optional[str] = None) -> dict[str, str]:
    """The OCI platform (`os`, `architecture`, maybe `variant`) of this host's `uname -m`."""
    machine = machine or platform.machine()
    try:
        arch, variant = _GOARCH[machine]
    except KeyError:
        raise ImageBuildError(
            f"unknown machine {machine!r} (uname -m); known: {', '.join(sorted(_GOARCH))}"
        ) from None
    plat = {"architecture": arch, "os": "linux"}
    if variant and arch == "arm":
        plat["variant"] = variant
    return plat


def cache_dir() -> Path:
    """Directory holding the built tarballs (created on demand)."""
    env = os.environ.get("CRI_RESMGR_HARNESS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cri-resmgr-harness"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _layer_tar(entries: Iterable[_Entry]) -> bytes:
    """An uncompressed, reproducible tar of `entries` (sorted by path)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                info.mode = 0o777
                tar.addfile(info)
            elif e.kind == "file":
                info.type = tarfile.REGTYPE
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                raise ValueError(f"unknown tar entry kind {e.kind!r} for {e.path!r}")
    return buf.getvalue()


def _add_blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = _sha256(data)
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size = len(data)
    info.mtime = EPOCH
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def write_layout_tar(
    out: Path, ref: str, entries: Sequence[_Entry], container_config: dict[str, object]
) -> Image:
    """Write a single-layer, single-platform OCI image layout tarball to `out`.

    The index carries `io.containerd.image.name` = `ref` (full name, used by
    `ctr images import`) and `org.opencontainers.image.ref.name` = the tag.
    """
    plat = oci_platform()
    layer = _layer_tar(entries)
    diff_id = _sha256(layer)
    gz = gzip.compress(layer, compresslevel=6, mtime=0)
    config = {
        "created": CREATED,
        "architecture": plat["architecture"],
        "os": plat["os"],
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "cri-resmgr harness/images.py"}],
    }
    if "variant" in plat:
        config["variant"] = plat["variant"]
    config_bytes = _json_bytes(config)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        config_desc = _add_blob(tar, config_bytes)
        layer_desc = _add_blob(tar, gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, **config_desc},
            "layers": [{"mediaType": MEDIA_LAYER_GZIP, **layer_desc}],
        }
        manifest_bytes = _json_bytes(manifest)
        manifest_desc = _add_blob(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    **manifest_desc,
                    "platform": plat,
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
        for name, data in (
            ("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
            ("index.json", _json_bytes(index)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = EPOCH
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return Image(
        ref=ref,
        tarball=out,
        manifest_digest=str(manifest_desc["digest"]),
        image_id=str(config_desc["digest"]),
    )


def _meta_path(tarball: Path) -> Path:
    return tarball.with_suffix(".json")


def _cached(name: str, key_parts: Sequence[bytes], ref: str, cache: Optional[Path]):
    """(tarball path, cached Image or None) for the image `name` with these inputs."""
    h = hashlib.sha256()
    for part in (FORMAT_VERSION.encode(), ref.encode(), *key_parts):
        h.update(hashlib.sha256(part).digest())
    base = cache if cache is not None else cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    tarball = base / f"{name}-{h.hexdigest()[:20]}.tar"
    meta = _meta_path(tarball)
    if tarball.exists() and meta.exists():
        try:
            m = json.loads(meta.read_text())
            return tarball, Image(ref, tarball, m["manifest_digest"], m["image_id"])
        except (ValueError, KeyError):
            log.warning("ignoring broken image cache metadata %s", meta)
    return tarball, None


def _remember(image: Image) -> Image:
    meta = _meta_path(image.tarball)
    tmp = meta.with_name(meta.name + f".tmp{os.getpid()}")
    tmp.write_text(
        json.dumps({"manifest_digest": image.manifest_digest, "image_id": image.image_id})
    )
    os.replace(tmp, meta)
    return image


def _tool_version(argv: Sequence[str]) -> bytes:
    try:
        return subprocess.run(list(argv), capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageBuildError(
            f"cannot run {argv[0]}: {e}; install the e2e dependencies with `make deps`"
        ) from e


def pause_image(cache: Optional[Path] = None, ref: str = PAUSE_REF) -> Image:
    """The pause image built from `harness/pause.c`, from the cache when possible."""
    source = Path(__file__).with_name("pause.c")
    src = source.read_bytes()
    gcc = shutil.which("gcc") or "gcc"
    key = [src, _tool_version([gcc, "--version"]), platform.machine().encode()]
    tarball, image = _cached("pause", key, ref, cache)
    if image is not None:
        return image
    with tempfile.TemporaryDirectory(prefix="harness-pause-") as tmp:
        binary = Path(tmp) / "pause"
        cmd = [gcc, "-static", "-O2", "-s", "-o", str(binary), str(source)]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if res.returncode != 0:
            raise ImageBuildError(
                f"building the pause binary failed ({' '.join(cmd)}): {res.stderr.strip()}; "
                "static glibc comes from libc6-dev (`make deps`)"
            )
        data = binary.read_bytes()
    entries = [
        _Entry("pause", "file", 0o755, data),
        *(_Entry(d, "dir") for d in ("dev", "etc", "proc", "sys")),
    ]
    cfg = {"Entrypoint": ["/pause"], "Env": [DEFAULT_PATH_ENV], "WorkingDir": "/"}
    log.info("building %s into %s", ref, tarball)
    return _remember(write_layout_tar(tarball, ref, entries, cfg))


def _busybox_applets(binary: str) -> list[str]:
    """Applet paths (`bin/sh`, `usr/bin/env`, ...) the busybox binary knows."""
    try:
        out = subprocess.run(
            [binary, "--list-full"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageBuildError(
            f"cannot list applets of {binary}: {e}; install busybox-static (`make deps`)"
        ) from e
    return [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]


def busybox_image(
    cache: Optional[Path] = None, ref: str = BUSYBOX_REF, binary: str = BUSYBOX_BINARY
) -> Image:
    """A busybox image from the host's static busybox, from the cache when possible."""
    try:
        data = Path(binary).read_bytes()
    except OSError as e:
        raise ImageBuildError(
            f"cannot read {binary}: {e}; install busybox-static (`make deps`)"
        ) from e
    tarball, image = _cached("busybox", [data], ref, cache)
    if image is not None:
        return image
    applets = _busybox_applets(binary)
    dirs = {
        "bin",
        "dev",
        "etc",
        "home",
        "proc",
        "root",
        "sbin",
        "sys",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
        "var/log",
        "var/run",
    }
    for path in applets:
        parent = os.path.dirname(path)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    entries = [_Entry(d, "dir", 0o755) for d in dirs]
    entries += [_Entry("tmp", "dir", 0o1777), _Entry("var/tmp", "dir", 0o1777)]
    entries.append(_Entry("bin/busybox", "file", 0o755, data))
    for path in applets:
        if path != "bin/busybox":
            entries.append(_Entry(path, "symlink", target="/bin/busybox"))
    entries.append(
        _Entry(
            "etc/passwd",
            "file",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )
    )
    entries.append(_Entry("etc/group", "file", 0o644, b"root:x:0:\nnobody:x:65534:\n"))
    cfg = {"Cmd": ["sh"], "Env": [DEFAULT_PATH_ENV], "WorkingDir": "/"}
    log.info("building %s into %s", ref, tarball)
    return _remember(write_layout_tar(tarball, ref, entries, cfg))


def default_images(cache: Optional[Path] = None) -> list[Image]:
    """The images every harness containerd gets: pause and busybox."""
    return [pause_image(cache), busybox_image(cache)]


def import_images(
    socket: str,
    images: Iterable[Image],
    namespace: str = CRI_NAMESPACE,
    ctr: str = "ctr",
    timeout: float = 120.0,
) -> None:
    """`ctr -a SOCKET -n NAMESPACE images import` every image tarball (and unpack it)."""
    for image in images:
        cmd = [ctr, "-a", socket, "-n", namespace, "images", "import", str(image.tarball)]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise ImageBuildError(
                f"importing {image.ref} failed ({' '.join(cmd)}): "
                f"{(res.stderr or res.stdout).strip()}"
            )
        log.debug("imported %s: %s", image.ref, res.stdout.strip())
