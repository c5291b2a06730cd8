#!/usr/bin/env python3
"""An independent HBONE peer (client and server) for the root integration tests.

It checks our agent's HBONE client and server for wire compatibility with Istio's ztunnel
(shared/interop/hbone.md): mutual TLS 1.3 with ALPN h2 and no SNI, SPIFFE URI SAN
identities, then an HTTP/2 CONNECT per tunnel (`:method` and `:authority` only), data only
after a 200, END_STREAM as half-close. It is written only with Python's `ssl`, the sans-IO
`h2` package and `cryptography` (test certificates), sharing no code with our Rust.

  mint-ca   a self-signed test root
  mint      a workload leaf (ECDSA P-256, critical SPIFFE URI SAN) signed by a test root
  client    one TLS connection, one or more CONNECT streams; prints one JSON line
  server    accepts HBONE, relays each stream to TCP; prints one JSON line per stream
  self-test proves all of the above against itself on 127.0.0.1 (hbone/selftest.py)

Client exit codes: 0 all streams got 200 and ended cleanly, 2 TLS handshake refused,
3 server identity mismatch, 4 non-200 status or reset stream, 1 anything else.
Runs on the virtualenv of `cargo xtask setup` (target/pyenv), re-executing itself there.
"""
import argparse, asyncio, hashlib, ipaddress, json, os, re, signal, socket, ssl, sys

try:
    import h2.errors
    from hbone import certs
    from hbone.conn import DEAD, EOF, READ_CHUNK, Conn, StreamGone, Tls, tls_context, tls_reason
except ImportError:
    # The system python lacks h2/cryptography: use the tests' virtualenv when it exists.
    venv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/pyenv/bin/python3")
    if os.path.exists(venv) and not os.environ.get("HBONE_PEER_REEXEC"):
        os.environ["HBONE_PEER_REEXEC"] = "1"
        os.execv(venv, [venv, "-u", os.path.abspath(__file__)] + sys.argv[1:])
    raise SystemExit("hbone_peer.py needs h2 and cryptography: run `cargo xtask setup` "
                     "(it installs them into target/pyenv) and use target/pyenv/bin/python3")


def emit(obj):
    print(json.dumps(obj), flush=True)


def hostport(text):
    """`ip:port` or `[v6]:port` (or `name:port`) -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text or "")
    if not m or int(m.group(2) or m.group(4)) > 65535:
        raise ValueError(f"not host:port: {text!r}")
    return (m.group(1) or m.group(3)), int(m.group(2) or m.group(4))


def fmt(addr):
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


# ---------------------------------------------------------------------------- client


def payload_of(a):
    if a.send_file:
        with open(a.send_file, "rb") as f:
            return f.read()
    # SHAKE-256 of the seed, first N bytes: deterministic, and a prefix of any longer payload.
    return hashlib.shake_256(a.pattern_seed.encode()).digest(a.send_bytes) if a.send_bytes else b""


class Fail(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


async def client_stream(a, conn, payload, headers, r):
    """One CONNECT; fills `r` as it goes, so that a timeout still reports what happened."""
    digest = r["digest"]
    s = conn.open(headers)
    try:
        response = await s.response
        if response is None:
            raise Fail(4, f"reset: {s.reset}") if s.reset else Fail(1, f"connection: {conn.error}")
        r["status"] = int(dict(response).get(":status", 0))
        if r["status"] != 200:  # ztunnel sends the data only after a 200 (hbone.md section 1)
            raise Fail(4, f"status {r['status']}")

        async def upload():
            for off in range(0, len(payload), 1 << 20):
                await conn.send(s, payload[off:off + (1 << 20)])
                r["sent"] += min(1 << 20, len(payload) - off)
            if not a.no_half_close:
                conn.call("end_stream", s.id)  # half-close: the answer must still arrive

        up = asyncio.create_task(upload())
        while (item := await s.inbox.get()) is not EOF:
            if item is DEAD:
                up.cancel()
                raise Fail(4, f"reset: {s.reset}") if s.reset else Fail(1, f"connection: {conn.error}")
            digest.update(item[0])
            r["received"] += len(item[0])
            conn.ack(s, item[1])
        try:
            await up
        except StreamGone:
            raise Fail(4, f"reset: {s.reset}") if s.reset else Fail(1, "stream closed while sending")
        if a.no_half_close:  # the server finished first; now finish ours
            conn.call("end_stream", s.id)
        if a.echo_check and (r["received"], digest.digest()) != (len(payload), hashlib.sha256(payload).digest()):
            raise Fail(1, f"echo mismatch: sent {len(payload)} B, received {r['received']} B")
        r["code"] = 0
    except Fail as f:
        r["code"], r["error"] = f.code, f.reason


def client_context(a):
    """tls_context's client side; with --no-cert, the same without a certificate of ours."""
    if not a.no_cert:
        return tls_context(False, a.cert, a.key, a.ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=a.ca)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def client_connect(a, out):
    """TCP + TLS + identity check + the server's SETTINGS; returns the h2 connection."""
    host, port = hostport(a.connect)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if a.bind_source:
            sock.bind((a.bind_source, 0))
        await loop.sock_connect(sock, (host, port))
    except OSError as e:
        sock.close()
        raise Fail(1, f"connect: {e.strerror or e}") from None
    tls = Tls(sock, client_context(a), server=False)
    try:
        await tls.handshake()
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise Fail(2, tls_reason(e)) from None
    obj = tls.obj
    out.update(tls_version=obj.version(), cipher=obj.cipher()[0], alpn=obj.selected_alpn_protocol())
    ids = certs.spiffe_ids(obj.getpeercert(binary_form=True))
    out["peer_id"] = ids[0] if ids else None
    out["peer_serial"] = certs.serial_hex(obj.getpeercert(binary_form=True))
    if out["alpn"] != "h2" or (a.expect_id and a.expect_id not in ids):
        await tls.close()
        raise Fail(2, "tls: ALPN h2 not negotiated") if out["alpn"] != "h2" else \
            Fail(3, f"identity: server is {out['peer_id']}, expected {a.expect_id}")
    conn = Conn(tls, client=True, validate=not a.malformed)
    conn.task = asyncio.create_task(conn.run())
    seen = asyncio.create_task(conn.settings_seen.wait())
    await asyncio.wait({seen, conn.task}, return_when=asyncio.FIRST_COMPLETED)
    seen.cancel()
    if not conn.settings_seen.is_set():
        # TLS 1.3: the server judges our certificate after our side of the handshake is done,
        # so its refusal comes as an alert (or a close) instead of its first SETTINGS.
        e = conn.error
        raise Fail(2, tls_reason(e) if isinstance(e, ssl.SSLError) else
                   f"tls: closed before the server's SETTINGS, client certificate refused? ({e})")
    return conn


