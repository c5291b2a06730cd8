//! `nodemesh`: the node agent and its command line, in one binary.

mod admin;
mod agent;
mod cli;
mod config;
mod controlplane;
mod datapath;
mod enroll;
mod pods;
mod proxy;
mod reconcile;
mod sidecar;
mod spec;
mod status;
mod xds;

use clap::Parser as _;

// jemalloc from the start: under glibc malloc a long-running proxy's RSS creeps up with
// fragmentation (ztunnel's experience).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Agent(args) => agent::main(args),
        cli::Command::Status { json, admin } => cli::status(json, admin),
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
