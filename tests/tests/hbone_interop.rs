//! HBONE against an independent peer: `tests/tools/hbone_peer.py` (Python `ssl` + `h2`, its
//! certificates minted with `cryptography` from the control plane's mesh root), sharing no
//! code with our Rust.
//!
//! - Our server: the peer's client, on a third node that runs no agent (so nothing intercepts
//!   it), reaches pod b's HBONE port on node2 with a mesh certificate and gets byte-exact
//!   echoes; certificates our server must refuse are refused in the handshake and counted by
//!   reason; CONNECTs to another address or to a proxy port get 400 and 503.
//! - Our client: pod a's connection to pod c on that third node rides HBONE from agent1 to
//!   the peer's server, which sees a's identity; a server with another identity is refused.
//! - Limits: mutual-TLS connections held open without streams count against the pod's
//!   connection cap, so a peer cannot hold handshakes without bound.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use nodemesh_testbed::{
    enter_netns,
    mesh::{ECHO_PORT, HBONE_PORT, MESH_ID, Mesh, failures, flows, json_lines},
    scenario::BULK_PORT,
    tools, wait_for,
};

#[test]
fn an_independent_client_is_admitted_with_a_mesh_certificate_and_refused_otherwise() {
    let mesh = Mesh::start("hbone-server");
    mesh.b.spawn(tools::echo_server(ECHO_PORT)).expect("echo server");
    tools::wait_listening(&mesh.b.netns_path(), ECHO_PORT).expect("echo listening");
    let echo = format!("{}:{ECHO_PORT}", mesh.b.ipv4);
    let good = mesh.mint("client", MESH_ID, None, &[]);

    // Admitted: byte-exact echoes, b's certificate checked by the peer (--expect-id).
    let sizes = [1u64, 1 << 20, 64 << 20];
    for n in sizes {
        let (code, out) = mesh.client(Some(&good), &echo, &["--send-bytes", &n.to_string(), "--echo-check"]);
        assert_eq!(code, 0, "{n} B: {out}");
        assert_eq!(
            (out["status"].clone(), out["received"].clone()),
            (Value::from(200), Value::from(n)),
            "{out}"
        );
        assert_eq!(
            (out["peer_id"].as_str(), out["tls_version"].as_str()),
            (Some(MESH_ID), Some("TLSv1.3")),
            "{out}"
        );
    }
    // agent2 recorded each stream as an mTLS inbound flow from the peer's identity, exact bytes.
    let mut inbound = Vec::new();
    wait_for("three closed inbound flows", Duration::from_secs(10), || {
        inbound = flows(&mesh.agent2, "inbound");
        inbound.len() == 3 && inbound.iter().all(|f| f["active"] == false)
    })
    .unwrap_or_else(|e| panic!("{e}: {inbound:#?}"));
    let mut bytes: Vec<(u64, u64)> = inbound
        .iter()
        .map(|f| {
            assert_eq!(
                (&f["mtls"], &f["peer_identity"], &f["verdict"]),
                (&Value::Bool(true), &Value::from(MESH_ID), &Value::from("allowed")),
                "{f}"
            );
            (f["bytes_sent"].as_u64().expect("sent"), f["bytes_received"].as_u64().expect("received"))
        })
        .collect();
    bytes.sort_unstable();
    assert_eq!(bytes, sizes.map(|n| (n, n)).to_vec());
    let handshakes =
        || mesh.agent2.metric("nodemesh_hbone_handshakes_total{side=\"server\"}").expect("metric");
    assert_eq!(handshakes(), 3);

    // Refused in the handshake: each a client exit 2, one failure of its reason on agent2,
    // no completed handshake and no flow.
    let other_ca = (mesh.file("other-ca.pem"), mesh.file("other-ca.key"));
    let mut cmd = tools::hbone_peer(&["mint-ca", "--name", "not-the-mesh"]).expect("hbone_peer");
    assert!(
        cmd.arg("--out-cert")
            .arg(&other_ca.0)
            .arg("--out-key")
            .arg(&other_ca.1)
            .status()
            .expect("mint-ca")
            .success()
    );
    let cases = [
        (
            "another CA",
            Some(mesh.mint("foreign", MESH_ID, Some((&other_ca.0, &other_ca.1)), &[])),
            "unknown_issuer",
        ),
        ("no client certificate", None, "no_certificate"),
        ("expired", Some(mesh.mint("expired", MESH_ID, None, &["--expired"])), "expired"),
        (
            "ID in the CN, no URI SAN",
            Some(mesh.mint("nosan", MESH_ID, None, &["--no-san"])),
            "no_spiffe_identity",
        ),
        (
            "another trust domain",
            Some(mesh.mint("foreign-td", "spiffe://other.example/ns/mesh/sa/default", None, &[])),
            "foreign_trust_domain",
        ),
    ];
    for (what, cert, reason) in &cases {
        let before = failures(&mesh.agent2, "server", reason);
        let (code, out) = mesh.client(cert.as_ref(), &echo, &["--send-bytes", "1"]);
        assert_eq!(code, 2, "{what}: {out}");
        assert_eq!(out["status"], Value::Null, "{what}: no stream may be answered: {out}");
        assert_eq!(failures(&mesh.agent2, "server", reason), before + 1, "{what}: reason {reason}");
    }
    assert_eq!(handshakes(), 3, "no refused client completed a handshake");
    assert_eq!(flows(&mesh.agent2, "inbound").len(), 3, "no refused client got a flow");

    // Admitted, but a CONNECT to an address that is not b's gets 400; to a proxy port, 503.
    for (authority, status) in
        [(format!("{}:{ECHO_PORT}", mesh.a.ipv4), 400), (format!("{}:15006", mesh.b.ipv4), 503)]
    {
        let (code, out) = mesh.client(Some(&good), &authority, &["--send-bytes", "1"]);
        assert_eq!((code, out["status"].clone()), (4, Value::from(status)), "{authority}: {out}");
    }
}

