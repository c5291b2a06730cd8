#!/usr/bin/env python3
"""Connects again and again until a connection is (or is not) intercepted, telling them apart
by the local address: an intercepted connect lands on the proxy's loopback listener. Prints
one JSON line with the seconds it took (since --since, a Unix time, when given).

With --since-file it is started before the change it times: it connects from the start (and
touches <since-file>.ready after its first connection, so the test knows it is running), and
times from the Unix time the test writes into <since-file> just before making the change, so
its own start-up is never counted."""
import argparse, json, socket, sys, time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--want", choices=["intercepted", "direct"], required=True)
    p.add_argument("--timeout", type=float, default=5)
    p.add_argument("--since", type=float)
    p.add_argument("--since-file")
    a = p.parse_args()
    start = a.since or time.time()
    if a.since_file:
        start = armed(a.host, a.port, a.since_file, a.timeout)
    tries = 0
    # Attempts that took long (a lost SYN costs a second): when and how long, for diagnosis.
    slow = []
    while time.time() - start < a.timeout:
        tries += 1
        began = time.time()
        s = socket.create_connection((a.host, a.port), timeout=2)
        local = s.getsockname()[0]
        s.close()
        took = time.time() - began
        if took > 0.2:
            slow.append({"at": round(began - start, 3), "took": round(took, 3), "local": local})
        intercepted = local in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
        if intercepted == (a.want == "intercepted"):
            print(json.dumps({"ok": True, "seconds": time.time() - start, "tries": tries, "local": local, "slow": slow}))
            return
        time.sleep(0.005)
    print(json.dumps({"ok": False, "seconds": time.time() - start, "tries": tries, "slow": slow}))
    sys.exit(1)


def armed(host, port, since_file, timeout):
    """Connects until the change's time appears in since_file; returns that time."""
    deadline = time.time() + timeout
    ready = False
    while time.time() < deadline:
        socket.create_connection((host, port), timeout=2).close()
        if not ready:
            open(since_file + ".ready", "w").close()
            ready = True
        try:
            with open(since_file) as f:
                return float(f.read())
        except (FileNotFoundError, ValueError):
            time.sleep(0.005)
    print(json.dumps({"ok": False, "error": "no change was made"}))
    sys.exit(1)


if __name__ == "__main__":
    main()
