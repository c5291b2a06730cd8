//! The splice stress run: many long bulk streams through the kernel splice at once, both
//! directions, every vCPU busy, every byte checked (`nm-loadgen verify`), and the agent's
//! audit asked afterwards. It passes only with zero wrong bytes and zero audit mismatches; the
//! evidence for the splice's default is in docs/acceleration.md.

use std::path::Path;

use anyhow::{Context as _, bail};
use nodemesh_testbed::{Agent, tools::CpuHogs};
use serde_json::{Value, json};

use super::topology::{MESH_PORT, Topology};

/// How much to push.
pub struct Scale {
    pub conns: usize,
    /// Per connection and direction.
    pub bytes: u64,
}

impl Scale {
    /// 8 connections × 2 GiB × 2 directions: 32 GiB checked.
    pub const FULL: Scale = Scale { conns: 8, bytes: 2 << 30 };
    pub const QUICK: Scale = Scale { conns: 4, bytes: 32 << 20 };
}

/// The keys of `results.json`'s `splice_stress`.
pub const METRICS: [&str; 7] = [
    "bytes_checked",
    "seconds",
    "gbps",
    "trimmed_overlap",
    "trimmed_hand_off",
    "splice_audit_mismatches",
    "copy_audit_mismatches",
];

/// Splice counters whose growth the run reports.
const COUNTERS: [&str; 5] =
    ["trimmed_overlap", "trimmed_hand_off", "broken_gap", "broken_trim_failed", "broken_no_seq"];

pub fn run(topo: &Topology, bin_dir: &Path, scale: &Scale) -> anyhow::Result<Value> {
    topo.prepare(&topo.mesh_scenario())?;
    let agent = &topo.agent1;
    let before = counts(agent)?;
    let mut cmd = std::process::Command::new(bin_dir.join("nm-loadgen"));
    cmd.args([
        "verify",
        "--target",
        &format!("{}:{MESH_PORT}", topo.mesh_scenario().server),
        "--conns",
        &scale.conns.to_string(),
        "--bytes",
        &scale.bytes.to_string(),
    ]);
    let out = {
        let _hogs = CpuHogs::start()?;
        topo.client.output(cmd)?
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the splice stress run found wrong bytes: {}\n--- agent log ---\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            agent.log_tail(30)
        );
    }
    let verify: Value =
        serde_json::from_str(stdout.trim()).with_context(|| format!("nm-loadgen printed {stdout:?}"))?;
    let after = counts(agent)?;
    let delta = |i: usize| after[i].saturating_sub(before[i]);
    let result = json!({
        "conns": scale.conns,
        "bytes_checked": verify["bytes_checked"],
        "seconds": verify["seconds"],
        "gbps": verify["gbps"],
        "trimmed_overlap": delta(0),
        "trimmed_hand_off": delta(1),
        "broken": delta(2) + delta(3) + delta(4),
        "splice_audit_mismatches": delta(5),
        "copy_audit_mismatches": delta(6),
    });
    if delta(5) + delta(6) > 0 {
        bail!("the splice stress run ended with audit mismatches: {result}\n{}", agent.log_tail(30));
    }
    Ok(result)
}

/// The splice counters, then both audits' mismatch totals.
fn counts(agent: &Agent) -> anyhow::Result<Vec<u64>> {
    let mut v: Vec<u64> =
        COUNTERS.iter().map(|reason| agent.counter("splice", reason)).collect::<anyhow::Result<_>>()?;
    v.push(agent.splice_audit_mismatches()?);
    v.push(agent.copy_audit_mismatches()?);
    Ok(v)
}

pub fn markdown(r: &Value) -> String {
    format!(
        "## Splice stress\n\n{} GiB checked byte by byte in {} same-node streams through the splice at \
         once, both directions, every vCPU busy with a competing busy loop: {:.1} s ({:.2} Gbps). Wrong \
         bytes: 0. Audit mismatches: {} spliced, {} copied. Overlapping retransmissions trimmed by the \
         verdict: {}; hand-off prefixes trimmed: {}; streams the verdict gave up on (reset): {}.\n\n",
        r["bytes_checked"].as_f64().unwrap_or(0.0) / f64::from(1u32 << 30),
        r["conns"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["gbps"].as_f64().unwrap_or(0.0),
        r["splice_audit_mismatches"],
        r["copy_audit_mismatches"],
        r["trimmed_overlap"],
        r["trimmed_hand_off"],
        r["broken"],
    )
}
