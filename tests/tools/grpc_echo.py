"""A real gRPC peer (grpcio) for the proxy's HTTP stage, sharing no code with it.

  serve --port P --name N       an Echo server: Say answers "N:<text>", or aborts with the
                                status `code` when it is not 0; Stream sends `count`
                                messages "N:<text>:<i>" and then the trailer x-trailer: done.
  call --target H:P --mode M    one channel to H:P; prints one JSON line.
       unary  --count C         C Say calls: {"texts": [...], "codes": [...]}
       stream --count C         one Stream call: {"texts", "code", "trailers"}
       status --count C --code K --text T
                                C Say calls the server aborts with K: {"codes", "details"}

The service is compiled from the .proto below at run time with grpc_tools.protoc, as
tools/grpc/protos.py does for ours, so the wire format is grpcio's own.
"""

import argparse
import importlib
import importlib.resources
import json
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

PROTO = """syntax = "proto3";
package nmtest;
message Msg { string text = 1; int32 code = 2; int32 count = 3; }
service Echo {
  rpc Say(Msg) returns (Msg);
  rpc Stream(Msg) returns (stream Msg);
}
"""


def load():
    """Compiles PROTO into a scratch directory; returns (echo_pb2, echo_pb2_grpc)."""
    out = tempfile.mkdtemp(prefix="nodemesh-echo-proto-")
    with open(os.path.join(out, "echo.proto"), "w") as f:
        f.write(PROTO)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{out}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [os.path.join(out, "echo.proto")]) != 0:
        sys.exit("grpc_tools.protoc failed on echo.proto")
    sys.path.insert(0, out)
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


# Status codes by number (grpc.StatusCode's values are (number, name) pairs).
CODES = {code.value[0]: code for code in grpc.StatusCode}

# No HTTP proxy from the environment: the channel must go straight at the target (the VIP).
OPTIONS = [("grpc.enable_http_proxy", 0)]


def serve(args):
    pb2, pb2_grpc = load()

    class Echo(pb2_grpc.EchoServicer):
        def Say(self, request, context):
            if request.code != 0:
                context.abort(CODES[request.code], f"{args.name}: {request.text}")
            return pb2.Msg(text=f"{args.name}:{request.text}")

        def Stream(self, request, context):
            for i in range(request.count):
                yield pb2.Msg(text=f"{args.name}:{request.text}:{i}")
            # Trailing metadata goes out in the HTTP/2 trailers, after the last message.
            context.set_trailing_metadata((("x-trailer", "done"),))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port(f"0.0.0.0:{args.port}")
    server.start()
    print(json.dumps({"listening": args.port}), flush=True)
    server.wait_for_termination()


def call(args):
    pb2, pb2_grpc = load()
    # One channel (one HTTP/2 connection) for every call, as a real client keeps.
    with grpc.insecure_channel(args.target, options=OPTIONS) as channel:
        stub = pb2_grpc.EchoStub(channel)
        if args.mode == "unary":
            texts, codes = [], []
            for i in range(args.count):
                reply, call = stub.Say.with_call(pb2.Msg(text=f"{args.text}-{i}"), timeout=args.timeout)
                texts.append(reply.text)
                codes.append(call.code().name)
            result = {"texts": texts, "codes": codes}
        elif args.mode == "stream":
            responses = stub.Stream(pb2.Msg(text=args.text, count=args.count), timeout=args.timeout)
            texts = [m.text for m in responses]
            result = {
                "texts": texts,
                "code": responses.code().name,
                "trailers": {k: v for k, v in (responses.trailing_metadata() or ())},
            }
        else:
            codes, details = [], []
            for i in range(args.count):
                try:
                    stub.Say(pb2.Msg(text=f"{args.text}-{i}", code=args.code), timeout=args.timeout)
                    codes.append("OK")
                    details.append("")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                    details.append(e.details())
            result = {"codes": codes, "details": details}
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--mode", choices=["unary", "stream", "status"], required=True)
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--code", type=int, default=0)
    c.add_argument("--text", default="hello")
    c.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else call(args)


if __name__ == "__main__":
    main()