#[test]
fn our_client_checks_the_servers_identity() {
    let mesh = Mesh::start("hbone-client");
    mesh.c.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("bulk server");
    tools::wait_listening(&mesh.c.netns_path(), BULK_PORT).expect("bulk listening");
    let (c_ip, a_ip) = (mesh.c.ipv4.to_string(), mesh.a.ipv4.to_string());

    // c's own identity: agent1 carries a's connections to the peer's server in HBONE.
    let log = mesh.file("server-c.jsonl");
    let server = mesh.start_server("server-c", MESH_ID, &log);
    let mut results = Vec::new();
    for (up, down) in [(1, 1), (1 << 20, 1 << 20)] {
        let out = mesh.bulk_to_c(up, down);
        let r = tools::json_result("bulk_client", &out).expect("bulk client through HBONE");
        assert_eq!(r["ok"], true, "{up}/{down}: {r}");
        results.push(r);
    }
    let mut streams = Vec::new();
    wait_for("the server's two stream lines", Duration::from_secs(10), || {
        streams = json_lines(&log).into_iter().filter(|l| l.get("authority").is_some()).collect();
        streams.len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}: {streams:#?}"));
    let mut relayed = Vec::new();
    for s in &streams {
        // a's identity from its certificate, the original destination as :authority, and the
        // TCP connection leaving from a's own address (as ztunnel's do).
        assert_eq!(s["peer_id"], MESH_ID, "{s}");
        assert_eq!(s["authority"], format!("{c_ip}:{BULK_PORT}"), "{s}");
        assert_eq!(
            (s["status"].clone(), s["error"].clone(), s["sni"].clone()),
            (Value::from(200), Value::Null, Value::Null),
            "{s}"
        );
        assert!(s["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{a_ip}:"))), "{s}");
        relayed.push((s["bytes_up"].as_u64().expect("up"), s["bytes_down"].as_u64().expect("down")));
    }
    let mut counted: Vec<(u64, u64)> = results
        .iter()
        .map(|r| (r["bytes_sent"].as_u64().expect("s"), r["bytes_received"].as_u64().expect("r")))
        .collect();
    relayed.sort_unstable();
    counted.sort_unstable();
    assert_eq!(relayed, counted, "the server relayed exactly what the client counted");
    for flow in flows(&mesh.agent1, "outbound") {
        assert_eq!(
            (&flow["mtls"], &flow["peer_identity"], &flow["verdict"]),
            (&Value::Bool(true), &Value::from(MESH_ID), &Value::from("allowed")),
            "{flow}"
        );
    }

    // Replace the server. agent1 keeps its pooled connection until the TCP connection ends, so
    // wait until agent1's socket to c:15008 (in a's namespace) is gone before going on.
    mesh.c.kill(server);
    wait_for("agent1 to drop its HBONE connection to c", Duration::from_secs(10), || {
        let mut ss = enter_netns(Command::new("ss"), &mesh.a.netns_path()).expect("ss");
        ss.args(["-Htn", "state", "established", "state", "close-wait", "dst"]);
        ss.arg(format!("{c_ip}:{HBONE_PORT}"));
        ss.stderr(Stdio::inherit()).output().is_ok_and(|o| o.status.success() && o.stdout.is_empty())
    })
    .expect("pooled connection closed");

    // An impostor: a valid mesh certificate for another identity. agent1 refuses it in the
    // handshake, resets a's connection and says why.
    let log = mesh.file("server-impostor.jsonl");
    mesh.start_server("impostor", "spiffe://cluster.local/ns/mesh/sa/impostor", &log);
    let before = failures(&mesh.agent1, "client", "wrong_identity");
    let out = mesh.bulk_to_c(1, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Connection reset"), "{out:?}");
    let failed: Vec<Value> =
        flows(&mesh.agent1, "outbound").into_iter().filter(|f| f["verdict"] != "allowed").collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(
        (&failed[0]["verdict"], &failed[0]["reason"]),
        (&Value::from("failed"), &Value::from("tls_handshake_failed")),
        "{:#}",
        failed[0]
    );
    // The impostor saw the handshake fail (the agent's alert) from a's address, and no stream.
    let mut lines = Vec::new();
    wait_for("the impostor's tls_error line", Duration::from_secs(10), || {
        lines = json_lines(&log);
        lines.iter().any(|l| l.get("tls_error").is_some())
    })
    .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert!(lines.iter().all(|l| l.get("authority").is_none()), "{lines:?}");
    let refused = lines.iter().find(|l| l.get("tls_error").is_some()).expect("tls_error");
    assert!(refused["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{a_ip}:"))), "{refused}");
    // Counted by why: the server is someone else.
    let samples = mesh.agent1.http_get("http://127.0.0.1:15020/metrics").expect("metrics");
    let samples: Vec<&str> =
        samples.lines().filter(|l| l.starts_with("nodemesh_hbone_handshake_failures")).collect();
    assert_eq!(failures(&mesh.agent1, "client", "wrong_identity"), before + 1, "{samples:#?}");
    let _ = &mesh.cp;
}