async def client(a):
    payload = payload_of(a)
    headers = [(":method", "GET" if a.malformed == "not-connect" else "CONNECT"), (":authority", a.authority)]
    if a.malformed:
        headers += [(":scheme", "https"), (":path", "/")]
    headers += [tuple(x.strip() for x in h.split(":", 1)) for h in a.header]
    out = {"status": None, "sent": 0, "received": 0, "received_sha256": None, "peer_id": None, "error": None}
    results = [{"status": None, "sent": 0, "received": 0, "error": None, "code": 1, "digest": hashlib.sha256()}
               for _ in range(a.streams)]
    code, conn = 1, None

    async def run():
        nonlocal conn
        conn = await client_connect(a, out)
        await asyncio.gather(*(client_stream(a, conn, payload, headers, r) for r in results))

    try:
        try:
            await asyncio.wait_for(run(), a.timeout)
        except asyncio.TimeoutError:
            for r in results:
                if not r["error"]:
                    r["error"] = f"timeout after {a.timeout} s"
        if conn:  # otherwise the connection itself failed: no stream to report
            for r in results:
                r["received_sha256"] = r.pop("digest").hexdigest()
            bad = [r for r in results if r["code"]]
            first = bad[0] if bad else results[0]
            code = first["code"]
            out.update(status=first["status"], error=first["error"], received_sha256=results[0]["received_sha256"],
                       sent=sum(r["sent"] for r in results), received=sum(r["received"] for r in results))
            if a.streams > 1:
                out["streams"] = [{k: v for k, v in r.items() if k != "code"} for r in results]
        else:
            out["error"] = f"timeout after {a.timeout} s"
    except Fail as f:
        code, out["error"] = f.code, f.reason
    if conn:
        conn.call("close_connection")  # GOAWAY(NO_ERROR), then close_notify and close
        await conn.tls.close()
        conn.task.cancel()
    emit(out)
    return code


# ---------------------------------------------------------------------------- server


def check_request(a, hdr, local_ip):
    """ztunnel's answer to a request (hbone.md section 3): (status or 'reset', target, why)."""
    if hdr.get(":method") != "CONNECT":
        return 400, None, "not CONNECT"
    if {":scheme", ":path", ":protocol"} & hdr.keys():
        return "reset", None, "CONNECT with :scheme/:path/:protocol"
    try:
        host, port = hostport(hdr.get(":authority"))
    except ValueError as e:
        return 400, None, str(e)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        if not a.target_override:  # a hostname needs a service mapping this peer lacks
            return 503, None, "hostname authority"
    if ip and not a.any_authority and ip != ipaddress.ip_address(local_ip):
        return 400, None, f"authority IP {ip} is not the local IP {local_ip}"
    if port in (15001, 15006, 15008):
        return 503, None, f"target port {port}"
    return None, hostport(a.target_override) if a.target_override else (host, port), None


