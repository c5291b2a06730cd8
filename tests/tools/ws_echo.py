"""A real WebSocket peer (the `websockets` library) for the proxy's upgrade path.

  serve --port P [--name N]         echoes every message back, text as text, binary as
                                    binary; on connect it first sends "hello from N", so a
                                    client can tell which endpoint answered.
  call --url ws://H:P/path --messages N --size S
                                    N text messages of S bytes, then one binary of 100 KiB
                                    (bytes that are not valid UTF-8, so nothing may treat
                                    them as text); each echo is compared with what was sent.
                                    Prints {"ok", "sent", "echoed", "mismatched", "server",
                                    "bytes"}.
"""

import argparse
import asyncio
import hashlib
import json

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve as ws_serve

BINARY_SIZE = 100 * 1024


async def serve(args):
    async def echo(ws):
        await ws.send(f"hello from {args.name}")
        async for message in ws:
            await ws.send(message)

    # No size cap below the test's 100 KiB message (the default is 1 MiB; be explicit).
    async with ws_serve(echo, "0.0.0.0", args.port, max_size=4 << 20):
        print(json.dumps({"listening": args.port}), flush=True)
        await asyncio.get_running_loop().create_future()


def payload(i, size):
    """A distinct, checkable text message: its index, then a pattern to `size` bytes."""
    head = f"{i}:"
    body = hashlib.sha256(head.encode()).hexdigest() * (size // 64 + 1)
    return (head + body)[:size]


def binary():
    """100 KiB of every byte value, over and over: not UTF-8, and position-dependent."""
    return bytes((i * 7 + i // 256) % 256 for i in range(BINARY_SIZE))


async def call(args):
    sent = echoed = mismatched = total = 0
    # Compression off: the frames then cross the proxy exactly as written.
    async with connect(args.url, max_size=4 << 20, compression=None, open_timeout=20) as ws:
        greeting = await asyncio.wait_for(ws.recv(), 20)
        messages = [payload(i, args.size) for i in range(args.messages)] + [binary()]
        for message in messages:
            await ws.send(message)
            sent += 1
            got = await asyncio.wait_for(ws.recv(), 20)
            echoed += 1
            total += len(got)
            # The type must survive too: text stays str, binary stays bytes.
            if type(got) is not type(message) or got != message:
                mismatched += 1
    ok = sent == echoed == args.messages + 1 and mismatched == 0
    server = greeting.removeprefix("hello from ") if isinstance(greeting, str) else None
    result = {"ok": ok, "sent": sent, "echoed": echoed, "mismatched": mismatched, "server": server}
    print(json.dumps(result | {"bytes": total}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", default="ws")
    c = sub.add_parser("call")
    c.add_argument("--url", required=True)
    c.add_argument("--messages", type=int, default=10)
    c.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(serve(args) if args.command == "serve" else call(args))


if __name__ == "__main__":
    main()
