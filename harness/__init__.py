"""Test and demo harness (not shipped): a throwaway real containerd with private paths and
locally built images.

* `harness.images`      builds OCI image-layout tarballs (pause, busybox) with the stdlib
                        and caches them by input hash.
* `harness.containerd`  `Containerd`: a private containerd daemon as a context manager.
* `harness.registry`    a read-only local registry serving those images, so CRI
                        `PullImage` works offline (other names: 404 at once).
* `harness.wire`        a tiny protobuf wire codec and raw CRI calls that need no
                        generated modules (used to wait for and clean up the daemon).
* `harness.cri_objects` pod sandbox / container configs shaped the way kubelet sends them.
"""

from __future__ import annotations
