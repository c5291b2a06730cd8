#!/usr/bin/env python3
"""Opens --count TCP connections to --host:--port and sends nothing (idle, or a slow header
flood); after --seconds reports how many the server closed (EOF or reset) and how many are
still open. With --greeting each connection first waits for the server's first line (a proxied
bulk_server connection: a reset shows here). One JSON line."""
import argparse, json, select, socket, time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--greeting", action="store_true")
    a = p.parse_args()
    socks, failed, greeted, reset_early = [], 0, 0, 0
    for _ in range(a.count):
        try:
            s = socket.create_connection((a.host, a.port), timeout=5)
        except OSError:
            failed += 1
            continue
        if a.greeting:
            try:
                s.settimeout(5)
                line = s.makefile("rb").readline()
                if line:
                    greeted += 1
                else:
                    reset_early += 1
                    s.close()
                    continue
            except OSError:
                reset_early += 1
                s.close()
                continue
        socks.append(s)
    time.sleep(a.seconds)
    closed = 0
    for s in socks:
        r, _, _ = select.select([s], [], [], 0)
        if r:
            try:
                if s.recv(1) == b"":
                    closed += 1
            except OSError:
                closed += 1
    print(json.dumps({"failed": failed, "greeted": greeted, "reset_early": reset_early,
                      "closed_by_server": closed, "still_open": len(socks) - closed}), flush=True)


if __name__ == "__main__":
    main()
