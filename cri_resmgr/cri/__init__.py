"""The CRI schema package: the Kubernetes runtime.v1 API as this project speaks it.

It owns `api.proto` (our rendering of the upstream runtime.v1 RuntimeService and
ImageService, wire-identical to Kubernetes cri-api), the modules generated from it
(`api_pb2`, `api_pb2_grpc`, `api_pb2.pyi`; regenerate with `make generate`, see
`generate.py`), the method table derived from the descriptors (`methods.py`) and a
small synchronous client (`client.py`). Only this package, `relay` and `hooks` import
grpc; nothing here knows about policies.
"""

from __future__ import annotations
