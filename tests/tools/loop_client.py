#!/usr/bin/env python3
"""Connects to an address from inside a pod (optionally from a given source address), sends a
line and reads; prints one JSON line saying how the connection ended: "reset", "eof",
"refused" or "data" (the peer answered)."""
import argparse, json, socket


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source")
    a = p.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    if a.source:
        s.bind((a.source, 0))
    try:
        s.connect((a.host, a.port))
        s.sendall(b"hello\n")
        data = s.recv(4096)
        outcome = "data" if data else "eof"
    except ConnectionResetError:
        outcome = "reset"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError as e:
        outcome = f"error: {e!r}"
    print(json.dumps({"outcome": outcome}), flush=True)


if __name__ == "__main__":
    main()
