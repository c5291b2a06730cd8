#!/usr/bin/env python3
"""A reader that stalls: downloads --download bytes from bulk_server.py, but after
--pause-after bytes prints "paused" and stops reading for --pause seconds before finishing.
While it stalls, a bounded pipeline must make the server's sends block. Prints one JSON line;
exits 1 unless every byte arrived intact."""
import argparse, hashlib, json, socket, sys, time

from pattern import pattern


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--download", type=int, required=True)
    p.add_argument("--pause-after", type=int, default=1 << 20)
    p.add_argument("--pause", type=float, default=3)
    a = p.parse_args()
    s = socket.create_connection((a.host, a.port))
    f = s.makefile("rb")
    f.readline()
    s.sendall(f"0 {a.download}\n".encode())
    s.shutdown(socket.SHUT_WR)
    f.readline()
    got, n, paused = hashlib.sha256(), 0, False
    while True:
        if not paused and n >= a.pause_after:
            print("paused", flush=True)
            time.sleep(a.pause)
            paused = True
        chunk = f.read1(1 << 16)
        if not chunk:
            break
        got.update(chunk)
        n += len(chunk)
    ok = n == a.download and got.hexdigest() == hashlib.sha256(pattern(a.download)).hexdigest()
    print(json.dumps({"ok": ok, "received": n}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