#[test]
fn hbone_connections_count_against_the_pods_cap() {
    let mesh = Mesh::start_configured("hbone-cap", 86_400, "max_connections_per_pod: 3\n");
    mesh.b.spawn(tools::echo_server(ECHO_PORT)).expect("echo server");
    tools::wait_listening(&mesh.b.netns_path(), ECHO_PORT).expect("echo listening");
    let echo = format!("{}:{ECHO_PORT}", mesh.b.ipv4);
    let (cert, key) = mesh.mint("client", MESH_ID, None, &[]);
    let handshakes = || mesh.agent2.metric("nodemesh_hbone_handshakes_total{side=\"server\"}").unwrap_or(0);
    // Three mutual-TLS connections held open from pod c, carrying no stream.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-quiet", "-ign_eof", "-tls1_3", "-alpn", "h2", "-connect"])
            .arg(format!("{}:{HBONE_PORT}", mesh.b.ipv4))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-CAfile")
            .arg(mesh.cp.mesh_root())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        held.push(mesh.c.spawn(cmd).expect("openssl s_client"));
    }
    wait_for("three held handshakes", Duration::from_secs(10), || handshakes() == 3).expect("held");
    // The pod is at its cap (3): the next one is refused before any handshake, and counted.
    let (code, out) = mesh.client(Some(&(cert.clone(), key.clone())), &echo, &["--send-bytes", "1"]);
    assert_ne!(code, 0, "admitted past the cap: {out}");
    assert_eq!(handshakes(), 3);
    let refused = mesh.agent2.metric("nodemesh_proxy_refused_connections_total{reason=\"pod_limit\"}");
    assert!(refused.as_ref().is_ok_and(|n| *n >= 1), "{refused:?}");
    // Released, they make room again.
    for pid in held {
        mesh.c.kill(pid);
    }
    wait_for("room again", Duration::from_secs(10), || {
        mesh.client(Some(&(cert.clone(), key.clone())), &echo, &["--send-bytes", "1", "--echo-check"]).0 == 0
    })
    .expect("admitted after the release");
}
