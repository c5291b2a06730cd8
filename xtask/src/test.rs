//! `cargo xtask test`: unit tests, then the root tests that build fake nodes and pods on the
//! real kernel. Every test that needs root fails (never skips) without it.

use std::process::Command;

use crate::{build, sh};

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
    build()?;
    // Namespaces, cgroups and pins an interrupted earlier run may have left. (The eBPF crate
    // is not a default member: it only builds for the BPF target, through agent/build.rs.)
    nodemesh_testbed::sweep_stale();
    let nextest =
        Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut args: Vec<&str> = if nextest {
        vec!["nextest", "run", "--no-fail-fast", "--test-threads", "2"]
    } else {
        vec!["test", "--no-fail-fast", "--", "--test-threads=2"]
    };
    if let Some(f) = filter {
        if nextest {
            args.push(f);
        } else {
            args.insert(1, f);
        }
    }
    sh("cargo", &args)?;
    if filter.is_none() {
        // The benchmark harness, one short round: proves it still runs and writes valid JSON.
        crate::bench::run(&crate::bench::BenchArgs {
            quick: true,
            rounds: 1,
            seconds: 0.3,
            rr_size: 1024,
            rr_conns: 64,
            crr_size: 64,
            crr_conns: 4,
            only: Vec::new(),
            show_status: false,
            agent_config: String::new(),
        })?;
    }
    Ok(())
}
