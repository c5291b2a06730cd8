//! `nm-xds-load`: the control-plane benchmark's load.
//!
//! - `generate` writes a mesh of N workloads and M services, spread over namespaces and
//!   nodes, as Kubernetes YAML (one file of pods and one of services per namespace).
//! - `run` connects many simulated agents (delta ADS streams, one process) to a control plane,
//!   times the full sync, then makes single changes and times their arrival at every agent.
//!   It prints one JSON object.

mod agents;
mod generate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the mesh into a control plane's input directory.
    Generate(generate::Args),
    /// Drives a control plane with simulated agents and prints the measurements as JSON.
    Run(agents::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate(args) => generate::run(&args),
        Cmd::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(agents::run(args))?;
            println!("{result}");
            Ok(())
        }
    }
}

/// Atomically replaces `dir/name`, as a controller writing its state would.
pub fn write_atomic(dir: &std::path::Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}
