"""Compiles Nodemesh's proto/ with grpcio-tools (grpc_tools.protoc) into a scratch
directory and imports the generated modules, so these tools speak exactly what our .proto
files declare, through an implementation that shares no code with ours."""

import importlib
import os
import sys
import tempfile

from grpc_tools import protoc
import importlib.resources

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PROTO_ROOT = os.path.join(REPO, "proto")
FILES = [
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
]


def load():
    """Returns (discovery_pb2, discovery_pb2_grpc, workload_pb2, authorization_pb2)."""
    out = tempfile.mkdtemp(prefix="nodemesh-pyproto-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + FILES) != 0:
        sys.exit(f"grpc_tools.protoc failed on {PROTO_ROOT}")
    sys.path.insert(0, out)
    return (
        importlib.import_module("envoy.service.discovery.v3.discovery_pb2"),
        importlib.import_module("envoy.service.discovery.v3.discovery_pb2_grpc"),
        importlib.import_module("istio.workload.workload_pb2"),
        importlib.import_module("istio.security.authorization_pb2"),
    )
