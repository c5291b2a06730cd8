#!/usr/bin/env python3
"""A hostile neighbour: listens on 127.0.0.1:<port> (the agent's outbound port) inside a pod
and records every connection it gets in --out, one line each. Prints "listening" once bound."""
import argparse, socket, threading


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", a.port))
    s.listen(64)
    open(a.out, "w").close()
    print("listening", flush=True)
    lock = threading.Lock()
    while True:
        conn, peer = s.accept()
        with lock, open(a.out, "a") as f:
            f.write(f"{peer[0]}:{peer[1]}\n")
        conn.close()


if __name__ == "__main__":
    main()
