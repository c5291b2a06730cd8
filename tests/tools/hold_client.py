#!/usr/bin/env python3
"""A long-lived exchange with bulk_server.py: connects, sends half of the upload, then waits
until --release-file exists before sending the rest, half-closing and reading the answer.
Prints "connected <local addr>" once connected and one JSON line at the end; exits 1 unless
every byte arrived intact both ways."""
import argparse, hashlib, json, os, socket, sys, time

from pattern import pattern


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--release-file", required=True)
    p.add_argument("--size", type=int, default=1 << 20)
    a = p.parse_args()
    s = socket.create_connection((a.host, a.port))
    local = s.getsockname()[0]
    f = s.makefile("rb")
    f.readline()
    print(f"connected {local}", flush=True)
    data = pattern(a.size)
    s.sendall(f"{a.size} {a.size}\n".encode() + data[: a.size // 2])
    while not os.path.exists(a.release_file):
        time.sleep(0.01)
    s.sendall(data[a.size // 2:])
    s.shutdown(socket.SHUT_WR)
    digest = f.readline().decode().strip()
    body = f.read()
    ok = digest == hashlib.sha256(data).hexdigest() and body == pattern(a.size)
    print(json.dumps({"ok": ok, "local": local}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
