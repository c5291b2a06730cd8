#!/usr/bin/env python3
"""Blocking TCP server for byte-exact transfer tests (one thread per connection).

Protocol (server speaks first, so server-first protocols are covered):
  server -> "NM1 peer=<addr> local=<addr>\n"
  client -> "<upload> <download>\n" + <upload> bytes, then half-close (FIN)
  server reads exactly <upload> bytes and then EOF, answers "<sha256 of upload>\n" followed by
  <download> bytes of pattern(<download>), then closes.
"""
import argparse, hashlib, socket, socketserver, sys, threading

from pattern import pattern


def addr(a):
    host, port = a[0], a[1]
    if host.startswith("::ffff:") and "." in host:  # dual-stack socket, IPv4 peer
        host = host[len("::ffff:"):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.sendall(f"NM1 peer={addr(s.getpeername())} local={addr(s.getsockname())}\n".encode())
        f = s.makefile("rb")
        header = f.readline().split()
        if len(header) != 2:
            return
        up, down = int(header[0]), int(header[1])
        h, left = hashlib.sha256(), up
        while left:
            chunk = f.read1(min(left, 1 << 16))
            if not chunk:
                raise RuntimeError(f"EOF with {left} bytes missing")
            h.update(chunk)
            left -= len(chunk)
        if f.read1(1) != b"":
            raise RuntimeError("data after the announced upload; expected the client's FIN")
        s.sendall(h.hexdigest().encode() + b"\n")
        data = pattern(down)
        for i in range(0, len(data), 1 << 20):
            s.sendall(data[i:i + (1 << 20)])
        s.shutdown(socket.SHUT_WR)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


class Server6(Server):
    address_family = socket.AF_INET6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    cls = Server6 if ":" in a.bind else Server
    with cls((a.bind, a.port), Handler) as srv:
        srv.serve_forever()


if __name__ == "__main__":
    main()
