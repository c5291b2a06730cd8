#!/usr/bin/env python3
"""A client of a service address served by name_server.py endpoints. Each connection reads
the endpoint's name, sends --bytes of the test pattern, reads them back and checks them
byte for byte. Prints one JSON line.

  count: --count connections, --concurrency at a time: {"attempts", "by_endpoint",
         "failures": [[unix time, error], ...]}
  loop:  connections one after another for --seconds: the same fields.
  hold:  opens --hold connections and keeps them open, then one more: {"held",
         "extra": "reset" | "closed" | "<endpoint>" | "timeout", "extra_ms"}
  once:  one connection that sends its bytes at once, before anything answers (a held
         connection's bytes wait in the socket): {"endpoint", "ok", "ms"} or {"error", "ms"}
"""
import argparse, json, socket, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, __import__("os").path.dirname(__file__))
from pattern import pattern  # noqa: E402


def read_line(f):
    line = f.readline()
    if not line.endswith(b"\n"):
        raise ConnectionError("closed before the endpoint's name")
    return line[:-1].decode()


def exchange(host, port, size, timeout, send_first=False):
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        f = s.makefile("rb")
        data = pattern(size)
        if send_first:
            s.sendall(data)
            name = read_line(f)
        else:
            name = read_line(f)
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        back = f.read()
        if back != data:
            raise RuntimeError(f"{len(back)} bytes back, not the {size} sent")
        return name
    finally:
        s.close()


def run_many(a, connections):
    by, failures, lock = {}, [], threading.Lock()

    def one(_):
        try:
            name = exchange(a.host, a.port, a.bytes, a.timeout)
            with lock:
                by[name] = by.get(name, 0) + 1
        except Exception as e:  # every failure counts, whatever its kind
            with lock:
                failures.append([time.time(), repr(e)])

    with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
        list(pool.map(one, connections))
    return by, failures


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["count", "loop", "hold", "once"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--hold", type=int, default=10)
    p.add_argument("--bytes", type=int, default=16)
    p.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    if a.mode == "count":
        by, failures = run_many(a, range(a.count))
        print(json.dumps({"attempts": a.count, "by_endpoint": by, "failures": failures}))
    elif a.mode == "loop":
        by, failures, attempts = {}, [], 0
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            attempts += 1
            try:
                name = exchange(a.host, a.port, a.bytes, a.timeout)
                by[name] = by.get(name, 0) + 1
            except Exception as e:
                failures.append([time.time(), repr(e)])
        print(json.dumps({"attempts": attempts, "by_endpoint": by, "failures": failures}))
    elif a.mode == "hold":
        held = []
        for _ in range(a.hold):
            s = socket.create_connection((a.host, a.port), timeout=a.timeout)
            read_line(s.makefile("rb"))
            held.append(s)
        start = time.monotonic()
        extra = None
        try:
            # The reset can beat the connect's own return on loopback.
            extra = socket.create_connection((a.host, a.port), timeout=a.timeout)
            what = read_line(extra.makefile("rb"))
        except ConnectionResetError:
            what = "reset"
        except ConnectionError:
            what = "closed"
        except socket.timeout:
            what = "timeout"
        ms = (time.monotonic() - start) * 1000
        print(json.dumps({"held": len(held), "extra": what, "extra_ms": ms}))
        for s in held + ([extra] if extra else []):
            s.close()
    else:
        start = time.monotonic()
        try:
            name = exchange(a.host, a.port, a.bytes, a.timeout, send_first=True)
            print(json.dumps({"endpoint": name, "ok": True, "ms": (time.monotonic() - start) * 1000}))
        except Exception as e:
            print(json.dumps({"error": repr(e), "ms": (time.monotonic() - start) * 1000}))


if __name__ == "__main__":
    main()
