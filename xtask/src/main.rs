//! `cargo xtask <command>`: everything a fresh machine needs, in two commands (README).
//! - `demo`: set up, build, run a fake node with pods, send traffic through the mesh, print
//!   `nodemesh status`, tear down.
//! - `test`: set up, build, run every test (unit, then root tests on the real kernel).
//! - `bench`: measure the mesh against the direct path and a sidecar (docs/bench.md).
//! - `fuzz`: run every fuzz target for a bounded time (docs/security.md).
//! - `setup`: only install and check prerequisites.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod test;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install and check prerequisites (llvm-22-dev, rust-src, bpf-linker, bpftool, bpffs).
    Setup,
    /// Setup, build, then run every test.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Setup, build, then show traffic through the mesh on a fake node.
    Demo {
        /// Run the agent with the kernel splice off.
        #[arg(long)]
        no_splice: bool,
    },
    /// Setup, build release binaries, measure every scenario (docs/bench.md).
    Bench(bench::BenchArgs),
    /// Run every fuzz target (fuzz/) for a bounded time; crashes are saved for the tests.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test { filter } => {
            setup::run()?;
            test::run(filter.as_deref())
        }
        Cmd::Bench(args) => {
            setup::run()?;
            bench::run(&args)
        }
        Cmd::Fuzz(args) => {
            setup::run()?;
            fuzz::run(&args)
        }
        Cmd::Demo { no_splice } => {
            setup::run()?;
            build()?;
            demo::run(!no_splice)
        }
    }
}

/// Builds the agent binary the tests and the demo run.
/// Every binary the tests and the demo start: the agent (which is also the control plane) and
/// the load generator that shares no code with the proxy.
pub fn build() -> anyhow::Result<()> {
    sh("cargo", &["build", "--quiet", "-p", "nodemesh", "-p", "nm-loadgen"])
}

/// The workspace's root directory.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
