"""A scripted delta ADS server built only from grpcio and our .proto files, to drive a real
agent with responses our own control plane would never send.

It serves the pods in --pods (a JSON list of {uid, name, namespace, ips, node}) as captured
workloads, an empty set of policies, and then, once the file CONTROL/bad exists, one response
that removes the first pod and adds a workload whose address is 5 bytes long. Every request
it receives (subscriptions, ACKs, NACKs) is appended to --log as a JSON line."""

import argparse
import ipaddress
import json
import os
import queue
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import any_pb2, wrappers_pb2

import protos

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
POD_UID_EXTENSION = "nodemesh.io/pod-uid"

discovery_pb2, discovery_grpc, workload_pb2, _ = protos.load()


def workload_resource(pod, addresses=None):
    w = workload_pb2.Workload(
        uid=f"Kubernetes//Pod/{pod['namespace']}/{pod['name']}",
        name=pod["name"],
        namespace=pod["namespace"],
        addresses=addresses if addresses is not None else [ipaddress.ip_address(a).packed for a in pod["ips"]],
        node=pod["node"],
        tunnel_protocol=workload_pb2.HBONE,
        trust_domain="cluster.local",
        service_account="default",
    )
    uid = wrappers_pb2.StringValue(value=pod["uid"])
    w.extensions.add(name=POD_UID_EXTENSION, config=any_pb2.Any(type_url=STRING_VALUE, value=uid.SerializeToString()))
    address = workload_pb2.Address(workload=w)
    return discovery_pb2.Resource(
        name=w.uid,
        version="1",
        resource=any_pb2.Any(type_url=ADDRESS, value=address.SerializeToString()),
    )


class Ads(discovery_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, pods, log, control):
        self.pods = pods
        self.log = log
        self.control = control
        self.lock = threading.Lock()

    def record(self, request):
        entry = {
            "type_url": request.type_url,
            "nonce": request.response_nonce,
            "node": request.node.id,
            "initial_resource_versions": dict(request.initial_resource_versions),
        }
        if request.HasField("error_detail"):
            entry["error"] = {"code": request.error_detail.code, "message": request.error_detail.message}
        with self.lock, open(self.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()

    def DeltaAggregatedResources(self, request_iterator, context):
        out = queue.Queue()
        nonce = iter(range(1, 1 << 30))

        def respond(type_url, resources, removed=(), tag=""):
            n = f"{tag}{next(nonce)}"
            out.put(
                discovery_pb2.DeltaDiscoveryResponse(
                    type_url=type_url,
                    system_version_info=n,
                    nonce=n,
                    resources=resources,
                    removed_resources=list(removed),
                )
            )

        def read():
            subscribed = set()
            try:
                for request in request_iterator:
                    self.record(request)
                    if request.type_url in subscribed or request.response_nonce:
                        continue
                    subscribed.add(request.type_url)
                    if request.type_url == ADDRESS:
                        respond(ADDRESS, [workload_resource(p) for p in self.pods])
                    else:
                        respond(request.type_url, [])
            finally:
                out.put(None)

        def script():
            while context.is_active():
                if os.path.exists(os.path.join(self.control, "bad")):
                    broken = dict(self.pods[0], name="broken", uid="00000000-0000-0000-0000-00000000beef")
                    first = f"Kubernetes//Pod/{self.pods[0]['namespace']}/{self.pods[0]['name']}"
                    respond(ADDRESS, [workload_resource(broken, addresses=[b"\x0a\x00\x00\x01\x01"])], [first], "bad-")
                    return
                time.sleep(0.05)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=script, daemon=True).start()
        while True:
            item = out.get()
            if item is None:
                return
            yield item


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--pods", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--control", required=True)
    args = ap.parse_args()
    with open(args.pods) as f:
        pods = json.load(f)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    discovery_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(pods, args.log, args.control), server)
    server.add_insecure_port(args.listen)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
