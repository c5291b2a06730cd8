#!/usr/bin/env python3
"""Blocking client for bulk_server.py: plain blocking `socket` calls, so a spurious EAGAIN
from the kernel (BlockingIOError) fails the run. Prints one JSON line."""
import argparse, hashlib, json, socket, sys

from pattern import pattern


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upload", type=int, default=0)
    p.add_argument("--download", type=int, default=0)
    a = p.parse_args()

    s = socket.create_connection((a.host, a.port), timeout=None)
    s.setblocking(True)
    local, peer = list(s.getsockname()[:2]), list(s.getpeername()[:2])
    f = s.makefile("rb")
    greeting_line = f.readline()
    greeting = greeting_line.decode().strip()
    data = pattern(a.upload)
    header = f"{a.upload} {a.download}\n".encode()
    s.sendall(header)
    for i in range(0, len(data), 1 << 20):
        s.sendall(data[i:i + (1 << 20)])
    s.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back

    digest_line = f.readline()
    digest = digest_line.decode().strip()
    got = hashlib.sha256()
    n = 0
    while True:
        chunk = f.read1(1 << 16)
        if not chunk:
            break
        got.update(chunk)
        n += len(chunk)
    ok_up = digest == hashlib.sha256(data).hexdigest()
    ok_down = n == a.download and got.hexdigest() == hashlib.sha256(pattern(a.download)).hexdigest()
    print(json.dumps({
        "ok": ok_up and ok_down, "upload_ok": ok_up, "download_ok": ok_down, "received": n,
        "greeting": greeting, "local": local, "peer": peer,
        # Every byte this client put on and took off its socket.
        "bytes_sent": len(header) + len(data),
        "bytes_received": len(greeting_line) + len(digest_line) + n,
    }))
    sys.exit(0 if ok_up and ok_down else 1)


if __name__ == "__main__":
    main()
