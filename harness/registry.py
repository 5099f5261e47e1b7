"""A tiny read-only OCI distribution (registry v2) server for the harness images.

Owns one HTTP server thread on 127.0.0.1 (random port) that serves the manifests and
blobs of `harness.images.Image` tarballs, so CRI `PullImage` of those refs works with
no network; every other name answers 404 at once. The harness points containerd at it
for every registry through `hosts.toml` (`registry.config_path`, `_default`).
Only what containerd's resolver and fetcher use is implemented: `GET|HEAD /v2/`,
`/v2/<repo>/manifests/<tag or digest>` and `/v2/<repo>/blobs/<digest>`.
"""

from __future__ import annotations

import http.server
import json
import logging
import tarfile
import threading
import urllib.parse
from typing import Dict, Iterable, Optional, Tuple

from harness.images import MEDIA_MANIFEST, Image

log = logging.getLogger(__name__)


def split_ref(ref: str) -> Tuple[str, str, str]:
    """(registry host, repository, tag) of a full reference like docker.io/library/x:1."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = rest, "latest"
    return host, repo, tag


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        log.debug("registry: " + format, *args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _reply(self, code: int, data: bytes, ctype: str, digest: Optional[str], body: bool):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _not_found(self, code: str, body: bool) -> None:
        err = json.dumps({"errors": [{"code": code, "message": self.path}]}).encode()
        self._reply(404, err, "application/json", None, body)

    def _serve(self, body: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        ns = urllib.parse.parse_qs(url.query).get("ns", [""])[0]
        parts = url.path.strip("/").split("/")
        if parts == ["v2"]:
            self._reply(200, b"{}", "application/json", None, body)
            return
        if len(parts) < 4 or parts[0] != "v2" or parts[-2] not in ("manifests", "blobs"):
            self._not_found("UNSUPPORTED", body)
            return
        repo, kind, ref = "/".join(parts[1:-2]), parts[-2], parts[-1]
        srv = self.server
        if kind == "manifests":
            digest = ref if ref.startswith("sha256:") else srv.tags.get((ns, repo, ref))
            if digest is None:
                digest = srv.tags.get(("", repo, ref))  # no ns given: any registry host
            if digest is None or digest not in srv.manifests:
                self._not_found("MANIFEST_UNKNOWN", body)
                return
            self._reply(200, srv.blobs[digest], MEDIA_MANIFEST, digest, body)
            return
        data = srv.blobs.get(ref)
        if data is None:
            self._not_found("BLOB_UNKNOWN", body)
            return
        self._reply(200, data, "application/octet-stream", ref, body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tags: Dict[Tuple[str, str, str], str]
    manifests: set
    blobs: Dict[str, bytes]


class Registry:
    """The server; `start()` returns self, `url` is `http://127.0.0.1:PORT`."""

    def __init__(self, images: Iterable[Image] = ()) -> None:
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._tags: Dict[Tuple[str, str, str], str] = {}
        self._manifests: set = set()
        self._blobs: Dict[str, bytes] = {}
        for image in images:
            self.add(image)

    def add(self, image: Image) -> None:
        """Serve `image` (its tarball's blobs) under its ref."""
        with tarfile.open(image.tarball) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("blobs/sha256/"):
                    f = tar.extractfile(member)
                    assert f is not None
                    self._blobs["sha256:" + member.name.rsplit("/", 1)[1]] = f.read()
        host, repo, tag = split_ref(image.ref)
        self._tags[(host, repo, tag)] = image.manifest_digest
        self._tags[("", repo, tag)] = image.manifest_digest
        self._manifests.add(image.manifest_digest)

    def start(self) -> Registry:
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.tags, srv.manifests, srv.blobs = self._tags, self._manifests, self._blobs
        self._server = srv
        self._thread = threading.Thread(
            target=srv.serve_forever, name="harness-registry", daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("registry not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
