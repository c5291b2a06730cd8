#!/usr/bin/env python3
"""EOF-delimited transfers, to tell a clean end of stream from a cut one.

server --bind A --port P --out DIR
    Each connection starts with one line, "down" or "up".
    down: sends bytes until the send fails (the stream has no length: the end is the EOF).
    up:   reads until EOF or an error, then writes DIR/up-<peer port>.json with
          {"outcome": "eof" | "reset" | "error: ...", "bytes": n}.
client --host H --port P --mode down|up --progress-file F
    down: reads until EOF or an error; prints {"outcome": ..., "bytes": n}.
    up:   sends until the send fails; prints the same for the send side.
    Writes the byte count to F every so often (so a test knows the transfer is under way).

A peer that dies must show as "reset" (ECONNRESET) on both sides; "eof" means a cut transfer
looked complete."""
import argparse, json, os, socket, sys, threading, time

CHUNK = 64 << 10


def outcome_of(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    return f"error: {e!r}"


def serve_one(conn, peer, out_dir):
    f = conn.makefile("rb")
    mode = f.readline().strip()
    n = 0
    if mode == b"down":
        chunk = bytes(range(256)) * (CHUNK // 256)
        try:
            while True:
                conn.sendall(chunk)
                n += len(chunk)
                time.sleep(0.002)
        except OSError:
            pass
    elif mode == b"up":
        try:
            while True:
                data = f.read1(CHUNK)
                if not data:
                    outcome = "eof"
                    break
                n += len(data)
        except OSError as e:
            outcome = outcome_of(e)
        path = os.path.join(out_dir, f"up-{peer[1]}.json")
        with open(path + ".tmp", "w") as out:
            json.dump({"outcome": outcome, "bytes": n}, out)
        os.rename(path + ".tmp", path)
    conn.close()


def server(a):
    family = socket.AF_INET6 if ":" in a.bind else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((a.bind, a.port))
    s.listen(128)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=serve_one, args=(conn, peer, a.out), daemon=True).start()


def client(a):
    s = socket.create_connection((a.host, a.port))
    s.sendall(f"{a.mode}\n".encode())
    n, last = 0, 0
    try:
        if a.mode == "down":
            while True:
                data = s.recv(CHUNK)
                if not data:
                    outcome = "eof"
                    break
                n += len(data)
                if n - last > (1 << 20):
                    last = n
                    report(a.progress_file, n)
        else:
            chunk = b"u" * CHUNK
            while True:
                s.sendall(chunk)
                n += len(chunk)
                if n - last > (1 << 20):
                    last = n
                    report(a.progress_file, n)
                time.sleep(0.002)
    except OSError as e:
        outcome = outcome_of(e)
    print(json.dumps({"outcome": outcome, "bytes": n}), flush=True)


def report(path, n):
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--bind", default="::")
    p.add_argument("--host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", default=".")
    p.add_argument("--mode", choices=["down", "up"])
    p.add_argument("--progress-file")
    a = p.parse_args()
    server(a) if a.role == "server" else client(a)


if __name__ == "__main__":
    sys.exit(main())