async def server_stream(a, conn, s, info, state):
    hdr = dict(s.headers)
    line = dict(authority=hdr.get(":authority"), **info, status=None, bytes_up=0, bytes_down=0,
                error=None, request=hdr)
    tw = None
    try:
        status, target, why = check_request(a, hdr, info["local"].rsplit(":", 1)[0].strip("[]"))
        if status == "reset":
            conn.call("reset_stream", s.id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            line["error"] = f"RST_STREAM PROTOCOL_ERROR: {why}"
            return
        if status is None:
            try:
                tr, tw = await asyncio.wait_for(asyncio.open_connection(*target), 10)
            except (OSError, asyncio.TimeoutError) as e:
                status, why = 503, f"connect {fmt(target)}: {e}"
        if status:  # errors are HEADERS with END_STREAM
            conn.call("send_headers", s.id, [(":status", str(status))], True)
            line.update(status=status, error=why)
            return
        conn.call("send_headers", s.id, [(":status", "200")])
        line["status"] = 200
        # A reset or a lost connection drops the TCP side at once, even half-closed.
        s.on_die = tw.transport.abort
        if s.dead:
            tw.transport.abort()

        async def up():  # client -> target; END_STREAM becomes FIN (shutdown(SHUT_WR))
            broken = False
            while (item := await s.inbox.get()) is not EOF:
                if item is DEAD:
                    return
                if not broken:
                    try:
                        tw.write(item[0])
                        await tw.drain()
                        line["bytes_up"] += len(item[0])
                    except OSError as e:  # keep acking, or the client stalls on its window
                        broken, line["error"] = True, f"target write: {e}"
                conn.ack(s, item[1])
            if not broken and tw.can_write_eof():
                tw.write_eof()

        async def down():  # target -> client; FIN (or a TCP reset) becomes END_STREAM
            while True:
                try:
                    data = await tr.read(READ_CHUNK)
                except OSError as e:
                    data, line["error"] = b"", f"target read: {e}"
                if not data:
                    return conn.call("end_stream", s.id)
                try:
                    await conn.send(s, data)
                except StreamGone:
                    return
                line["bytes_down"] += len(data)

        await asyncio.gather(up(), down())
    finally:
        if tw:
            tw.close()
        conn.streams.pop(s.id, None)
        if s.dead and not line["error"]:  # reset, or the connection ended mid-stream
            line["error"] = f"reset by client: {s.reset}" if s.reset else f"connection lost: {conn.error}"
        emit(line)
        state["streams"] += 1
        if a.accept_streams and state["streams"] >= a.accept_streams:
            state["done"].set()


async def server_conn(a, ctx, sock, peer, own_td, state):
    local = fmt(sock.getsockname())
    sock.setblocking(False)
    tls = Tls(sock, ctx, server=True)
    try:
        await asyncio.wait_for(tls.handshake(), 10)
    except (ssl.SSLError, OSError, asyncio.TimeoutError) as e:
        sock.close()
        return emit({"tls_error": tls_reason(e), "peer": fmt(peer)})
    ids = certs.spiffe_ids(tls.obj.getpeercert(binary_form=True))
    info = dict(peer_id=ids[0] if ids else None, peer=fmt(peer), local=local,
                sni=getattr(tls.obj, "sni", None), alpn=tls.obj.selected_alpn_protocol())
    # ztunnel refuses these in the handshake; here TLS is done, so the client sees a close.
    why = ("tls: ALPN h2 not negotiated" if info["alpn"] != "h2" else
           "identity: client certificate has no SPIFFE URI SAN" if not ids else
           f"identity: client trust domain is not {own_td}" if own_td and ids[0].split("/")[2] != own_td
           else None)
    if why:
        sock.close()  # no alert can be chosen from Python after the handshake: a bare close
        return emit({"tls_error": why, "peer": info["peer"], "peer_id": info["peer_id"]})
    conn = Conn(tls, client=False)
    tasks = set()
    conn.on_request = lambda s: tasks.add(asyncio.create_task(server_stream(a, conn, s, info, state)))
    await conn.run()
    if not isinstance(conn.error, ConnectionError):  # the client closing is the normal end
        print(f"hbone_peer: connection from {info['peer']}: {conn.error!r}", file=sys.stderr, flush=True)
    if tasks:
        await asyncio.wait(tasks)
    await tls.close()


async def server(a):
    ctx = tls_context(True, a.cert, a.key, a.ca)
    # ztunnel ignores SNI and sends none: record what a client sent, for the tests to check.
    ctx.sni_callback = lambda obj, name, _ctx: setattr(obj, "sni", name)
    own = certs.pem_spiffe_id(a.cert)
    host, port = hostport(a.listen)
    lsock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 backlog=128)
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()
    state = {"streams": 0, "done": asyncio.Event()}
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, state["done"].set)
    conns = set()

    async def accept():
        while True:
            sock, peer = await loop.sock_accept(lsock)
            conns.add(asyncio.create_task(server_conn(a, ctx, sock, peer, own and own.split("/")[2], state)))
            conns.difference_update({t for t in conns if t.done()})

    acceptor = asyncio.create_task(accept())
    emit({"listening": fmt(lsock.getsockname())})
    await state["done"].wait()
    acceptor.cancel()
    lsock.close()
    return 0


