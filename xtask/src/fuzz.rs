//! `cargo xtask fuzz`: runs every cargo-fuzz target (fuzz/) for a bounded time each, growing
//! the corpus in fuzz/corpus/<target>. A crashing input is copied into
//! fuzz/regressions/<target>/, which the test suite replays from then on
//! (agent/tests/fuzz_corpus.rs), and the command fails naming it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::sh;

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The targets: the `[[bin]]` names of fuzz/Cargo.toml (each runs a function of
/// `nodemesh_agent::fuzzing::TARGETS` and the control plane's corpus test, whose corpus replay test fails for a target without corpus).
fn targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = std::fs::read_to_string(fuzz_dir.join("Cargo.toml")).context("reading fuzz/Cargo.toml")?;
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
            names.push(name.trim_matches('"').to_owned());
        }
    }
    anyhow::ensure!(!names.is_empty(), "fuzz/Cargo.toml lists no [[bin]] targets");
    Ok(names)
}

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<&str> = if args.targets.is_empty() {
        all.iter().map(String::as_str).collect()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let mut crashes = Vec::new();
    for target in chosen {
        anyhow::ensure!(all.iter().any(|t| t == target), "no fuzz target {target:?} (there are {all:?})");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let started = Instant::now();
        let out = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={}", args.seconds),
                // An input that takes a second is a hang: parsing is meant to take a moment.
                "-timeout=1",
                "-rss_limit_mb=2048",
                "-max_len=1048576",
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log.lines().rev().find_map(|l| l.strip_prefix("stat::number_of_executed_units:"));
        println!(
            "fuzz {target}: {} runs in {:.0} s, corpus {} inputs{}",
            runs.map_or("?", str::trim),
            started.elapsed().as_secs_f64(),
            std::fs::read_dir(&corpus).map_or(0, Iterator::count),
            if out.status.success() { String::new() } else { " — FAILED".into() }
        );
        if !out.status.success() {
            let saved = save_artifacts(&fuzz_dir, target)?;
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            crashes.push(format!("{target}: {}", saved.join(", ")));
        }
    }
    if !crashes.is_empty() {
        bail!("fuzzing found inputs that break a parser (saved for the test suite): {}", crashes.join("; "));
    }
    Ok(())
}

/// Copies what libFuzzer saved (crash-, timeout-, oom-, leak-) into fuzz/regressions/<target>.
fn save_artifacts(fuzz_dir: &Path, target: &str) -> anyhow::Result<Vec<String>> {
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let regressions = fuzz_dir.join("regressions").join(target);
    std::fs::create_dir_all(&regressions)?;
    let mut saved = Vec::new();
    for entry in std::fs::read_dir(&artifacts).into_iter().flatten().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let to: PathBuf = regressions.join(&name);
        std::fs::copy(entry.path(), &to)?;
        saved.push(to.display().to_string());
    }
    Ok(saved)
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    sh("cargo", &["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"])
}
