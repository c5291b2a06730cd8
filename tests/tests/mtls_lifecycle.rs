//! Workload certificates over time, with 30-second lifetimes: rotation under traffic (no
//! connection drops, new handshakes present the new certificate, serials compared through an
//! independent peer), and the control plane (CA and xDS) away: identities keep serving until
//! their certificates expire, new mutual-TLS connections are then refused and counted, and
//! everything recovers when it is back with the same root.

use std::{net::IpAddr, time::Duration};

use nodemesh_testbed::{
    mesh::{ECHO_PORT, MESH_ID, Mesh, serial},
    scenario::BULK_PORT,
    tools, wait_for,
};
use serde_json::Value;

const LIFETIME_S: u64 = 30;

fn state(agent: &nodemesh_testbed::Agent) -> String {
    let status = agent.status().unwrap_or_default();
    let certs = status["certificates"].as_array().cloned().unwrap_or_default();
    certs
        .iter()
        .find(|c| c["identity"] == MESH_ID)
        .and_then(|c| c["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether a small exchange from pod a to pod b (HBONE) gets through intact.
fn a_reaches_b(mesh: &Mesh) -> bool {
    let cmd = tools::bulk_client(IpAddr::from(mesh.b.ipv4), BULK_PORT, 1000, 1000);
    mesh.a.output(cmd).is_ok_and(|o| o.status.success())
}

fn start(name: &str) -> Mesh {
    let mesh = Mesh::start_with(name, LIFETIME_S);
    mesh.b.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("bulk server");
    mesh.b.spawn(tools::echo_server(ECHO_PORT)).expect("echo server");
    for port in [BULK_PORT, ECHO_PORT] {
        tools::wait_listening(&mesh.b.netns_path(), port).expect("listening");
    }
    mesh
}

#[test]
fn rotation_under_traffic_drops_nothing_and_new_handshakes_carry_the_new_certificate() {
    let mesh = start("mtls-rotate");
    let client_cert = mesh.mint("peer-client", MESH_ID, None, &[]);
    let echo = format!("{}:{ECHO_PORT}", mesh.b.ipv4);
    let handshake_serial = || {
        let (code, out) = mesh.client(Some(&client_cert), &echo, &["--send-bytes", "100", "--echo-check"]);
        assert_eq!(code, 0, "{out}");
        out["peer_serial"].as_str().map(str::to_owned).expect("peer_serial")
    };
    let first = serial(&mesh.agent2, MESH_ID).expect("b's certificate");
    assert_eq!(handshake_serial(), first, "a handshake presents b's current certificate");
    let first_a = serial(&mesh.agent1, MESH_ID).expect("a's certificate");

    // Traffic throughout: one connection held open across the rotation, and a new one every
    // few milliseconds.
    let dir = mesh.cluster.work_dir();
    let (held_out, release) = (dir.join("held.out"), dir.join("held.release"));
    let mut hold = tools::hold_client(IpAddr::from(mesh.b.ipv4), BULK_PORT, &release);
    hold.stdout(std::fs::File::create(&held_out).expect("out"));
    let held = mesh.a.spawn(hold).expect("hold");
    let loop_out = dir.join("loop.out");
    let mut looping = tools::connect_loop(IpAddr::from(mesh.b.ipv4), BULK_PORT, LIFETIME_S as f64 + 10.0);
    looping.stdout(std::fs::File::create(&loop_out).expect("out"));
    let looper = mesh.a.spawn(looping).expect("loop");

    wait_for("b's certificate rotated", Duration::from_secs(LIFETIME_S), || {
        serial(&mesh.agent2, MESH_ID).is_some_and(|s| s != first)
    })
    .expect("rotation");
    let second = serial(&mesh.agent2, MESH_ID).expect("b's certificate");
    assert_eq!(handshake_serial(), second, "a new handshake presents the new certificate");
    wait_for("a's certificate rotated", Duration::from_secs(LIFETIME_S), || {
        serial(&mesh.agent1, MESH_ID).is_some_and(|s| s != first_a)
    })
    .expect("rotation of a");

    let status = mesh.a.wait(looper, Duration::from_secs(60)).expect("loop exit");
    let report: Value =
        serde_json::from_str(std::fs::read_to_string(&loop_out).expect("loop").trim()).expect("json");
    assert!(status.success() && report["failures"].as_array().is_some_and(Vec::is_empty), "{report}");
    assert!(report["attempts"].as_u64().unwrap_or(0) > 100, "{report}");
    std::fs::write(&release, b"").expect("release");
    let status = mesh.a.wait(held, Duration::from_secs(20)).expect("held exit");
    assert!(
        status.success(),
        "the held connection broke: {}",
        std::fs::read_to_string(&held_out).unwrap_or_default()
    );
    // Past the first certificates' expiry, and still valid.
    assert_eq!((state(&mesh.agent1), state(&mesh.agent2)), ("valid".into(), "valid".into()));
}

#[test]
fn with_the_control_plane_away_identities_serve_until_expiry_and_recover() {
    let mut mesh = start("mtls-ca-away");
    let root = std::fs::read(mesh.cp.mesh_root()).expect("root");
    let before = serial(&mesh.agent1, MESH_ID).expect("a's certificate");
    mesh.cp.kill();

    // Refreshes fail; the current certificates keep serving, new connections included.
    wait_for("a failing refresh", Duration::from_secs(LIFETIME_S), || {
        state(&mesh.agent1) == "refresh_failing"
    })
    .expect("refresh failing");
    assert!(a_reaches_b(&mesh), "an established identity keeps working with the CA away");
    assert!(
        mesh.agent1
            .metric("nodemesh_certificate_request_failures_total{reason=\"unreachable\"}")
            .unwrap_or(0)
            > 0
    );

    // Expired: nothing presents it; a new connection to b is refused and counted.
    wait_for("a's certificate expired", Duration::from_secs(LIFETIME_S), || state(&mesh.agent1) == "expired")
        .expect("expired");
    assert!(!a_reaches_b(&mesh), "an expired identity must not open mutual TLS");
    let refused = mesh.agent1.metric("nodemesh_certificate_refusals_total{reason=\"certificate_expired\"}");
    assert!(refused.as_ref().is_ok_and(|n| *n >= 1), "{refused:?}");
    let flow = nodemesh_testbed::mesh::flows(&mesh.agent1, "outbound")
        .into_iter()
        .find(|f| f["verdict"] == "failed");
    assert_eq!(flow.expect("a failed flow")["reason"], "certificate_expired");

    // Back, with the same root: new certificates, traffic again.
    mesh.cp.start().expect("restart the control plane");
    assert_eq!(std::fs::read(mesh.cp.mesh_root()).expect("root"), root, "a restart keeps the root");
    wait_for("certificates valid again", Duration::from_secs(60), || {
        state(&mesh.agent1) == "valid" && state(&mesh.agent2) == "valid"
    })
    .expect("recovered");
    assert_ne!(serial(&mesh.agent1, MESH_ID), Some(before));
    assert!(a_reaches_b(&mesh));
}
