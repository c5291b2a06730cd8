#!/usr/bin/env python3
"""A stand-in autoscaler: takes the proxy's scale-up POSTs (JSON) on --port and appends
each, with its path and arrival time, as one JSON line to --log. What to scale is the
test's business: it watches the log."""
import argparse, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            entry = {"path": self.path, "at": time.time(),
                     "content_type": self.headers.get("Content-Type"), "body": json.loads(body)}
            with open(a.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
