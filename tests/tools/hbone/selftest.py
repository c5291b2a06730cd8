"""`hbone_peer.py self-test`: proves the peer against itself on 127.0.0.1, through its
command line (mint, server, client as separate processes), before it is trusted to judge
our agent. Prints one line per case and 'N passed, M failed'; exits 0 only if all passed."""

import json, os, shutil, socket, subprocess, sys, tempfile, threading

SERVER_ID, CLIENT_ID = "spiffe://cluster.local/ns/srv/sa/server", "spiffe://cluster.local/ns/cli/sa/client"


def _target(handle):
    """A TCP target on 127.0.0.1, one thread per connection; returns its port."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def _echo(conn):
    # Echoes until the client's FIN, then FINs back: half-close must cross the tunnel.
    while data := conn.recv(1 << 16):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    conn.close()


def _greeter(conn):
    # Speaks first and FINs before reading: the client must get it without half-closing.
    conn.sendall(b"g" * 4096)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(1 << 16):
        pass
    conn.close()


def _free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def run(tool):
    d = tempfile.mkdtemp(prefix="hbone-selftest-")
    py = [sys.executable, "-u", tool]
    f = lambda name: os.path.join(d, name)  # noqa: E731

    def mint(name, *extra, ca="ca"):
        subprocess.run(py + ["mint", "--ca-cert", f(ca + ".pem"), "--ca-key", f(ca + ".key"),
                             "--out-cert", f(name + ".pem"), "--out-key", f(name + ".key"), *extra], check=True)

    for ca in ("ca", "other-ca"):
        subprocess.run(py + ["mint-ca", "--out-cert", f(ca + ".pem"), "--out-key", f(ca + ".key")], check=True)
    mint("server", "--id", SERVER_ID)
    mint("client", "--id", CLIENT_ID)
    mint("foreign", "--id", CLIENT_ID, ca="other-ca")
    mint("expired", "--id", CLIENT_ID, "--expired")
    mint("serveronly", "--id", CLIENT_ID, "--no-client-auth")
    mint("nosan", "--id", CLIENT_ID, "--no-san")

    echo, greeter = _target(_echo), _target(_greeter)
    server = subprocess.Popen(py + ["server", "--listen", "127.0.0.1:0", "--cert", f("server.pem"),
                                    "--key", f("server.key"), "--ca", f("ca.pem")],
                              stdout=subprocess.PIPE, text=True)
    listening = json.loads(server.stdout.readline())["listening"]
    server_lines = []
    reader = threading.Thread(target=lambda: server_lines.extend(json.loads(l) for l in server.stdout))
    reader.start()

    def client(*extra, cert="client", ca="ca", authority=f"127.0.0.1:{echo}"):
        args = py + ["client", "--connect", listening, "--authority", authority, "--cert", f(cert + ".pem"),
                     "--key", f(cert + ".key"), "--ca", f(ca + ".pem"), "--expect-id", SERVER_ID, *extra]
        return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)

    def finish(proc):
        out, _ = proc.communicate(timeout=180)
        return proc.returncode, json.loads(out)

    echo_ok = lambda n: lambda o: o["received"] == n and o["peer_id"] == SERVER_ID  # noqa: E731
    cases = [  # (name, client process, expected exit code, extra check of its JSON line)
        ("1 B echo", client("--send-bytes", "1", "--echo-check"), 0, echo_ok(1)),
        ("1 MiB echo", client("--send-bytes", str(1 << 20), "--echo-check"), 0, echo_ok(1 << 20)),
        ("8 streams x 1 MiB on one connection", client("--streams", "8", "--send-bytes", str(1 << 20), "--echo-check"),
         0, lambda o: [s["status"] for s in o["streams"]] == [200] * 8 and o["received"] == 8 << 20),
        ("target speaks first and closes, no half-close", client("--no-half-close", authority=f"127.0.0.1:{greeter}"),
         0, lambda o: o["received"] == 4096 and o["sent"] == 0),
        ("client cert from another CA", client("--send-bytes", "1", cert="foreign"), 2, None),
        ("expired client cert", client("--send-bytes", "1", cert="expired"), 2, None),
        ("client cert without clientAuth EKU", client("--send-bytes", "1", cert="serveronly"), 2, None),
        ("client cert with the ID in the CN, no SAN", client("--send-bytes", "1", cert="nosan"), 2, None),
        ("server cert from a CA the client does not trust", client(ca="other-ca"), 2,
         lambda o: "certificate verify failed" in o["error"]),
        ("wrong --expect-id", client("--expect-id", "spiffe://cluster.local/ns/srv/sa/other"), 3,
         lambda o: o["peer_id"] == SERVER_ID),
        ("CONNECT with :scheme and :path", client("--malformed", "scheme-path"), 4,
         lambda o: o["error"] == "reset: PROTOCOL_ERROR"),
        ("GET instead of CONNECT", client("--malformed", "not-connect"), 4, lambda o: o["status"] == 400),
        ("authority IP is not the server's IP", client(authority=f"127.0.0.2:{echo}"), 4, lambda o: o["status"] == 400),
        ("target refuses the connection", client(authority=f"127.0.0.1:{_free_port()}"), 4,
         lambda o: o["status"] == 503),
    ]
    # Started together above, so these also run concurrently on the server; 64 MiB alone after.
    results = [(name, *finish(proc), want, check) for name, proc, want, check in cases]
    results.append(("64 MiB echo", *finish(client("--send-bytes", str(64 << 20), "--echo-check")), 0,
                    echo_ok(64 << 20)))
    server.terminate()
    results.append(("server stops on SIGTERM", server.wait(timeout=10), {}, 0, None))
    reader.join(timeout=10)

    streams = [l for l in server_lines if "authority" in l]
    refused = [l for l in server_lines if "tls_error" in l]
    ok_streams = [l for l in streams if l["status"] == 200]
    server_checks = [
        ("server: 12 relayed streams, all from the client's ID, no SNI, no :scheme/:path",
         len(ok_streams) == 12 and all(l["peer_id"] == CLIENT_ID and l["sni"] is None
                                       and set(l["request"]) == {":method", ":authority"} for l in ok_streams)),
        ("server: 64 MiB up and down", any(l["bytes_up"] == l["bytes_down"] == 64 << 20 for l in ok_streams)),
        ("server: refused another CA, expired, no clientAuth, no SPIFFE SAN",
         all(any(why in l["tls_error"] for l in refused) for why in (
             "unable to get local issuer certificate", "certificate has expired",
             "certificate purpose", "no SPIFFE URI SAN"))),
    ]
    failed = 0
    for name, code, out, want, check in results:
        good = code == want and (check is None or check(out))
        failed += not good
        print(f"{'ok  ' if good else 'FAIL'} {name}: exit {code} (want {want}), error {out.get('error')!r}")
    for name, good in server_checks:
        failed += not good
        print(f"{'ok  ' if good else 'FAIL'} {name}")
    if failed:
        print("server lines:", *map(json.dumps, server_lines), sep="\n  ")
        print(f"certificates kept in {d}")
    else:
        shutil.rmtree(d)
    total = len(results) + len(server_checks)
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0
