//! `nodemesh`: the node agent, the reference control plane and the command line, in one
//! binary. The agent is the `nodemesh-agent` library (so the fuzz targets reach its parsers),
//! the control plane the `nodemesh-controlplane` one; this crate only parses the command line
//! and renders what a running agent reports.

mod client;
mod commands;
mod controlplane;
mod flows_view;
#[cfg(test)]
mod golden;
mod services_view;
mod status_view;
mod table;

use clap::Parser as _;
use commands as cli;
use nodemesh_agent::{agent, sidecar};

// jemalloc from the start: under glibc malloc a long-running proxy's RSS creeps up with
// fragmentation (ztunnel's experience).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation. Freed pages go back to the kernel within
/// a second (default: ten), from jemalloc's own background thread rather than whenever some
/// allocation happens to pass by: a node agent's memory should follow its state, not the
/// peak of the last burst of updates.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Agent(args) => agent::main(args.config.as_deref(), args.overrides),
        cli::Command::Status { json, admin } => cli::status(json, admin),
        cli::Command::Flows(args) => cli::flows(&args),
        cli::Command::Config { json, admin } => cli::config(json, admin),
        cli::Command::Sidecar(args) => sidecar::main(args),
        cli::Command::Controlplane(args) => controlplane::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
