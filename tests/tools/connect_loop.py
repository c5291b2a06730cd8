#!/usr/bin/env python3
"""Connects to bulk_server.py over and over for --seconds, one small exchange each, and
prints one JSON line: attempts and the wall-clock time and error of every failure."""
import argparse, json, socket, time


def attempt(host, port):
    s = socket.create_connection((host, port), timeout=2)
    try:
        f = s.makefile("rb")
        if not f.readline().startswith(b"NM1"):
            raise RuntimeError("no greeting")
        s.sendall(b"4 4\nping")
        s.shutdown(socket.SHUT_WR)
        f.readline()
        if f.read() != __import__("pattern").pattern(4):
            raise RuntimeError("bad answer")
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    a = p.parse_args()
    end = time.monotonic() + a.seconds
    attempts, failures = 0, []
    while time.monotonic() < end:
        attempts += 1
        try:
            attempt(a.host, a.port)
        except Exception as e:  # every failure counts, whatever its kind
            failures.append([time.time(), repr(e)])
    print(json.dumps({"attempts": attempts, "failures": failures}))


if __name__ == "__main__":
    main()