# ---------------------------------------------------------------------------- CLI


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mint-ca", help="a self-signed test root")
    m.add_argument("--out-cert", required=True)
    m.add_argument("--out-key", required=True)
    m.add_argument("--name", default="nodemesh-test-ca")
    m = sub.add_parser("mint", help="a workload leaf signed by --ca-cert/--ca-key")
    for flag in ("--ca-cert", "--ca-key", "--id", "--out-cert", "--out-key"):
        m.add_argument(flag, required=True)
    m.add_argument("--days-valid", type=int, default=1)
    m.add_argument("--expired", action="store_true", help="notAfter a day in the past")
    m.add_argument("--no-client-auth", action="store_true", help="EKU serverAuth only")
    m.add_argument("--no-san", action="store_true", help="no URI SAN; the ID goes in the CN")
    c = sub.add_parser("client", help="HBONE client; prints one JSON line")
    c.add_argument("--connect", required=True, help="IP:PORT of the HBONE server (15008)")
    c.add_argument("--authority", required=True, help=":authority, the original destination IP:PORT")
    c.add_argument("--cert")
    c.add_argument("--key")
    c.add_argument("--ca", required=True)
    c.add_argument("--no-cert", action="store_true", help="present no client certificate")
    c.add_argument("--expect-id", help="the server leaf must carry this SPIFFE URI SAN")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--send-bytes", type=int, default=0)
    g.add_argument("--send-file")
    c.add_argument("--pattern-seed", default="nodemesh", help="payload = SHAKE-256(seed)[:N]")
    c.add_argument("--no-half-close", action="store_true",
                   help="send END_STREAM only after the server's END_STREAM")
    c.add_argument("--echo-check", action="store_true", help="received bytes must equal sent")
    c.add_argument("--timeout", type=float, default=60)
    c.add_argument("--bind-source", help="source IP of the TCP connection")
    c.add_argument("--streams", type=int, default=1, help="concurrent CONNECTs on the one connection")
    c.add_argument("--header", action="append", default=[], help="extra request header NAME:VALUE")
    c.add_argument("--malformed", choices=["scheme-path", "not-connect"],
                   help="send a request ztunnel must refuse (CONNECT+:scheme/:path, or GET)")
    s = sub.add_parser("server", help="HBONE server; one JSON line per stream")
    s.add_argument("--listen", required=True, help="IP:PORT (port 0: any; see the 'listening' line)")
    for flag in ("--cert", "--key", "--ca"):
        s.add_argument(flag, required=True)
    s.add_argument("--target-override", help="relay every stream here instead of its authority")
    s.add_argument("--any-authority", action="store_true",
                   help="accept an authority IP other than the local IP (ztunnel answers 400)")
    s.add_argument("--accept-streams", type=int, default=0, help="exit after N streams")
    sub.add_parser("self-test", help="prove the tool against itself on 127.0.0.1")
    a = p.parse_args()

    if a.cmd == "mint-ca":
        certs.mint_ca(a.out_cert, a.out_key, a.name)
    elif a.cmd == "mint":
        certs.mint_leaf(a.ca_cert, a.ca_key, a.id, a.out_cert, a.out_key, days=a.days_valid,
                        expired=a.expired, client_auth=not a.no_client_auth, san=not a.no_san)
    elif a.cmd == "client":
        if not a.no_cert and not (a.cert and a.key):
            p.error("client needs --cert and --key (or --no-cert)")
        sys.exit(asyncio.run(client(a)))
    elif a.cmd == "server":
        sys.exit(asyncio.run(server(a)))
    else:
        from hbone import selftest
        sys.exit(selftest.run(os.path.abspath(__file__)))


if __name__ == "__main__":
    main()
