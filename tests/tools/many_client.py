#!/usr/bin/env python3
"""Opens --count connections to bulk_server.py at once (all held open together), then runs a
small exchange on each. Prints one JSON line; exits 1 unless every connection succeeded."""
import argparse, asyncio, hashlib, json, resource, sys

from pattern import pattern


async def one(host, port, all_open, opened, total):
    r, w = await asyncio.open_connection(host, port)
    greeting = await r.readline()
    opened[0] += 1
    if opened[0] == total:
        all_open.set()
    await all_open.wait()
    data = pattern(100)
    w.write(b"100 100\n" + data)
    await w.drain()
    w.write_eof()
    digest = (await r.readline()).decode().strip()
    body = await r.read()
    w.close()
    return greeting.startswith(b"NM1") and digest == hashlib.sha256(data).hexdigest() and body == pattern(100)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    all_open, opened = asyncio.Event(), [0]
    results = await asyncio.wait_for(
        asyncio.gather(*(one(a.host, a.port, all_open, opened, a.count) for _ in range(a.count)), return_exceptions=True),
        timeout=120)
    ok = sum(1 for r in results if r is True)
    errors = sorted({repr(r) for r in results if r is not True})[:5]
    print(json.dumps({"ok": ok, "count": a.count, "errors": errors}))
    sys.exit(0 if ok == a.count else 1)


asyncio.run(main())
