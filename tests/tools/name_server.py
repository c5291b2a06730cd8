#!/usr/bin/env python3
"""A service endpoint that says who it is: on each connection it waits --delay-ms (a slow
endpoint), sends its --name and a newline, then echoes every byte until the client's FIN.
Prints "listening" once it accepts."""
import argparse, socket, threading, time


def serve(conn, name, delay):
    try:
        if delay:
            time.sleep(delay)
        conn.sendall(name.encode() + b"\n")
        while data := conn.recv(1 << 16):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=0)
    a = p.parse_args()
    s = socket.create_server(("::", a.port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, a.name, a.delay_ms / 1000), daemon=True).start()


if __name__ == "__main__":
    main()
