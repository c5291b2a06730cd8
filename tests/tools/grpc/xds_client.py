"""A delta ADS client built only from grpcio and our .proto files: subscribes (wildcard) to
istio.workload.Address as node NODE, decodes every resource, ACKs, and prints one JSON
object describing what it received."""

import argparse
import ipaddress
import json
import queue
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
from google.protobuf import struct_pb2

import protos

ADDRESS = "type.googleapis.com/istio.workload.Address"


def ip(raw):
    return str(ipaddress.ip_address(raw))


def unknown(msg):
    """Counts unknown fields in msg and every message below it."""
    count = len(UnknownFieldSet(msg))
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if hasattr(value, "ListFields"):
            count += unknown(value)
        elif hasattr(value, "values"):
            count += sum(unknown(v) for v in value.values() if hasattr(v, "ListFields"))
        else:
            count += sum(unknown(v) for v in value)
    return count


def describe(workload_pb2, resource):
    if resource.resource.type_url != ADDRESS:
        sys.exit(f"{resource.name}: type_url {resource.resource.type_url}")
    address = workload_pb2.Address()
    address.ParseFromString(resource.resource.value)
    out = {"name": resource.name, "version": resource.version, "unknown_fields": unknown(address)}
    kind = address.WhichOneof("type")
    if kind == "workload":
        w = address.workload
        out.update(
            kind="workload",
            uid=w.uid,
            pod=w.name,
            workload_name=w.workload_name,
            canonical_name=w.canonical_name,
            canonical_revision=w.canonical_revision,
            namespace=w.namespace,
            addresses=[ip(a) for a in w.addresses],
            node=w.node,
            tunnel_protocol=workload_pb2.TunnelProtocol.Name(w.tunnel_protocol),
            service_account=w.service_account,
            trust_domain=w.trust_domain,
            services={k: [[p.service_port, p.target_port] for p in v.ports] for k, v in w.services.items()},
            extensions=[e.name for e in w.extensions],
        )
    elif kind == "service":
        s = address.service
        out.update(
            kind="service",
            service_name=s.name,
            namespace=s.namespace,
            hostname=s.hostname,
            addresses=[ip(a.address) for a in s.addresses],
            ports=[[p.service_port, p.target_port] for p in s.ports],
        )
    else:
        sys.exit(f"{resource.name}: neither a workload nor a service")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    discovery_pb2, discovery_grpc, workload_pb2, _ = protos.load()

    requests = queue.Queue()
    node = discovery_pb2.Node(id=f"python~{args.node}")
    node.metadata.update({"NODE_NAME": args.node})
    requests.put(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=ADDRESS))

    def outgoing():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    with grpc.insecure_channel(args.server) as channel:
        stub = discovery_grpc.AggregatedDiscoveryServiceStub(channel)
        stream = stub.DeltaAggregatedResources(outgoing(), timeout=args.timeout)
        response = next(stream)
        resources = [describe(workload_pb2, r) for r in response.resources]
        requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS, response_nonce=response.nonce))
        requests.put(None)
        stream.cancel()
    print(
        json.dumps(
            {
                "type_url": response.type_url,
                "nonce": response.nonce,
                "system_version_info": response.system_version_info,
                "removed_resources": list(response.removed_resources),
                "resources": resources,
            }
        )
    )


if __name__ == "__main__":
    main()
