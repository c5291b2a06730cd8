//! The mutual-TLS cross-node measurements: `xnode_mesh` (HBONE between the agents) against
//! `xnode_direct` in the same run, the goals the identity issue set, handshakes per second,
//! and the agents' CPU per gigabyte moved.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::topology::Topology;

/// `--only` name of the scenario (the phase runs when it is wanted).
pub const SCENARIO: &str = "xnode_mesh";

/// Full TLS 1.3 handshakes per second against node 2's HBONE server (the server pod's port
/// 15008), by `openssl s_time -new` from node 1's own namespace (outside every pod, so no
/// agent intercepts it) with a client certificate minted from the mesh root.
pub fn handshakes_per_second(topo: &Topology, seconds: f64) -> anyhow::Result<f64> {
    let cp = topo.control_plane.as_ref().context("identities are not on")?;
    let root = cp.mesh_root();
    let dir = root.parent().context("root dir")?.join("bench-client");
    std::fs::create_dir_all(&dir)?;
    let (key, csr, cert, ext) =
        (dir.join("key.pem"), dir.join("c.csr"), dir.join("cert.pem"), dir.join("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=critical,URI:spiffe://cluster.local/ns/mesh/sa/default\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    let root_key = root.with_file_name("root-key.pem");
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"], &[&key])?;
    openssl(&["req", "-new", "-subj", "/O=nodemesh-bench", "-key"], &[&key, Path::new("-out"), &csr])?;
    openssl(
        &["x509", "-req", "-days", "1", "-set_serial", "7", "-in"],
        &[
            &csr,
            Path::new("-CA"),
            &root,
            Path::new("-CAkey"),
            &root_key,
            Path::new("-extfile"),
            &ext,
            Path::new("-out"),
            &cert,
        ],
    )?;
    let target = format!("{}:15008", topo.remote_server());
    let mut cmd = topo.node1.command("openssl")?;
    cmd.args(["s_time", "-connect", &target, "-new", "-time", &format!("{}", seconds.ceil() as u64)])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(&root);
    let out = cmd.output().context("openssl s_time")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "<n> connections in <s> real seconds, ..."
    let rate = text.lines().find_map(|l| {
        let (n, rest) = l.split_once(" connections in ")?;
        let secs = rest.split_whitespace().next()?.trim_end_matches('s').parse::<f64>().ok()?;
        let n = n.trim().parse::<f64>().ok()?;
        (rest.contains("real seconds") && secs > 0.0).then_some(n / secs)
    });
    rate.with_context(|| format!("openssl s_time printed {text:?} {}", String::from_utf8_lossy(&out.stderr)))
}

fn openssl(args: &[&str], paths: &[&Path]) -> anyhow::Result<()> {
    let out = Command::new("openssl").args(args).args(paths).output().context("openssl")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `median_handshakes`: the rounds' median.
pub fn summary(median_handshakes: f64) -> Value {
    json!({ "handshakes_per_s": (median_handshakes * 10.0).round() / 10.0 })
}

/// The goals, ztunnel's figures on the same columns, and the cost of encryption.
pub fn markdown(results: &Value) -> String {
    let get = |s: &str, m: &str| results["scenarios"][s][m].as_f64().unwrap_or(f64::NAN);
    let r = |m: &str| get(SCENARIO, m) / get("xnode_direct", m);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut md = String::from(
        "## Mutual TLS between nodes\n\n`xnode_mesh` is HBONE: HTTP/2 CONNECT over mutual TLS 1.3 (rustls with ring, \
         AES-GCM) between the two agents, pooled. Goals against `xnode_direct` in the same run; ztunnel \
         measured on this machine on the same columns for comparison.\n\n\
         | goal | measured | ztunnel | |\n|---|---:|---:|---|\n",
    );
    let rows = [
        ("throughput ≥ 0.6×", r("tput_gbps"), 0.34, r("tput_gbps") >= 0.6),
        ("p50 at concurrency 1 ≤ 2.2×", r("rr1_p50_us"), 4.46, r("rr1_p50_us") <= 2.2),
        ("rr64 ≥ 0.35×", r("rr64_rps"), 0.17, r("rr64_rps") >= 0.35),
        ("connection rate ≥ 0.45×", r("crr_cps"), 0.23, r("crr_cps") >= 0.45),
    ];
    for (goal, measured, ztunnel, ok) in rows {
        let _ = writeln!(md, "| {goal} | {measured:.2}× | {ztunnel:.2}× | {} |", check(ok));
    }
    let _ = writeln!(
        md,
        "\nFull TLS 1.3 handshakes per second against one agent's HBONE server (`openssl s_time -new`, \
         P-256 client certificate): **{:.0}/s**. Agents' CPU per GB moved by the throughput test: \
         {:.2} s with mutual TLS, {:.2} s plaintext (`xnode_mesh_plaintext`); p50 at concurrency 1 \
         with vCPUs awake: {:.2}× ({:.2}× plaintext). Where the goals are not met, the reasons and \
         what would meet them are in [performance.md](performance.md#mutual-tls-between-nodes).\n",
        results["mtls"]["handshakes_per_s"].as_f64().unwrap_or(0.0),
        get(SCENARIO, "tput_cpu_s_per_gb"),
        get("xnode_mesh_plaintext", "tput_cpu_s_per_gb"),
        r("rr1_spin_p50_us"),
        get("xnode_mesh_plaintext", "rr1_spin_p50_us") / get("xnode_direct", "rr1_spin_p50_us"),
    );
    md
}
